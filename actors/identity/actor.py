"""The identity actor: follows the event log from its checkpoint and keeps the graph.

It has no inbox: the log is its input, and after a crash or restart it simply reads
on from the checkpoint that was committed with the last batch it applied, so nothing
is applied twice and nothing skipped. It stops by catching up to the log head (the
sources have already stopped), so a clean shutdown leaves no backlog.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from actors.identity.extract import Extractor
from actors.identity.graph import BatchResult, Graph, StaleCheckpoint
from actors.log_writer import LogProgress
from actors.messages import ProfileChanged
from actors.runtime import Actor, Mailbox, held_from_thread
from daemon.config import IdentitySection
from daemon.metrics import Metrics
from storage.base import Change, Storage
from storage.sqlite_graph import CONSUMER, SqliteGraphStore, connect

log = structlog.get_logger(__name__)

RETRY_AFTER_STORAGE_ERROR = 1.0
"""Seconds before retrying a batch the database refused (locked too long, disk full)."""


class IdentityActor(Actor):
    def __init__(
        self,
        storage: Storage,
        database: Path,
        busy_timeout: float,
        rules: IdentitySection,
        progress: LogProgress,
        metrics: Metrics,
        outbox: Mailbox[ProfileChanged] | None = None,
    ) -> None:
        super().__init__("identity")
        self._storage = storage
        self._database = database
        self._busy_timeout = busy_timeout
        self._rules = rules
        self._progress = progress
        self._metrics = metrics
        self._outbox = outbox
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self._progress.wake()

    async def run(self, ready: Callable[[], None]) -> None:
        db = await anyio.to_thread.run_sync(connect, self._database, self._busy_timeout)
        try:
            store = SqliteGraphStore(db)
            extractor = Extractor(self._rules)
            gate = self._storage.write_gate
            graph = Graph(store, self._rules, extractor, lambda: held_from_thread(gate))
            checkpoint = await anyio.to_thread.run_sync(store.checkpoint)
            self._progress.consumers[CONSUMER] = checkpoint
            ready()
            blocked = 0
            while True:
                events = await self._storage.read_events(checkpoint, self._rules.batch_size)
                if not events:
                    if self._stopping:
                        return
                    if self._progress.head <= checkpoint:
                        await self._progress.moved()
                    continue
                started = time.perf_counter()
                try:
                    result = await anyio.to_thread.run_sync(graph.apply, events, checkpoint)
                except StaleCheckpoint as stale:
                    log.info("identity graph was rebuilt; reading on", checkpoint=stale.checkpoint)
                    checkpoint = self._progress.consumers[CONSUMER] = stale.checkpoint
                    continue
                except sqlite3.OperationalError as exc:
                    # The outside world (a long lock, a full disk): nothing of the batch
                    # was committed, so trying the same batch again is exact.
                    self._metrics.storage_errors.labels("identity").inc()
                    log.warning("identity batch not applied; retrying", error=str(exc))
                    await anyio.sleep(RETRY_AFTER_STORAGE_ERROR)
                    continue
                checkpoint = events[-1].seq
                self._progress.consumers[CONSUMER] = checkpoint
                self._metrics.identity_batch_seconds.observe(time.perf_counter() - started)
                self._metrics.identity_blocked.inc(extractor.blocked - blocked)
                blocked = extractor.blocked
                self._report(result, checkpoint)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(db.close)

    def _report(self, result: BatchResult, seq: int) -> None:
        self._metrics.identity_events.inc(result.applied)
        self._metrics.identity_merges.inc(result.merges)
        self._metrics.identity_recomputes.inc(result.recomputes)
        for kind, count in result.dropped.items():
            self._metrics.identity_links_dropped.labels(kind).inc(count)
        if self._outbox is None:
            return
        for uid, flags in result.changed.items():
            reasons = [c.name.lower() for c in Change if c in flags and c.name is not None]
            self._outbox.offer(ProfileChanged(uid, reasons, seq))
