"""The event log's retention in SQLite: the oldest events that every consumer applied,
trimmed in small transactions (`[storage] retain_events`)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

TRIM_ROWS = 5_000
"""Events deleted by one retention transaction: the log's write lock, which group
commits wait for, is held for milliseconds."""
TRIM_CHUNKS = 100
"""Transactions of trimming per maintenance round; a first trim of a long log goes on
at the next round rather than in one sitting."""
CONSUMERS = ("identity", "scorer")
"""The log's consumers: an event is trimmed only once every one has applied it."""


def trim_events(log: sqlite3.Connection, before: str, upto: int, limit: int = TRIM_ROWS) -> int:
    """One transaction of retention: delete the oldest events received before `before`
    (ISO time, as received_at is written) and applied by every consumer (seq <= `upto`),
    at most `limit`, never the newest. Seq order is arrival order give or take the
    seconds a commit waits, so the oldest are found at the start of the table, and the
    first one too new ends the trim."""
    log.execute("BEGIN IMMEDIATE")
    try:
        head = int(log.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        last = 0
        for seq, received_at in log.execute(
            "SELECT seq, received_at FROM events ORDER BY seq LIMIT ?", (limit,)
        ).fetchall():
            if received_at >= before or seq > upto or seq >= head:
                break
            last = seq
        gone = log.execute("DELETE FROM events WHERE seq <= ?", (last,)).rowcount if last else 0
        log.execute("COMMIT")
        return int(gone)
    except BaseException:
        if log.in_transaction:
            log.execute("ROLLBACK")
        raise


def retention_cutoff(retain: float, now: float | None = None) -> str:
    """The received_at before which events are old enough to trim."""
    moment = datetime.fromtimestamp((time.time() if now is None else now) - retain, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
