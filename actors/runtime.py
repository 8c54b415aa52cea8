"""The actor runtime: an actor is one task, its own state, and at most one bounded inbox.

The inbox (a `Mailbox`) belongs to the supervisor, not to the actor instance: when an
actor crashes and is restarted, the new instance reads the same inbox, so a crash
costs at most the message that was being handled (and durable actors recover even
that from their checkpoint).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.exit_codes import EXIT_SOFTWARE

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A bounded inbox. A full one makes the sender wait: that is the backpressure."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        send, receive = anyio.create_memory_object_stream[T](capacity)
        self._send: MemoryObjectSendStream[T] = send
        self.receiver: MemoryObjectReceiveStream[T] = receive

    async def send(self, item: T) -> None:
        """Deliver, waiting while the inbox is full. Raises anyio.ClosedResourceError
        once the daemon is shutting down and the inbox no longer takes work."""
        await self._send.send(item)

    def offer(self, item: T) -> bool:
        """Deliver if there is room, else drop: for hints whose truth is kept elsewhere."""
        try:
            self._send.send_nowait(item)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    @property
    def closed(self) -> bool:
        """The daemon is stopping and this inbox takes no more (what is queued may
        still be waiting). Safe to read from a worker thread."""
        return self.receiver.statistics().open_send_streams == 0

    def depth(self) -> int:
        return self.receiver.statistics().current_buffer_used

    def close(self) -> None:
        """Take no more; the reader drains what is queued and then sees the end."""
        self._send.close()


@contextmanager
def held_from_thread(semaphore: anyio.Semaphore) -> Iterator[None]:
    """Hold an event-loop semaphore from a worker thread (one started by
    anyio.to_thread), so sync code queues with async code for the same resource."""
    anyio.from_thread.run(semaphore.acquire)
    try:
        yield
    finally:
        anyio.from_thread.run_sync(semaphore.release)


class Fatal(Exception):
    """A failure no restart can fix (a port another process holds): the supervisor
    logs the message alone, in one line, and stops the daemon with `exit_code`."""

    exit_code = EXIT_SOFTWARE


class Actor(ABC):
    """One unit of the supervision tree.

    `run` returns when the actor has finished its work (its inbox closed and drained,
    or `stop` was called); it raises when something is wrong, and the supervisor
    restarts a fresh instance with backoff.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def run(self, ready: Callable[[], None]) -> None:
        """Do the work; call `ready()` once this actor serves (listeners bound, caught up)."""

    def stop(self) -> None:
        """Ask an actor without an inbox (a listener, a timer) to finish. Actors with an
        inbox are stopped by closing the inbox instead, so queued work is drained."""
        return
