"""The merger's own process.

Merging is mostly Python work, about fifty microseconds an event, and in the daemon's
process it would take the interpreter lock from the ingestion API for as long. In a
process of its own it runs on the other core. It is a single worker (state such as
the connection lives in this module between calls), it ignores SIGTERM and SIGINT
(systemd and a terminal signal the whole group; the daemon decides when it stops),
and it exits when the daemon does, even when the daemon was killed.

It writes through SQLite's own lock (BEGIN IMMEDIATE with the busy timeout): the
daemon's in-process gate cannot reach here. Its write phase is short, and its
checkpoint check makes a leftover worker of a killed daemon harmless.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from actors.identity.extract import Extractor
from actors.identity.graph import Graph
from daemon import logs
from daemon.config import IdentitySection
from storage.sqlite_graph import SqliteGraphStore, connect, open_connection, read_events

ORPHAN_CHECK_SECONDS = 0.5
CACHE_KIB = 128 * 1024
"""The merger's page cache. A batch of 10,000 events dirties some 60 MB of pages; in
the default cache of 64 MB they pushed out the index pages the next batch reads
(bench/identity.py: 15,000 events/s at 64 MB, 17,600 at 128, no better at 192)."""
CHECKPOINT_SECONDS = 5.0
"""How often a thread of the worker copies the main file's WAL back into it, so that
the next batch writes the WAL over from its start. A batch writes some 60 MB of pages
there; left to the log writer's timer (storage.checkpoint_interval, 30 s by default,
which also truncates it) the WAL grew to 3.4 GB on disk while the merger caught up a
backlog, and its commits ran slower appending to it.

It copies with a PASSIVE checkpoint, which takes no lock, and only when that copied
everything restarts the WAL, waiting for nobody (a RESTART holds the write lock while
it waits). Restarted, not truncated: writing over the file's blocks was faster than
allocating them again (bench/identity.py: 22,900 events/s against 21,500)."""


@dataclass
class Applied:
    """One batch's outcome, small enough to pickle back to the daemon."""

    checkpoint: int
    applied: int
    merges: int
    recomputes: int
    dropped: dict[str, int]
    changed: dict[str, int]
    blocked: int
    seconds: float


@dataclass
class _State:
    db: sqlite3.Connection
    graph: Graph
    extractor: Extractor
    batch_size: int
    blocked: int = 0
    reported: dict[str, int] = field(default_factory=dict)


_state: _State | None = None
_nice_refused: str | None = None
log = structlog.get_logger(__name__)


def initialize(daemon_pid: int, database: Path) -> None:
    """Pool initializer. Stopping is the daemon's decision, not a signal's; and when
    the daemon is gone (even SIGKILLed, which closes nothing cleanly), so is this
    process, mid-batch or not: an uncommitted batch is rolled back by SQLite."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _nice_refused
    try:
        os.nice(10)
    except OSError as exc:  # a seccomp filter without setpriority: said once logs are set up
        _nice_refused = str(exc)

    def watch() -> None:
        while os.getppid() == daemon_pid:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
    threading.Thread(
        target=checkpoint_every,
        args=(database, threading.Event()),  # never set: it ends with the process
        name="checkpoints",
        daemon=True,
    ).start()


def start(
    database: Path, busy_timeout: float, rules: IdentitySection, log_level: str, log_format: str
) -> int:
    """Open the graph; returns the checkpoint to read on from."""
    global _state
    logs.configure(log_level, log_format)  # type: ignore[arg-type]
    if _nice_refused is not None:
        log.warning(
            "merger worker runs at the daemon's priority: lowering it was refused",
            error=_nice_refused,
        )
    if _state is not None:
        _state.db.close()
    db = connect(database, busy_timeout, CACHE_KIB)
    extractor = Extractor(rules)
    store = SqliteGraphStore(db)
    _state = _State(db, Graph(store, rules, extractor), extractor, rules.batch_size)
    return store.checkpoint()


def apply_next(after: int) -> Applied | None:
    """Apply the next batch after checkpoint `after`; None when the log has no more."""
    assert _state is not None, "start() first"
    events = read_events(_state.db, after, _state.batch_size)
    if not events:
        return None
    started = time.perf_counter()
    result = _state.graph.apply(events, after)
    blocked = _state.extractor.blocked - _state.blocked
    _state.blocked = _state.extractor.blocked
    return Applied(
        checkpoint=events[-1].seq,
        applied=result.applied,
        merges=result.merges,
        recomputes=result.recomputes,
        dropped=dict(result.dropped),
        changed={uid: int(flags) for uid, flags in result.changed.items()},
        blocked=blocked,
        seconds=time.perf_counter() - started,
    )


def checkpoint_every(database: Path, stop: threading.Event) -> None:
    """Checkpoint the main file's WAL every CHECKPOINT_SECONDS until `stop` is set.
    One call into SQLite, which lets go of the interpreter lock: it copies pages on
    the other core while the merger computes its next batch."""
    db = open_connection(database, 0)
    try:
        while not stop.wait(CHECKPOINT_SECONDS):
            try:
                busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and frames == copied:
                    db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            except sqlite3.Error as exc:  # a full disk, say: the next time may do
                log.warning("main file's WAL checkpoint failed", error=str(exc))
    finally:
        db.close()
