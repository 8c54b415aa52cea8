"""Root taking the data dir's lock, or the rebuild lock, on a file system that
refuses chown (NFS with root_squash, some FUSE mounts): the lock still works."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from daemon.datadir import DataDirHeld, DataDirLock
from storage.errors import StorageUnavailable
from storage.sqlite_backend import SqliteBackend


def _refusing(code: int) -> object:
    def chown(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return chown


@pytest.mark.parametrize("code", [errno.EPERM, errno.EINVAL, errno.EROFS])
def test_root_takes_its_locks_where_the_file_system_refuses_chown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "fchown", _refusing(code))
    monkeypatch.setattr(os, "chown", _refusing(code))

    lock = DataDirLock.take(str(tmp_path / "var"))
    try:
        with pytest.raises(DataDirHeld):  # a real lock: a second taker is refused
            DataDirLock.take(str(tmp_path / "var"))
    finally:
        lock.release()
    with SqliteBackend(tmp_path / "var" / "leadsync.db").exclusive():
        pass


def test_other_chown_failures_still_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "fchown", _refusing(errno.EIO))
    with pytest.raises(OSError, match="Input/output"):
        DataDirLock.take(str(tmp_path / "var"))


def test_a_rebuild_lock_chown_failing_otherwise_is_the_lock_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "fchown", _refusing(errno.EIO))
    with pytest.raises(StorageUnavailable), SqliteBackend(tmp_path / "leadsync.db").exclusive():
        pass
