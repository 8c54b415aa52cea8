"""Doorbells: a destination actor woken as soon as rows for it are committed, rather
than finding them at its next look at the outbox.

The outbox is the truth and a ring is only a hint, sent after the commit that made
rows due: a ring lost (a crash between the commit and the ring) costs latency, never
a row, because the actor still looks at the outbox on a slow timer of its own. A bell
is a flag, not a queue: rung any number of times while its actor is busy (sending,
waiting on its rate limit), it is heard once, at the actor's next wait, so a burst of
commits costs one look at the outbox and nothing grows.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio


class Bell:
    """One destination's. Rung and waited for on the event loop's thread; one task
    waits at a time (the destination actor's refill holds a lock around its wait)."""

    def __init__(self) -> None:
        self._rung = anyio.Event()

    def ring(self) -> None:
        self._rung.set()

    async def wait(self, longest: float) -> bool:
        """Until the bell rings or `longest` seconds pass; True if it rang. A ring
        that came before the wait is heard at once; the ring is then taken, so a ring
        after this returns is heard by the next wait, never lost between the two."""
        with anyio.move_on_after(longest):
            await self._rung.wait()
        rung = self._rung.is_set()
        if rung:
            self._rung = anyio.Event()
        return rung


class Doorbell:
    """Every destination's bell, by name: the daemon's one, shared by those who make
    rows due (the scorer, forget) and the destination actors who hear them. A bell
    outlives its actor, so one restarted or reloaded under the same name hears what
    was rung meanwhile."""

    def __init__(self) -> None:
        self._bells: dict[str, Bell] = {}

    def bell(self, destination: str) -> Bell:
        bell = self._bells.get(destination)
        if bell is None:
            bell = self._bells[destination] = Bell()
        return bell

    def ring(self, destinations: Iterable[str]) -> None:
        """On the event loop's thread (from a worker thread: anyio.from_thread.run_sync);
        after the commit that made rows of these destinations due."""
        for destination in destinations:
            self.bell(destination).ring()
