"""Whether a destination may make one more call: its rolling-window rate limit and its
daily cap, counted as calls are allowed.

Kept apart from the destination actor (actors/delivery/actor.py), which asks it
before it takes rows to send, so rows never wait in memory through a pause. The
day's count is the actor's status (`used_today`, shown in /status), read back from
the outbox's usage table at start, so a restart the same day makes no more calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from actors.delivery.kinds import RateLimit
from actors.delivery.limiter import WindowLimiter
from actors.delivery.status import DestinationStatus

DAY = 86_400
CAPPED_LOOK = 5.0
"""Seconds between looks at the clock while the daily cap is reached (the day may end,
or a test's clock move)."""


class Allowance:
    def __init__(
        self, rate: RateLimit, status: DestinationStatus, clock: Callable[[], float]
    ) -> None:
        self.limiter = WindowLimiter(rate.requests, rate.per)
        """Released by the caller when its call ends; paused on a Retry-After."""
        self._daily = rate.daily
        self._status = status
        self._clock = clock
        self._day = int(clock() // DAY)

    async def wait(self) -> float:
        """Wait for the daily cap and the rate limit to allow one more call, and count
        it; returns the seconds waited."""
        started = time.monotonic()
        while True:
            while self.capped():
                self._status.state = "daily cap reached"
                now = self._clock()
                await anyio.sleep(min(CAPPED_LOOK, (now // DAY + 1) * DAY - now))
            await self.limiter.acquire()
            if not self.capped():
                break
            self.limiter.cancel()  # another task made the day's last call meanwhile
        self._status.used_today = self.used_today() + 1
        return time.monotonic() - started

    def now(self) -> bool:
        """One more call now if the cap and the rate limit allow it, without waiting
        (a batch being split must not hold up a stop); counted if so."""
        if self.capped() or not self.limiter.try_acquire():
            return False
        self._status.used_today = self.used_today() + 1
        return True

    def give_back(self) -> None:
        """A call allowed by `wait` and not made."""
        self.limiter.cancel()
        self._status.used_today = max(0, self.used_today() - 1)

    def capped(self) -> bool:
        """The day's calls are used up."""
        return self._daily is not None and self.used_today() >= self._daily

    def used_today(self) -> int:
        day = int(self._clock() // DAY)
        if day != self._day:
            self._day, self._status.used_today = day, 0
        return self._status.used_today
