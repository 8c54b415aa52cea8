"""The event log's own SQLite file, appended to by group commits.

A file of its own because SQLite lets one connection write a file at a time: in the
file the merger and the scorer write, ingestion's commits waited behind theirs. No
commit needs both files: sources write only the log, and each consumer keeps its
checkpoint with its state in the other file, reading the log through a read-only
ATTACH (storage.sqlite_connect.connect).

A group commit is one call in a worker thread through the stdlib driver: BEGIN, the
inserts, COMMIT. Through aiosqlite each statement is a hop to its thread and back,
and each hop waits for the event loop, busy parsing the next requests: a commit
takes several times what sqlite3 alone takes. Each request's events go in as one
multi-row INSERT, so the thread gives up and retakes the interpreter lock once a
request rather than once a row.

Retries are recognised by (source, messageId) among the events logged in the last
`dedup_window` seconds, held in memory (storage/recent_messages.py) and read back from
the log at start, not by a unique index: real clients send random UUIDs, and each
event would then write a random page of that index, which the checkpoints copy back
again; with such ids the index, not the log, would bound what SQLite can insert.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np
import structlog

from storage.log import DEDUP_WINDOW, AppendRequest, AppendResult, EventRecord
from storage.migrations import LOG_MIGRATIONS, migrate
from storage.recent_messages import SLICES, Fingerprints, RecentMessages
from storage.sqlite_connect import Transactions, log_path, open_connection, uri
from storage.sqlite_errors import translated
from storage.sqlite_retention import trim_events
from storage.transaction import transaction

log = structlog.get_logger(__name__)

LookedUp = tuple[list[list[int]], list[bool]]
"""Each request's fingerprints, and for each of them in order whether it was seen."""

RECEIPT_TO_ACK = 70.0
"""Seconds by which an event's received_at may precede its commit: the HTTP source
stamps it before reading the body (at most 10 s) and waits at most 60 s for the commit
(actors/http_source.py). At start each event is taken as committed that long after it
arrived, so what was acknowledged within the window before a restart is still in it."""
FETCH_ROWS = 50_000
"""Rows read at a time when the window is read back: bounds the Python objects held."""
monotonic = time.monotonic
wall_clock = time.time
"""The clocks the window runs on (monotonic) and is read back by (wall, as received_at
is written); module names so that tests can move time."""
MAINTENANCE_WAIT = 0.05
"""Seconds the periodic checkpoint waits for readers (the merger's and the scorer's
snapshots of the log). TRUNCATE holds off writers while it waits, and group commits
with them: at the busy timeout, every checkpoint could hold ingestion for seconds."""
QUARANTINE_KEEP = 10_000
"""Quarantine keeps the newest rejects only, so a broken client cannot fill the disk."""
CURSOR = "source_cursor:{}"
"""The log's meta row that keeps a source's position, written with its events."""
_SAVE_CURSOR = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
ROWS_A_STATEMENT = 1_000
"""Events per INSERT: 5,000 bound values, well under SQLite's limit of 32,766."""

_INSERT_REJECT = (
    "INSERT INTO quarantine (source, received_at, batch_index, reason, body) VALUES (?, ?, ?, ?, ?)"
)


