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
from actors.messages import ProfileChanged, ScorerMessage
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Actor, Mailbox
from storage.backend import Backend
from storage.errors import StorageUnavailable
from storage.graph import IDENTITY_CONSUMER, Change

log = structlog.get_logger(__name__)

T = TypeVar("T")
RETRY_AFTER_STORAGE_ERROR = 1.0
IDLE_LOOK = 1.0
"""Seconds between calls to the worker while the log is quiet, which apply any held
event whose retry was asked for (`leadsync held retry`)."""
MAX_RETRY_AFTER_FAILURE = 300.0
"""Seconds before retrying a batch the database refused (locked too long, disk full)."""


class IdentityActor(Actor):
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
        super().__init__("identity")
        self._backend = backend
        self._rules = rules
        self._log_level, self._log_format = log_settings
        self._progress = progress
        self._metrics = metrics
        self._scorer = scorer
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self._progress.wake()

    async def run(self, ready: Callable[[], None]) -> None:
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.initialize,
            initargs=(os.getpid(), self._backend),
        )
        try:
            checkpoint = await _call(
                pool,
                worker.start,
                self._backend,
                self._rules,
                self._log_level,
                self._log_format,
            )
            self._progress.applied(IDENTITY_CONSUMER, checkpoint)
            ready()
            failures = 0
            while True:
                try:
                    applied = await _call(pool, worker.apply_next, checkpoint)
                except StaleCheckpoint as stale:
                    log.info("identity graph was rebuilt; reading on", checkpoint=stale.checkpoint)
                    checkpoint = stale.checkpoint
                    self._progress.applied(IDENTITY_CONSUMER, checkpoint)
                    continue
                except StorageUnavailable as exc:
                    # The outside world (a long lock, a full disk): nothing of the batch
                    # was committed, so trying the same batch again is exact.
                    self._metrics.storage_errors.labels("identity").inc()
                    log.warning("identity batch not applied; retrying", error=str(exc))
                    await anyio.sleep(RETRY_AFTER_STORAGE_ERROR)
                    continue
                except BrokenProcessPool:
                    raise  # the worker died: a restart starts a new one
                except Exception as exc:
                    # A bug that one batch triggers every time. Restarting would escalate
                    # and take ingestion down with it; instead the merger waits, longer
                    # each time, and says so, while the log keeps taking events.
                    self._metrics.identity_failures.inc()
                    failures += 1
                    delay = min(RETRY_AFTER_STORAGE_ERROR * 2**failures, MAX_RETRY_AFTER_FAILURE)
                    log.error(
                        "identity batch failed; retrying",
                        after=checkpoint,
                        retry_in=delay,
                        error=repr(exc),
                    )
                    with anyio.move_on_after(delay):
                        while not self._stopping:
                            await self._progress.moved()
                    if self._stopping:
                        return  # it cannot catch up; its checkpoint is where it stopped
                    continue
                failures = 0
                if applied is None:
                    if self._stopping:
                        return
                    if self._progress.head <= checkpoint:
                        # Also a look a second: a held event's retry may be waiting.
                        with anyio.move_on_after(IDLE_LOOK):
                            await self._progress.moved()
                    continue
                checkpoint = applied.checkpoint
                self._progress.applied(IDENTITY_CONSUMER, checkpoint)
                self._report(applied)
                if self._stopping:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pool.shutdown)

    def _report(self, applied: worker.Applied) -> None:
        for seconds in applied.seconds:
            self._metrics.identity_batch_seconds.observe(seconds)
        self._metrics.identity_events.inc(applied.applied)
        self._metrics.identity_merges.inc(applied.merges)
        self._metrics.identity_recomputes.inc(applied.recomputes)
        self._metrics.identity_blocked.inc(applied.blocked)
        if applied.held:
            self._metrics.poison.labels(isolate.COMPONENT).inc(applied.held)
        for kind, count in applied.dropped.items():
            self._metrics.identity_links_dropped.labels(kind).inc(count)
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
