"""Connections to leadsync's SQLite files through the stdlib's synchronous driver, and
what every synchronous store on them shares: write transactions of its own, and
`IN (...)` lists a chunk at a time.

The merger, the scorer, the destinations, the rebuild, forget and the commands that
work on the files each open a connection of their own here (`connect`); the
synchronous stores of storage/sqlite_*.py work on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from storage.sqlite_errors import translated

CACHE_KIB = 64 * 1024
_CHUNK = 500
"""Values per `IN (...)`: well under SQLite's limit on bound parameters."""

_T = TypeVar("_T")


def log_path(path: Path) -> Path:
    """The event log's file beside the database at `path`: leadsync.db's is
    leadsync-events.db. Its own file, so appending to it takes a write lock of its own
    (SQLite has one writer per file), and ingestion never waits for the merger."""
    return path.with_name(f"{path.stem}-events{path.suffix}")


def uri(path: Path, *, readonly: bool = False) -> str:
    """`path` as an SQLite URI (ATTACH takes a mode only in one)."""
    return path.absolute().as_uri() + ("?mode=ro" if readonly else "")


def open_connection(
    path: Path, busy_timeout: float, *, readonly: bool = False
) -> sqlite3.Connection:
    """A stdlib connection for one worker thread at a time (its owner hops between
    threads), in autocommit: its owner opens BEGIN IMMEDIATE itself, which waits for the
    write lock, where the module's own deferred transactions fail at the first write."""
    db = sqlite3.connect(
        uri(path, readonly=readonly),
        uri=True,
        isolation_level=None,
        timeout=busy_timeout,
        check_same_thread=False,
    )
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return db


def connect(path: Path, busy_timeout: float, cache_kib: int = CACHE_KIB) -> sqlite3.Connection:
    """A connection to the main file, with the event log attached as `log`, so `events`
    names its table in every query.

    Attached read-only: BEGIN IMMEDIATE takes the write lock of every attached file
    that is writable, and the merger's or the scorer's would then stall ingestion."""
    db = open_connection(path, busy_timeout)
    events = log_path(path)
    if events.exists():  # not yet for a database from before it had one (migration 5)
        db.execute("ATTACH DATABASE ? AS log", (uri(events, readonly=True),))
    # NORMAL: in WAL mode a commit is safe from a crash of the process, and power
    # loss can only drop the newest batches, checkpoint included, which are then
    # replayed from the log. The graph is derived; the log keeps synchronous=FULL.
    db.execute("PRAGMA synchronous = NORMAL")
    # The graph's indexes are read all over for every batch; SQLite's default 2 MB
    # page cache would re-read and re-parse them from the OS each time.
    db.execute(f"PRAGMA cache_size = -{cache_kib}")
    # Checkpointing is left to a thread of the merger's worker (worker.py) and to the
    # log writer's timer (storage.maintain): done inside every merger commit it would
    # copy the same hot index pages again and again.
    db.execute("PRAGMA wal_autocheckpoint = 0")
    return db


def open_log(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """The event log beside the database at `path`, read-only, for the merger to read
    its next batch while its main connection commits the one before."""
    return open_connection(log_path(path), busy_timeout, readonly=True)


@translated
class Transactions:
    """Write transactions on a synchronous connection of one's own: BEGIN IMMEDIATE,
    so a busy database is waited for rather than failed at the first write."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def marks(chunk: Sequence[object]) -> str:
    return ",".join("?" * len(chunk))