def _insert_events(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO events (source, message_id, type, received_at, body) VALUES {values}"


@translated
class EventLog(Transactions):
    """Synchronous: each method runs in a worker thread, one at a time (the caller's
    gate), on a connection that is this object's alone."""

    def __init__(self, path: Path, db: sqlite3.Connection, dedup_window: float) -> None:
        super().__init__(db)
        self.path = path
        self._busy_timeout_ms = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
        self.head = 0
        """The last sequence number committed: kept here, since this connection is the
        log's only writer, rather than asked of SQLite in every commit."""
        self.recent = RecentMessages(dedup_window)
        """Fingerprints of (source, messageId), Python's hash: salted per process, which
        is fine, since they are read back from the log at start."""

    @classmethod
    def open(
        cls,
        database: Path,
        busy_timeout: float,
        journal_size_limit: int,
        dedup_window: float = DEDUP_WINDOW,
    ) -> Self:
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
            opened = cls(path, db, dedup_window)
            opened.remember()
        except BaseException:
            db.close()
            raise
        return opened

    def remember(self) -> None:
        """Read the head back, and the messageIds of the events the window holds.

        Slice by slice of the window (storage/recent_messages.py): the events of a slice
        are a range of sequence numbers, found by a binary search on received_at. Seq
        order is commit order, and an event is committed at most RECEIPT_TO_ACK after
        its received_at, so an event after one received before `cutoff` was committed
        before cutoff + RECEIPT_TO_ACK: each search is a few dozen reads by seq."""
        db = self._db
        self.head = int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        recent = self.recent = RecentMessages(self.recent.window)
        now, wall = monotonic(), wall_clock()
        span = recent.span
        last = int(now // span)
        slices = range(last - SLICES, last + 1)  # the oldest one still in the window first
        # Slice k ends at monotonic time (k + 1) * span, which was `wall - now + ...`.
        ends = [self._committed_before(wall - now + (k + 1) * span) for k in slices[:-1]]
        starts = [self._committed_before(wall - now + slices[0] * span), *ends]
        for k, low, high in zip(slices, starts, [*ends, self.head], strict=True):
            recent.advance((k + 0.5) * span)
            recent.add_sorted(self._fingerprints(low, high))
        recent.advance(now)

    def _committed_before(self, moment: float) -> int:
        """A sequence number that every event committed before `moment` (a wall time)
        has at most, and few later ones: the last whose received_at precedes it by
        RECEIPT_TO_ACK, found by a binary search, so a few dozen reads by seq."""
        cutoff = datetime.fromtimestamp(moment - RECEIPT_TO_ACK, UTC)
        text = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        low, high = 0, self.head + 1  # low: before the cutoff (0: no event); high: not
        while high - low > 1:
            middle = (low + high) // 2
            row = self._db.execute(
                "SELECT seq, received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1",
                (middle,),
            ).fetchone()
            if row is not None and row[0] < high and row[1] < text:
                low = int(row[0])
            else:
                high = middle
        return low

    def _fingerprints(self, after: int, upto: int) -> Fingerprints:
        """The sorted fingerprints of the events after `after` up to `upto`."""
        rows = self._db.execute(
            "SELECT source, message_id FROM events WHERE seq > ? AND seq <= ?", (after, upto)
        )
        # At most one event a sequence number: filled in place, not copied at the end.
        fingerprints = np.empty(max(0, upto - after), dtype=np.int64)
        filled = 0
        while chunk := rows.fetchmany(FETCH_ROWS):
            # A row is the tuple (source, message_id): its hash is the fingerprint.
            fingerprints[filled : filled + len(chunk)] = np.fromiter(
                map(hash, chunk), dtype=np.int64, count=len(chunk)
            )
            filled += len(chunk)
        fingerprints = fingerprints[:filled]
        fingerprints.sort()
        return fingerprints

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

    def look_up(self, requests: Sequence[AppendRequest]) -> LookedUp:
        """The fingerprints of the requests' events, and which the window holds."""
        keys = [[hash((r.source, e.message_id)) for e in r.events] for r in requests]
        return keys, self.recent.seen([key for request in keys for key in request])

    def append(
        self, requests: Sequence[AppendRequest], looked_up: LookedUp | None = None
    ) -> tuple[list[AppendResult], int]:
        """Commit the requests' events but those the window holds (`looked_up`, done
        before with nothing appended since, or here)."""
        db = self._db
        results: list[AppendResult] = []
        head = self.head
        recent = self.recent
        recent.advance(monotonic())
        keys, found = looked_up or self.look_up(requests)
        seen = iter(found)
        added: dict[int, None] = {}  # in order; remembered only once committed
        with transaction(self):
            for request, fingerprints in zip(requests, keys, strict=True):
                source, events = request.source, request.events
                new: list[EventRecord] = []
                for event, fingerprint in zip(events, fingerprints, strict=True):
                    if not next(seen) and fingerprint not in added:
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
                if request.cursor is not None:
                    db.execute(_SAVE_CURSOR, (CURSOR.format(source), request.cursor))
                results.append(AppendResult(stored, len(events) - stored))
        self.head = head
        recent.advance(monotonic())  # at the commit: the window counts from there
        recent.add(added)
        return results, head

    def cursor(self, source: str) -> str | None:
        """The position `source` committed last (AppendRequest.cursor), if any."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (CURSOR.format(source),)
        ).fetchone()
        return None if row is None else str(row[0])

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

    def trim(self, before: str, upto: int, limit: int) -> int:
        """One small transaction of retention (storage/sqlite_retention.py)."""

        return trim_events(self._db, before, upto, limit)

    def checkpoint(self) -> tuple[int, int, int]:
        busy, pages, moved = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy), int(pages), int(moved)

    def close(self) -> None:
        self._db.close()
