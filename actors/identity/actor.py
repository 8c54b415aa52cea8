"""The identity actor: follows the event log from its checkpoint and keeps the graph.

The merging itself runs in a worker process (actors/identity/worker.py); this actor
paces it, reports its figures and hands changed profiles on.

It has no inbox: the log is its input, and after a crash or restart it simply reads
on from the checkpoint that was committed with the last batch it applied, so nothing
is applied twice and nothing skipped. Asked to stop, it finishes the batch in flight
and returns: catching up a large backlog could outlast the shutdown grace, and the
backlog is on disk, where the next start reads on from the checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import structlog

from actors.identity import isolate, worker
from actors.identity.settings import IdentitySection
from actors.identity.unit import StaleCheckpoint
from actors.log_consumer import LogConsumer, Round
from actors.messages import ProfileChanged, ScorerMessage
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from storage.backend import Backend
from storage.errors import StorageUnavailable
from storage.graph import IDENTITY_CONSUMER, Change

log = structlog.get_logger(__name__)

T = TypeVar("T")
IDLE_LOOK = 1.0
"""Seconds between calls to the worker while the log is quiet, which apply any held
event whose retry was asked for (`leadsync held retry`)."""
FIRST_RETRY_AFTER_FAILURE = 2.0
MAX_RETRY_AFTER_FAILURE = 300.0
"""Seconds before retrying a batch a bug failed on, doubling from the first."""


class IdentityActor(LogConsumer):
    def __init__(
        self,
        backend: Backend,
        rules: IdentitySection,
        progress: LogProgress,
        metrics: Metrics,
        log_settings: tuple[str, str],
        scorer: Mailbox[ScorerMessage] | None = None,
    ) -> None:
        """`scorer`: the scorer's inbox, told of each profile a batch changed (a hint:
        the scorer reads what changed from the database either way)."""
        super().__init__("identity", IDENTITY_CONSUMER, progress, metrics)
        self._backend = backend
        self._rules = rules
        self._log_level, self._log_format = log_settings
        self._scorer = scorer
        self._stopping = False
        self._failures = 0
        self._pool: ProcessPoolExecutor | None = None

    def stop(self) -> None:
        self._stopping = True
        self.progress.wake()

    def closing(self) -> bool:
        return self._stopping

    def stopped_during(self) -> bool:
        return True  # catching up a backlog could outlast the shutdown grace

    async def run(self, ready: Callable[[], None]) -> None:
        pool = self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.initialize,
            initargs=(os.getpid(), self._backend),
        )
        try:
            self.checkpoint = await _call(
                pool,
                worker.start,
                self._backend,
                self._rules,
                self._log_level,
                self._log_format,
            )
            self.publish()
            ready()
            await self.follow()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pool.shutdown)

    async def round(self, closing: bool) -> Round:
        """One call to the worker: the batches it applies in about a second."""
        assert self._pool is not None
        try:
            applied = await _call(self._pool, worker.apply_next, self.checkpoint)
        except StaleCheckpoint as stale:
            log.info("identity graph was rebuilt; reading on", checkpoint=stale.checkpoint)
            self.checkpoint = stale.checkpoint
            return Round.FULL
        except (StorageUnavailable, BrokenProcessPool):
            raise  # the outside world's, retried; the worker died: a restart starts one
        except Exception as exc:
            await self._wait_after(exc)
            return Round.FULL
        self._failures = 0
        if applied is None:
            return Round.FULL if self.progress.head > self.checkpoint else Round.IDLE
        self.checkpoint = applied.checkpoint
        self._report(applied)
        return Round.FULL

    async def idle(self) -> None:
        # Also a look a second: a held event's retry may be waiting.
        with anyio.move_on_after(IDLE_LOOK):
            await self.progress.moved()

    async def _wait_after(self, exc: Exception) -> None:
        """A bug that one batch triggers every time. Restarting would escalate and take
        ingestion down with it; instead the merger waits, longer each time, and says
        so, while the log keeps taking events."""
        self.metrics.identity_failures.inc()
        self._failures += 1
        delay = min(FIRST_RETRY_AFTER_FAILURE * 2 ** (self._failures - 1), MAX_RETRY_AFTER_FAILURE)
        log.error(
            "identity batch failed; retrying",
            after=self.checkpoint,
            retry_in=delay,
            error=repr(exc),
        )
        with anyio.move_on_after(delay):
            while not self._stopping:
                await self.progress.moved()

    def _report(self, applied: worker.Applied) -> None:
        for seconds in applied.seconds:
            self.metrics.identity_batch_seconds.observe(seconds)
        self.metrics.identity_events.inc(applied.applied)
        self.metrics.identity_merges.inc(applied.merges)
        self.metrics.identity_recomputes.inc(applied.recomputes)
        self.metrics.identity_blocked.inc(applied.blocked)
        if applied.held:
            self.metrics.poison.labels(isolate.COMPONENT).inc(applied.held)
        for kind, count in applied.dropped.items():
            self.metrics.identity_links_dropped.labels(kind).inc(count)
        if self._scorer is None:
            return
        for uid, flags in applied.changed.items():
            reasons = [c.name.lower() for c in Change if c & flags and c.name is not None]
            self._scorer.offer(ProfileChanged(uid, reasons, applied.checkpoint))


async def _call(pool: ProcessPoolExecutor, function: Callable[..., T], *args: Any) -> T:
    """Run `function` in the worker; a batch in flight finishes even if we are cancelled,
    so its outcome is never in doubt."""
    future = pool.submit(function, *args)
    return await anyio.to_thread.run_sync(future.result)
