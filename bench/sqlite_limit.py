"""The storage ceiling: stdlib sqlite3 inserting the rows a daemon stored into a fresh
file of the event log's schema, PRAGMAs and INSERT (no HTTP, no parsing, no event
loop). bench/ingest.py and bench/sustained.py print it beside the daemon's figure,
measured in the same run, since hosts of one size differ by a factor of two."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from storage.migrations import LOG_MIGRATIONS
from storage.sqlite_connect import log_path, uri

_INSERT = "INSERT INTO events (source, message_id, type, received_at, body) VALUES (?, ?, ?, ?, ?)"

Row = tuple[str, str, str, str, bytes]


def stored_rows(database: Path, limit: int) -> list[Row]:
    """The first `limit` rows of the event log beside the daemon's `database`."""
    with closing(sqlite3.connect(uri(log_path(database), readonly=True), uri=True)) as db:
        return db.execute(
            "SELECT source, message_id, type, received_at, body FROM events ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()


def raw_sqlite(path: Path, rows: list[Row], per_transaction: int) -> float:
    """Events/s for stdlib sqlite3 alone: the event log's schema, PRAGMAs and INSERT,
    executemany of 100 rows, one BEGIN IMMEDIATE ... COMMIT (one fsync) every
    `per_transaction` rows."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        for script in LOG_MIGRATIONS:
            db.executescript(script)
        started = time.perf_counter()
        for start in range(0, len(rows), per_transaction):
            db.execute("BEGIN IMMEDIATE")
            end = min(start + per_transaction, len(rows))
            for chunk in range(start, end, 100):
                db.executemany(_INSERT, rows[chunk : min(chunk + 100, end)])
            db.execute("COMMIT")
        return len(rows) / (time.perf_counter() - started)
    finally:
        db.close()


def limits(directory: Path, rows: list[Row], group: int) -> dict[str, float]:
    """Events/s for `rows` inserted again three ways, in fresh files under `directory`:
    an fsync per 100 rows (a request's worth: no group commit), per `group` rows (the
    largest group the bench's clients can form), and one transaction (no fsync to
    speak of)."""
    rates: dict[str, float] = {}
    if not rows:
        return rates
    for label, per_transaction in (
        ("100 rows a commit", 100),
        (f"{group} rows a commit", group),
        ("one transaction", len(rows)),
    ):
        rates[label] = raw_sqlite(directory / f"sqlite-{per_transaction}.db", rows, per_transaction)
    return rates
