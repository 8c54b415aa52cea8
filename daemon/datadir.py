"""One daemon per data dir: an exclusive lock on a file in it, held for the daemon's life.

Two daemons on one data dir (another `leadsync run` with other ports) would both
append to the file destination's parts and queue every profile twice. The lock is an
flock on `leadsync.lock`, which the kernel releases when the process ends however it
ends (kill -9 too), so a stale lock file never blocks a start; the holder's pid is
written in it for the message, with what it is (the daemon, or the command that
works on the files). The descriptor is not inherited by child processes
(the identity merger's worker): only the daemon itself holds the lock.

The commands that work on the files with no daemon running (restore, and forget,
unforget and identity rebuild when no daemon answers) hold the same lock for their
whole run, so a daemon systemd starts meanwhile refuses (77) rather than taking in
events the command then overwrites or misses.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from actors.exit_codes import EXIT_DATA_DIR_HELD
from storage.ownership import owned_like_directory

LOCK_NAME = "leadsync.lock"
DAEMON = "run"
"""The lock file's role of a daemon (`leadsync run`); a command writes its own name."""


class DataDirHeld(Exception):
    """Another process holds the data dir's lock: this daemon does not start."""

    exit_code = EXIT_DATA_DIR_HELD

    def __init__(self, message: str, holder: str, role: str) -> None:
        super().__init__(message)
        self.holder = holder
        """The holder's pid as its lock file says it ("?" if it says nothing)."""
        self.role = role
        """What holds it: DAEMON, or the command's name (a file from before roles were
        written says none: a daemon, the only holder then)."""


class DataDirLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, data_dir: str, role: str = DAEMON) -> DataDirLock:
        """Create the data dir if need be and lock it for `role`; DataDirHeld if another
        process holds it, OSError if the directory or the file cannot be made."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            owned_like_directory(fd, directory)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.pread(fd, 128, 0).decode("utf-8", "replace").split(maxsplit=1)
            os.close(fd)
            holder = said[0] if said else "?"
            held_for = said[1].strip() if len(said) > 1 else DAEMON
            what = "" if held_for == DAEMON else f", `leadsync {held_for}`"
            raise DataDirHeld(
                f"another leadsync (pid {holder}{what}) holds {data_dir}", holder, held_for
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        """Closing the descriptor drops the lock; the file stays (removing it would let
        a daemon that opened it meanwhile lock a file no longer in the directory)."""
        os.close(self._fd)
