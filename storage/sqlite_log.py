"""The event log's own SQLite file, appended to by group commits.

A file of its own because SQLite lets one connection write a file at a time: in the
file the merger and the scorer write, ingestion's commits waited behind theirs. No
commit needs both files: sources write only the log, and each consumer keeps its
checkpoint with its state in the other file, reading the log through a read-only
ATTACH (storage.sqlite_graph.connect).

A group commit is one call in a worker thread through the stdlib driver: BEGIN, the
inserts, COMMIT. Through aiosqlite each statement was a hop to its thread and back,
and each hop waited for the event loop, busy parsing the next requests: a 400-event
commit took 25 ms where sqlite3 alone takes 5. Each request's events go in as one
multi-row INSERT, so the thread gives up and retakes the interpreter lock once a
request rather than once a row.

Retries are recognised by (source, messageId) among the last DEDUP_WINDOW events,
held in memory and read back from the log at start, not by a unique index: real
clients send random UUIDs, and each event then wrote a random page of that index.
With them sqlite3 alone managed 15,000 events/s where the same rows with ordered ids
took 100,000, the checkpoints copying those pages back taking most of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import structlog

from storage.base import AppendRequest, AppendResult, EventRecord, transaction
from storage.migrations import LOG_MIGRATIONS, migrate
from storage.sqlite_graph import Transactions, log_path, open_connection, uri

log = structlog.get_logger(__name__)

DEDUP_WINDOW = 1_000_000
"""Events among which a repeated messageId is recognised: the newest half of it at
least, since it is kept as two generations (about 60 MB when full). Clients retry
within minutes (Segment's libraries for up to about 17); at 1,000 events a second this
remembers eight minutes at least, at 100 a second more than an hour."""
MAINTENANCE_WAIT = 0.05
"""Seconds the periodic checkpoint waits for readers (the merger's and the scorer's
snapshots of the log). TRUNCATE holds off writers while it waits, and group commits
with them: at the busy timeout, every checkpoint could hold ingestion for seconds."""
QUARANTINE_KEEP = 10_000
"""Quarantine keeps the newest rejects only, so a broken client cannot fill the disk."""
ROWS_A_STATEMENT = 1_000
"""Events per INSERT: 5,000 bound values, well under SQLite's limit of 32,766."""

_INSERT_REJECT = (
    "INSERT INTO quarantine (source, received_at, batch_index, reason, body) VALUES (?, ?, ?, ?, ?)"
)


def _insert_events(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO events (source, message_id, type, received_at, body) VALUES {values}"


class RecentMessages:
    """Fingerprints of (source, messageId) of the newest events, in two generations:
    a full young one becomes the old one, and the old one is forgotten. Python's hash
    is salted per process, which is fine: the set is rebuilt from the log at start."""

    def __init__(self, window: int) -> None:
        self._half = max(1, window // 2)
        self._young: set[int] = set()
        self._old: set[int] = set()

    def __contains__(self, fingerprint: int) -> bool:
        return fingerprint in self._young or fingerprint in self._old

    def update(self, fingerprints: Sequence[int]) -> None:
        for fingerprint in fingerprints:
            self._young.add(fingerprint)
            if len(self._young) >= self._half:
                self._old, self._young = self._young, set()


class EventLog(Transactions):
    """Synchronous: each method runs in a worker thread, one at a time (the caller's
    gate), on a connection that is this object's alone."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        super().__init__(db)
        self.path = path
        self._busy_timeout_ms = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
        self.head = 0
        """The last sequence number committed: kept here, since this connection is the
        log's only writer, rather than asked of SQLite in every commit."""
        self.recent = RecentMessages(DEDUP_WINDOW)

    @classmethod
    def open(cls, database: Path, busy_timeout: float, journal_size_limit: int) -> Self:
        """The log beside `database`, created and migrated as needed."""
        path = log_path(database)
        db = open_connection(path, busy_timeout)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA journal_size_limit = {int(journal_size_limit)}")
            # FULL: an acknowledged event survives power loss, not only a process
            # crash. Group commit is what keeps that affordable.
            db.execute("PRAGMA synchronous = FULL")
            migrate(db, path, LOG_MIGRATIONS)
            opened = cls(path, db)
            opened.remember()
        except BaseException:
            db.close()
            raise
        return opened

    def remember(self) -> None:
        """Read the head and the newest DEDUP_WINDOW message ids back from the log."""
        db = self._db
        self.head = int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        self.recent = RecentMessages(DEDUP_WINDOW)
        rows = db.execute(
            "SELECT source, message_id FROM events WHERE seq > ? ORDER BY seq",
            (self.head - DEDUP_WINDOW,),
        )
        while chunk := rows.fetchmany(50_000):
            self.recent.update([hash(key) for key in chunk])

    def move_from(self, database: Path) -> None:
        """Copy the log out of a database from before it had its own file.

        A commit across two WAL files is not atomic, so the copy commits on its own
        before migration 5 drops the old tables: a crash between the two leaves both
        copies, and the next start copies again, ignoring the rows it already has."""
        db = self._db
        db.execute("ATTACH DATABASE ? AS old", (uri(database, readonly=True),))
        try:
            with transaction(self):
                moved = db.execute("INSERT OR IGNORE INTO main.events SELECT * FROM old.events")
                db.execute("INSERT OR IGNORE INTO main.quarantine SELECT * FROM old.quarantine")
        finally:
            db.execute("DETACH DATABASE old")
        if moved.rowcount:
            self.remember()
            log.info("event log moved to its own file", path=str(self.path), events=moved.rowcount)

    def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        db = self._db
        results: list[AppendResult] = []
        head = self.head
        recent = self.recent
        added: dict[int, None] = {}  # in order; remembered only once committed
        with transaction(self):
            for request in requests:
                source, events = request.source, request.events
                new: list[EventRecord] = []
                for event in events:
                    fingerprint = hash((source, event.message_id))
                    if fingerprint not in added and fingerprint not in recent:
                        added[fingerprint] = None
                        new.append(event)
                for start in range(0, len(new), ROWS_A_STATEMENT):
                    head = int(self._insert(source, new[start : start + ROWS_A_STATEMENT]))
                stored = len(new)
                if request.rejected:
                    db.executemany(
                        _INSERT_REJECT,
                        [
                            (source, request.received_at, r.batch_index, r.reason, r.body)
                            for r in request.rejected
                        ],
                    )
                results.append(AppendResult(stored, len(events) - stored))
        self.head = head
        recent.update(list(added))
        return results, head

    def _insert(self, source: str, events: Sequence[EventRecord]) -> int:
        """Insert; returns the last row's sequence number."""
        values: list[object] = []
        for e in events:
            values += (source, e.message_id, e.type, e.received_at, e.body)
        return int(self._db.execute(_insert_events(len(events)), values).lastrowid or 0)

    def probe(self) -> None:
        with transaction(self):
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (datetime.now(UTC).isoformat(),),
            )

    def maintain(self) -> tuple[int, int, int]:
        """Trim the quarantine; checkpoint the WAL into the file and empty it, waiting
        at most MAINTENANCE_WAIT for readers. Returns SQLite's (busy, WAL pages, pages
        moved); busy, the rest waits for the next time (commits checkpoint as they go)."""
        with transaction(self):
            self._db.execute(
                "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?",
                (QUARANTINE_KEEP,),
            )
        self._db.execute(f"PRAGMA busy_timeout = {int(MAINTENANCE_WAIT * 1000)}")
        try:
            return self.checkpoint()
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")

    def checkpoint(self) -> tuple[int, int, int]:
        busy, pages, moved = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy), int(pages), int(moved)

    def close(self) -> None:
        self._db.close()
