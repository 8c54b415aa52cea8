"""The SQLite backend: leadsync.db and its event log's file, leadsync-events.db.

Everything here is a place (a path and the settings to open it with), so it pickles:
the merger's worker process gets the daemon's and opens its own connections.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from storage.backend import Storage
from storage.errors import RebuildRunning, StorageUnavailable
from storage.log import DEDUP_WINDOW, StoredEvent
from storage.ownership import owned_like_directory
from storage.rebuild import GraphSwap
from storage.session import Session
from storage.sqlite_connect import (
    CACHE_KIB,
    Transactions,
    connect,
    log_path,
    open_connection,
    open_log,
)
from storage.sqlite_errors import translated
from storage.sqlite_graph import SqliteGraphStore, read_batches, read_events
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_lifecycle import SqliteLifecycleStore
from storage.sqlite_outbox import SqliteOutboxStore
from storage.sqlite_rebuild import SqliteGraphSwap, scratch
from storage.sqlite_scores import SqliteScoreStore


@translated
class SqliteLogReader:
    """The events table on a connection: the session's (attached as `log`), or a
    read-only one of the reader's own (`owned`, closed with it)."""

    def __init__(self, db: sqlite3.Connection, owned: bool = False) -> None:
        self._db = db
        self._owned = owned

    def head(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def read(self, after: int, limit: int) -> list[StoredEvent]:
        return read_events(self._db, after, limit)

    def batches(
        self, after: int, size: int, until: float = math.inf
    ) -> Iterator[list[StoredEvent]]:
        return (yield from read_batches(self._db, after, size, until))

    def close(self) -> None:
        if self._owned:
            self._db.close()


@translated
class SqliteSession(Transactions):
    """The stores of storage/sqlite_*.py on one connection to the main file, with the
    event log attached read-only (storage/sqlite_connect.py's `connect`)."""

    @cached_property
    def graph(self) -> SqliteGraphStore:
        return SqliteGraphStore(self._db)

    @cached_property
    def held(self) -> SqliteHeldStore:
        return SqliteHeldStore(self._db)

    @cached_property
    def scores(self) -> SqliteScoreStore:
        return SqliteScoreStore(self._db)

    @cached_property
    def outbox(self) -> SqliteOutboxStore:
        return SqliteOutboxStore(self._db)

    @cached_property
    def log(self) -> SqliteLogReader:
        return SqliteLogReader(self._db)

    def meta(self, key: str) -> str | None:
        return self.graph.meta(key)

    def graph_swap(self, rebuilt: Session) -> AbstractContextManager[GraphSwap]:
        # The protocol's type, not SqliteGraphSwap: so mypy checks that it is one (Session
        # names itself, and mypy takes its nested members on trust).
        assert isinstance(rebuilt, SqliteScratch), "a session from SqliteBackend.scratch"
        rebuilt.close()
        return SqliteGraphSwap(self._db, rebuilt.path)

    def close(self) -> None:
        self._db.close()


@translated
class SqliteScratch(SqliteSession):
    """A session on a scratch file (storage/sqlite_rebuild.py), which it names."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        super().__init__(db)
        self.path = path


@translated
class SqliteCheckpointer:
    """A PASSIVE checkpoint, which takes no lock, and only when that copied everything
    a restart of the WAL, waiting for nobody (a RESTART holds the write lock while it
    waits). Restarted, not truncated: writing over the file's blocks is faster than
    allocating them again."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def checkpoint(self) -> None:
        busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy and frames == copied:
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def close(self) -> None:
        self._db.close()


@translated
@dataclass(frozen=True)
class SqliteBackend:
    path: Path
    """The main file; the event log's is beside it (sqlite_connect.log_path)."""
    busy_timeout: float = 5.0
    journal_size_limit: int = 64 << 20
    dedup_window: float = DEDUP_WINDOW
    retain_events: float | None = None

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    async def open(self) -> Storage:
        # Here, not at the top: the async store brings numpy and aiosqlite, which the
        # commands that only open sessions (dlq, held, model) need not load.
        from storage.sqlite import SqliteStorage

        return await SqliteStorage.open(
            self.path,
            busy_timeout=self.busy_timeout,
            journal_size_limit=self.journal_size_limit,
            dedup_window=self.dedup_window,
            retain_events=self.retain_events,
        )

    def session(self, *, cache_kib: int | None = None, durable: bool = False) -> SqliteSession:
        db = connect(self.path, self.busy_timeout, cache_kib or CACHE_KIB)
        try:
            if durable:
                db.execute("PRAGMA synchronous = FULL")
        except BaseException:
            db.close()
            raise
        return SqliteSession(db)

    def log_reader(self) -> SqliteLogReader:
        return SqliteLogReader(open_log(self.path, self.busy_timeout), owned=True)

    def checkpointer(self) -> SqliteCheckpointer:
        return SqliteCheckpointer(open_connection(self.path, 0))

    def lifecycle(self) -> SqliteLifecycleStore:
        return SqliteLifecycleStore.open(self.path, self.busy_timeout)

    @contextmanager
    def scratch(self) -> Iterator[SqliteScratch]:
        handle, name = tempfile.mkstemp(prefix=self.path.name + ".rebuild-", dir=self.path.parent)
        os.close(handle)
        path = Path(name)
        try:
            session = SqliteScratch(scratch(path, log_path(self.path)), path)
            try:
                yield session
            finally:
                session.close()
        finally:
            path.unlink(missing_ok=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """A flock on a file beside the database. Made by root (`sudo leadsync
        forget`), the file gets the data dir's owner, so the daemon's user can open
        it afterwards."""
        path = self.path.with_name(self.path.name + ".rebuild-lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot open {path}: {exc.strerror or exc} (give it the daemon's user, "
                "or remove it while no rebuild or forget runs)"
            ) from None
        try:
            try:
                # A chown the file system refuses (NFS root_squash, FUSE) is ignored
                # there: the flock works whoever owns the file. Any other failure is
                # the lock's.
                owned_like_directory(fd, self.path.parent)
            except OSError as exc:
                raise StorageUnavailable(
                    f"cannot give {path} the data dir's owner: {exc}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RebuildRunning(f"a rebuild of {self.path} is already running") from None
            yield
        finally:
            os.close(fd)
