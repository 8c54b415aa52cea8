"""Storage speaks its own errors: what fails in SQLite reaches the components as
storage/errors.py's kinds, which decide whether an item is held or the round retried."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from actors.exit_codes import EXIT_TEMPFAIL
from actors.poison import blames_storage, describe
from storage import sqlite_backend
from storage.errors import (
    StorageBusy,
    StorageCorrupt,
    StorageError,
    StorageFull,
    StorageRefused,
    StorageUnavailable,
)
from storage.held import HeldItem
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_errors import translated
from tests.support.daemon_process import free_port


@pytest.fixture
async def backend(tmp_path: Path) -> SqliteBackend:
    backend = SqliteBackend(tmp_path / "leadsync.db", busy_timeout=0.05)
    storage = await backend.open()  # creates and migrates both files
    await storage.close()
    return backend


def test_a_write_while_another_process_holds_the_lock_is_busy(backend: SqliteBackend) -> None:
    with closing(sqlite3.connect(backend.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with closing(backend.session()) as session, pytest.raises(StorageBusy) as raised:
            session.begin()
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert blames_storage(raised.value)  # the round is retried; no item is held for it


def test_a_full_database_is_full_and_nothing_of_the_transaction_stays(
    backend: SqliteBackend,
) -> None:
    with closing(backend.session()) as session:
        pages = session._db.execute("PRAGMA page_count").fetchone()[0]
        session._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        session.begin()
        with pytest.raises(StorageFull):
            session.held.hold(
                [HeldItem("identity", "event", str(n), "e", 1, b"x" * 4096) for n in range(50)],
                0.0,
            )
        session.rollback()
        assert session.held.counts() == {}
    assert blames_storage(StorageFull("database or disk is full"))


async def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "leadsync.db"
    path.write_bytes(b"not a database, whatever its name says" * 200)
    with pytest.raises(StorageCorrupt, match="not a database"):
        await SqliteBackend(path).open()


def test_a_constraint_broken_is_refused_and_the_item_may_be_held(backend: SqliteBackend) -> None:
    with closing(backend.session()) as session:
        session.begin()
        with pytest.raises(StorageRefused) as raised:
            session.held.hold([HeldItem("identity", "event", "1", None, 1)], 0.0)  # type: ignore[arg-type]
        session.rollback()
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert not blames_storage(raised.value)  # the item's data: it may be set aside


def test_reads_that_yield_are_translated_too(backend: SqliteBackend) -> None:
    reader = backend.log_reader()
    reader.close()
    batches = reader.batches(0, 10)
    with pytest.raises(StorageRefused, match="closed"):
        next(batches)


def test_every_public_method_of_a_translated_class_speaks_storage() -> None:
    @translated
    class Store:
        def plain(self) -> None:
            raise sqlite3.OperationalError("database is locked")

        def rows(self) -> Iterator[int]:
            yield 1
            raise sqlite3.DatabaseError("database disk image is malformed")

        async def later(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        @staticmethod
        def opened() -> None:
            raise sqlite3.OperationalError("unable to open database file")

        def _private(self) -> None:
            raise sqlite3.OperationalError("left alone: only the edge translates")

    store = Store()
    with pytest.raises(StorageUnavailable):
        store.plain()
    rows = store.rows()
    assert next(rows) == 1
    with pytest.raises(StorageCorrupt):
        next(rows)
    with pytest.raises(StorageUnavailable):
        Store.opened()
    with pytest.raises(sqlite3.OperationalError):
        store._private()
    coroutine = store.later()
    with pytest.raises(StorageUnavailable):
        coroutine.send(None)
    assert issubclass(StorageUnavailable, StorageError)
    assert issubclass(StorageRefused, StorageError)


def test_what_runs_later_speaks_storage_too(backend: SqliteBackend) -> None:
    """Rows read as they are iterated and a read transaction opened on entry: the
    merger consumes home_events lazily, and poison handling must still blame the
    storage, not the event, when the disk fails then."""
    with closing(backend.session()) as session:
        session._db.set_progress_handler(lambda: 1, 1)  # every statement interrupted
        rows = session.graph.home_events([1])
        with pytest.raises(StorageUnavailable) as raised:
            list(rows)
        assert blames_storage(raised.value)
        with pytest.raises(StorageUnavailable), session.scores.snapshot():
            pass
        session._db.set_progress_handler(None, 1)


def test_a_scratch_that_cannot_be_made_speaks_storage(
    backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite_backend, "scratch", full)
    with pytest.raises(StorageUnavailable, match="full"), backend.scratch():
        pass
    assert not list(backend.path.parent.glob("*.rebuild-*"))  # nothing left behind


def test_a_held_items_error_says_where_the_driver_raised_it(backend: SqliteBackend) -> None:
    with closing(backend.session()) as session:
        session.begin()
        try:
            session.held.hold([HeldItem("identity", "event", "1", None, 1)], 0.0)  # type: ignore[arg-type]
        except StorageRefused as exc:
            said = describe(exc)
        session.rollback()
    assert said.startswith("StorageRefused: NOT NULL constraint failed")
    assert "(in hold, storage/sqlite_held.py:" in said


def test_a_rebuild_while_another_holds_the_database_says_so_and_exits_75(
    tmp_path: Path,
) -> None:
    """Another rebuild or a forget is no failure of the storage: `leadsync identity
    rebuild` with no daemon answering says who holds it and exits 75 (try again), not
    73 with "rebuild failed"."""
    config = tmp_path / "daemon.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path}"\n')
    backend = SqliteBackend(tmp_path / "leadsync.db")
    asyncio.run(opened_and_closed(backend))
    nobody = f"http://127.0.0.1:{free_port()}"
    command = ["identity", "rebuild", "--config", str(config), "--admin", nobody]
    with backend.exclusive():  # as a forget on the files would
        done = subprocess.run(
            [sys.executable, "-m", "daemon", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (done.returncode, done.stdout) == (EXIT_TEMPFAIL, "")
    assert "is already running" in done.stderr
    assert "rebuild failed" not in done.stderr


async def opened_and_closed(backend: SqliteBackend) -> None:
    await (await backend.open()).close()
