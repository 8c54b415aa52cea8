"""The merger's own process.

Merging is mostly Python work, and in the daemon's process it would hold the
interpreter lock against the ingestion API. In a process of its own it runs on the
other core. It is a single worker (state such as the connection lives in this module
between calls), it ignores SIGTERM and SIGINT (systemd and a terminal signal the whole
group; the daemon decides when it stops), and it exits when the daemon does, even
when the daemon was killed.

It writes through SQLite's own lock (BEGIN IMMEDIATE with the busy timeout): the
daemon's in-process gate cannot reach here. Its write phase is short, and its
checkpoint check makes a leftover worker of a killed daemon harmless.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass

import structlog

from actors import logs
from actors.identity import isolate
from actors.identity.extract import Extractor
from actors.identity.pipeline import Graph, collector_paused
from actors.identity.settings import IdentitySection
from actors.identity.unit import MergeResult, StaleCheckpoint
from actors.poison import Attempts
from storage.backend import Backend, ClosingLogReader
from storage.errors import StorageError
from storage.session import Session

ORPHAN_CHECK_SECONDS = 0.5
READ_CACHE_KIB = 8 * 1024
"""The page cache of the connection a batch reads through while the batch before
commits. SQLite empties it whenever the other connection has committed, about once
a batch, so a larger one only holds pages longer (and a much smaller one is
slower). The session written through keeps the default cache: a larger one helped
the batch's reads, which no longer go through it, and costs memory."""
CHECKPOINT_SECONDS = 5.0
"""How often a thread of the worker copies the main file's WAL back into it, so that
the next batch writes the WAL over from its start. A batch writes many pages there;
left to the log writer's timer (storage.checkpoint_interval, 30 s by default, which
also truncates it) the WAL grows large while the merger catches up a backlog, and
its commits run slower appending to it."""
RUN_SECONDS = 1.0
"""How long one call goes on applying batches, each computed while the one before
commits, before it returns to have them reported (and to hear a stop)."""


@dataclass
class Applied:
    """What one call committed, small enough to pickle back to the daemon."""

    checkpoint: int
    applied: int
    merges: int
    recomputes: int
    dropped: dict[str, int]
    changed: dict[str, int]
    blocked: int
    seconds: list[float]
    """Each batch's, from reading its rows to its commit."""
    held: int = 0
    """Events set aside (actors/identity/isolate.py)."""


@dataclass
class Merger:
    """The graph and its three sessions: one written through; another, which a batch
    reads through while the batch before commits on the first; and the event log's
    reader, where batches are read meanwhile."""

    db: Session
    reads: Session
    log: ClosingLogReader
    graph: Graph
    batch_size: int
    attempts: Attempts

    @classmethod
    def open(cls, backend: Backend, rules: IdentitySection) -> Merger:
        with ExitStack() as opened:
            db = backend.session()
            opened.callback(db.close)
            reads = backend.session(cache_kib=READ_CACHE_KIB)
            opened.callback(reads.close)
            log = backend.log_reader()
            opened.pop_all()
        graph = Graph(db.graph, rules, Extractor(rules), reads=reads.graph)
        return cls(db, reads, log, graph, rules.batch_size, isolate.attempts())

    def close(self) -> None:
        for opened in (self.db, self.reads, self.log):
            opened.close()


_state: Merger | None = None
_nice_refused: str | None = None
log = structlog.get_logger(__name__)


def initialize(daemon_pid: int, backend: Backend) -> None:
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
        args=(backend, threading.Event()),  # never set: it ends with the process
        name="checkpoints",
        daemon=True,
    ).start()


def start(backend: Backend, rules: IdentitySection, log_level: str, log_format: str) -> int:
    """Open the graph; returns the checkpoint to read on from."""
    global _state
    logs.configure(log_level, log_format)  # type: ignore[arg-type]
    if _nice_refused is not None:
        log.warning(
            "merger worker runs at the daemon's priority: lowering it was refused",
            error=_nice_refused,
        )
    if _state is not None:
        _state.close()
    _state = Merger.open(backend, rules)
    return _state.graph.store.checkpoint()


def apply_next(after: int) -> Applied | None:
    """Apply the batches after checkpoint `after` for about RUN_SECONDS; None when the
    log has no more. If a batch fails after others were committed, those are returned,
    and the next call, starting with the failed batch, meets its error again."""
    assert _state is not None, "start() first"
    state = _state
    held = state.db.held
    results: list[MergeResult] = []
    until = time.perf_counter() + RUN_SECONDS
    try:
        results += isolate.retry_held(state.graph, held, state.attempts)
        # The process's own collector, paused for the whole call rather than batch by
        # batch: resumed after each, it would traverse the next batch's live rows.
        with collector_paused():
            for result in isolate.apply_resilient(
                state.graph,
                held,
                state.attempts,
                state.log,
                after,
                state.batch_size,
                until,
            ):
                results.append(result)
    except Exception as exc:
        if not results:
            raise
        if not isinstance(exc, StaleCheckpoint):  # a rebuild: the next call says so
            log.warning(
                "identity batch not applied; the next call starts from it",
                after=results[-1].checkpoint,
                error=repr(exc),
            )
    if not results:
        return None
    dropped: Counter[str] = Counter()
    changed: dict[str, int] = {}
    for result in results:
        dropped.update(result.dropped)
        for uid, flags in result.changed.items():
            changed[uid] = changed.get(uid, 0) | int(flags)
    return Applied(
        checkpoint=results[-1].checkpoint,
        applied=sum(result.applied for result in results),
        merges=sum(result.merges for result in results),
        recomputes=sum(result.recomputes for result in results),
        dropped=dict(dropped),
        changed=changed,
        blocked=sum(result.blocked for result in results),
        seconds=[result.seconds for result in results if result.seconds],
        held=sum(result.held for result in results),
    )


def checkpoint_every(backend: Backend, stop: threading.Event) -> None:
    """Checkpoint the main file every CHECKPOINT_SECONDS until `stop` is set: one
    call into the database, which lets go of the interpreter lock, so it copies pages
    on the other core while the merger computes its next batch."""
    checkpointer = backend.checkpointer()
    try:
        while not stop.wait(CHECKPOINT_SECONDS):
            try:
                checkpointer.checkpoint()
            except StorageError as exc:  # a full disk, say: the next time may do
                log.warning("main file's WAL checkpoint failed", error=str(exc))
    finally:
        checkpointer.close()
