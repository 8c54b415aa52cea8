"""What a source gets from the daemon: a context per source to submit its events
through, and a host that makes them.

`SourceContext.submit` is the one way into the log for every kind: it counts the
events as pending while the log writer commits them, waits for the commit (a source
acknowledges its client, or moves its own position, only after), and commits the
source's cursor in the same transaction as the events. `busy` says whether the
pipeline is too far behind to take more (HTTP answers 429; a source that pulls waits
with `room`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from actors.submission import NotLogged, Submission
from storage.backend import Storage
from storage.log import AppendRequest, AppendResult, EventRecord, Rejected

COMMIT_WAIT_TIMEOUT = 60.0
"""Seconds a submission waits for its commit before it is told to retry."""
RETRY_AFTER_PENDING = 1
"""Seconds: the writer is behind by a few commits; it catches up quickly."""
RETRY_AFTER_BACKLOG = 10
"""Seconds: a consumer is far behind; hammering will not help it."""


class Unavailable(Exception):
    """The events were not stored (the commit timed out, the daemon is stopping, the
    disk refused): nothing of them is acknowledged; the source may submit them again
    (the log drops a messageId it already has)."""


@dataclass(frozen=True)
class Busy:
    """The pipeline is too far behind to take more now."""

    reason: str
    """`pending` (the log writer) or `backlog` (a consumer)."""
    message: str
    retry_after: int


@dataclass(frozen=True)
class Limits:
    """Where backpressure starts, for every source ([http] max_pending_events and
    max_backlog)."""

    max_pending: int
    max_backlog: int


class SourceHost:
    """Made by the daemon; hands each source its context."""

    def __init__(
        self,
        writer: Mailbox[Submission],
        progress: LogProgress,
        metrics: Metrics,
        limits: Limits,
        storage: Storage,
        shutdown_timeout: float,
        config: Any,
    ) -> None:
        self.writer = writer
        self.progress = progress
        self.metrics = metrics
        self.limits = limits
        self.storage = storage
        self.shutdown_timeout = shutdown_timeout
        self.config = config
        """The whole daemon configuration, for a kind with a section of its own ([http])."""

    def context(self, name: str) -> SourceContext:
        return SourceContext(name, self)

    def busy(self, counted: bool = True) -> Busy | None:
        """Whether the pipeline is too far behind to take more, and why (the same for
        every source); counted in leadsync_backpressure_total."""
        progress, limits = self.progress, self.limits
        busy = None
        if progress.pending >= limits.max_pending:
            message = f"{_events(progress.pending)} waiting to be written; retry shortly"
            busy = Busy("pending", message, RETRY_AFTER_PENDING)
        elif progress.backlog >= limits.max_backlog:
            message = f"{_events(progress.backlog, 'logged ')} not processed yet; retry later"
            busy = Busy("backlog", message, RETRY_AFTER_BACKLOG)
        if busy is not None and counted:
            self.metrics.backpressure.labels(busy.reason).inc()
        return busy


class SourceContext:
    """One source's way into the log."""

    def __init__(self, name: str, host: SourceHost) -> None:
        self.name = name
        self._host = host

    def busy(self) -> Busy | None:
        """Whether to hold off, and why (SourceHost.busy)."""
        return self._host.busy()

    async def room(self) -> None:
        """Return once the pipeline takes more (for a source that pulls its events);
        counted once a wait in leadsync_backpressure_total."""
        busy = self._host.busy()
        # Paced as a client told to retry would be: the pipeline catches up on its own.
        while busy is not None:
            await anyio.sleep(busy.retry_after)
            busy = self._host.busy(counted=False)

    async def cursor(self) -> str | None:
        """The position this source committed last with its events."""
        return await self._host.storage.cursor(self.name)

    async def submit(
        self,
        events: Sequence[EventRecord],
        received_at: str,
        rejected: Sequence[Rejected] = (),
        cursor: str | None = None,
        rejected_types: Sequence[str] = (),
    ) -> AppendResult:
        """Commit the events (and the rejected messages, quarantined, and the cursor)
        in one transaction; Unavailable if they were not stored."""
        host = self._host
        request = AppendRequest(self.name, received_at, events, rejected, cursor)
        submission = Submission(request)
        weight = len(events) + len(rejected)
        host.progress.hold(weight)
        try:
            await host.writer.send(submission)
            with anyio.fail_after(COMMIT_WAIT_TIMEOUT):
                result = await submission.wait()
        except TimeoutError:
            # Committed later or not at all: either way a retry is safe.
            raise Unavailable("the commit did not complete in time; retry") from None
        except anyio.ClosedResourceError:
            raise Unavailable("shutting down; retry") from None
        except NotLogged as exc:
            raise Unavailable(f"could not store events: {exc}") from None
        finally:
            host.progress.release(weight)
        self._count(events, result, rejected_types)
        return result

    def _count(
        self, events: Sequence[EventRecord], result: AppendResult, rejected_types: Sequence[str]
    ) -> None:
        # One increment per type, not per event: a labelled increment costs a few us,
        # which a 100-event batch would pay a hundred times.
        metrics, name = self._host.metrics, self.name
        for kind, count in Counter(e.type for e in events).items():
            metrics.events_ingested.labels(name, kind).inc(count)
        if result.duplicates:
            metrics.events_duplicate.labels(name).inc(result.duplicates)
        if result.suppressed:
            metrics.events_suppressed.labels(name).inc(result.suppressed)
        for kind, count in Counter(rejected_types).items():
            metrics.events_rejected.labels(name, kind).inc(count)


def _events(count: int, kind: str = "") -> str:
    """ "1 event is", "2 events are": for messages clients show their developers."""
    return f"{count:,} {kind}event is" if count == 1 else f"{count:,} {kind}events are"
