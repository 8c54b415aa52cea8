"""How far the event log has been written and read: the numbers backpressure, /status
and /metrics are made of, shared by the log writer, the sources and the consumers."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class LogProgress:
    """How far the log has been written and read; the numbers backpressure is made of.

    Shared by reference, but each field has one writer: `head` and `pending` the log
    writer and the sources, `consumers[name]` that consumer alone.
    """

    head: int = 0
    pending: int = 0
    """Events handed to the writer and not yet committed (held in memory)."""
    consumers: dict[str, int] = field(default_factory=dict)
    commit_seconds: float = 0.0
    """Time the writer has spent in commits, summed: how close ingestion runs to its
    capacity (a writer committing all the time has requests queued behind it)."""
    replaying: set[str] = field(default_factory=set)
    """Consumers reading the whole log again on purpose (the scorer after new event
    weights): their lag is work they chose, not a backlog to push back on clients for."""
    _moved: anyio.Event | None = field(default=None, repr=False)

    def advance(self, head: int) -> None:
        """A commit moved the head: wake the consumers that wait for new events."""
        self.head = head
        self.wake()

    def wake(self) -> None:
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def moved(self) -> None:
        """Return at the next `advance` or `wake` (consumers re-check their own state)."""
        if self._moved is None:
            self._moved = anyio.Event()
        await self._moved.wait()

    @property
    def backlog(self) -> int:
        """Committed events the slowest consumer has not applied yet (on disk)."""
        positions = [seq for name, seq in self.consumers.items() if name not in self.replaying]
        if not positions:
            return 0
        return self.head - min(positions)
