"""How far the event log has been written and read: the numbers backpressure, /status
and /metrics are made of, kept by one owner that the log writer, the sources and the
consumers each update through a method of their own."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import anyio
import msgspec


class LogStatus(msgspec.Struct, frozen=True):
    """How far the log was written and read at one moment (`LogProgress.snapshot`):
    what /status and /metrics show, each figure from the same moment."""

    head: int
    pending: int
    """Events handed to the writer and not yet committed (held in memory)."""
    backlog: int
    """Committed events the slowest consumer (not replaying) has not applied yet."""
    consumers: Mapping[str, int]
    """Each consumer's checkpoint: the last sequence number it applied (a read-only copy)."""


class LogProgress:
    """How far the log has been written and read; the numbers backpressure is made of.

    Several writers, one figure each, through its own method: the head and the commit
    time the log writer's (`advance`), `pending` the sources' (`hold`, `release`), each
    consumer's checkpoint that consumer's (`applied`). All on the one event loop, so no
    lock. Nobody else changes them: /status and /metrics take a `snapshot()`, and the
    pipeline paces itself by the read-only figures below.
    """

    def __init__(self) -> None:
        self._head = 0
        self._pending = 0
        self._consumers: dict[str, int] = {}
        self._replaying: set[str] = set()
        self._commit_seconds = 0.0
        self._moved: anyio.Event | None = None

    @property
    def head(self) -> int:
        """The sequence number of the newest committed event."""
        return self._head

    @property
    def pending(self) -> int:
        """Events handed to the writer and not yet committed."""
        return self._pending

    @property
    def commit_seconds(self) -> float:
        """Time the writer has spent in commits, summed: how close ingestion runs to its
        capacity (a writer committing all the time has requests queued behind it)."""
        return self._commit_seconds

    @property
    def backlog(self) -> int:
        """Committed events the slowest consumer has not applied yet (on disk). A
        consumer reading the whole log again on purpose (the scorer after new event
        weights) is left out: its lag is work it chose, not a backlog to push back on
        clients for."""
        positions = [seq for name, seq in self._consumers.items() if name not in self._replaying]
        if not positions:
            return 0
        return self._head - min(positions)

    def snapshot(self) -> LogStatus:
        consumers = MappingProxyType(dict(self._consumers))
        return LogStatus(self._head, self._pending, self.backlog, consumers)

    def advance(self, head: int, took: float = 0.0) -> None:
        """The log writer's: a commit (of `took` seconds) moved the head; wakes the
        consumers that wait for new events."""
        self._head = head
        self._commit_seconds += took
        self.wake()

    def hold(self, events: int) -> None:
        """A source's: `events` handed to the writer, not committed yet."""
        self._pending += events

    def release(self, events: int) -> None:
        """A source's: `events` it held are committed, or will not be."""
        self._pending -= events

    def applied(self, consumer: str, checkpoint: int, replaying: bool = False) -> None:
        """A consumer's: it has applied the log up to `checkpoint`; `replaying` while it
        reads the whole log again on purpose."""
        self._consumers[consumer] = checkpoint
        if replaying:
            self._replaying.add(consumer)
        else:
            self._replaying.discard(consumer)

    def wake(self) -> None:
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def moved(self) -> None:
        """Return at the next `advance` or `wake` (consumers re-check their own state)."""
        if self._moved is None:
            self._moved = anyio.Event()
        await self._moved.wait()
