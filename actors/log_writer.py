"""The log writer: the one actor that appends to the event log, in group commits.

Every source hands its validated messages here and waits for the commit before it
acknowledges. While one transaction is being written, new requests queue in the
inbox; the next transaction takes all of them at once. So under load many requests
share one fsync, and at idle a lone request is committed immediately.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import msgspec
import structlog

from actors.identity.settings import IdentitySection
from actors.lifecycle.suppressions import Suppressions
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Actor, Mailbox
from actors.submission import NotLogged, Submission
from storage.backend import Storage
from storage.errors import StorageError

log = structlog.get_logger(__name__)

MAX_GROUP_EVENTS = 5_000
"""Bounds one transaction, so the write lock is never held long and a reply is prompt."""


class LogWriter(Actor):
    def __init__(
        self,
        storage: Storage,
        inbox: Mailbox[Submission],
        progress: LogProgress,
        metrics: Metrics,
        maintenance_interval: float,
        suppressions: Suppressions | None = None,
    ) -> None:
        super().__init__("log_writer")
        self._suppressions = suppressions or Suppressions(b"", set(), IdentitySection())
        self._storage = storage
        self._inbox = inbox
        self._progress = progress
        self._metrics = metrics
        self._maintenance_interval = maintenance_interval

    async def run(self, ready: Callable[[], None]) -> None:
        self._progress.advance(await self._storage.log_head())
        ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._maintain)
            async for first in self._inbox.receiver:
                group = [first]
                events = len(first.request.events)
                while events < MAX_GROUP_EVENTS:
                    try:
                        item = self._inbox.receiver.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    group.append(item)
                    events += len(item.request.events)
                await self._commit(group, events)
            tg.cancel_scope.cancel()

    async def _commit(self, group: list[Submission], events: int) -> None:
        started = time.perf_counter()
        try:
            # Screened and committed under one lock: a forget that takes it finds no
            # event of its person between the filter and the log.
            async with self._suppressions.lock:
                requests, dropped = self._suppressions.screen([s.request for s in group])
                results, head = await self._storage.append(requests)
        except StorageError as exc:
            # The outside world (a lock held too long, a full or read-only disk): the
            # clients are told to retry and this actor carries on.
            self._metrics.storage_errors.labels("append").inc()
            log.error("group commit failed", error=str(exc), requests=len(group), events=events)
            failure = NotLogged(str(exc))
            for submission in group:
                submission.resolve(None, failure)
            return
        except BaseException as exc:
            for submission in group:
                submission.resolve(None, NotLogged(f"log writer failed: {exc!r}"))
            raise
        elapsed = time.perf_counter() - started
        self._metrics.commit_seconds.observe(elapsed)
        self._metrics.commit_events.observe(events)
        self._progress.advance(head, elapsed)
        for submission, result, suppressed in zip(group, results, dropped, strict=True):
            if suppressed:
                result = msgspec.structs.replace(result, suppressed=suppressed)
            submission.resolve(result)

    async def _maintain(self) -> None:
        while True:
            await anyio.sleep(self._maintenance_interval)
            try:
                await self._storage.maintain()
            except StorageError as exc:
                self._metrics.storage_errors.labels("maintain").inc()
                log.warning("storage maintenance failed", error=str(exc))
