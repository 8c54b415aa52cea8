"""Whether a destination may make one more call: its rolling-window rate limit, its
daily cap, counted as calls are allowed, and the pause of a destination that is down.

Kept apart from the destination actor (actors/delivery/actor.py), which asks it
before it takes rows to send, so rows never wait in memory through a pause. The
day's count is kept here, shown in the actor's status (`used_today`), and read back
from the outbox's usage table at start, so a restart the same day makes no more calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from actors.delivery.kinds import RateLimit, RetryPolicy
from actors.delivery.limiter import WindowLimiter

DAY = 86_400
CAPPED_LOOK = 5.0
"""Seconds between looks at the clock while the daily cap is reached (the day may end,
or a test's clock move)."""
DOWN_PAUSE_MAX = 300.0
"""A destination that failed a whole call is left alone for the first retry delay,
doubling while it keeps failing up to this (or the retry policy's max_delay), so an
outage costs a probe now and then, not a storm of calls."""


class Allowance:
    def __init__(
        self,
        rate: RateLimit,
        retry: RetryPolicy,
        clock: Callable[[], float],
        show: Callable[..., None],
    ) -> None:
        """`show`: the actor's, which puts fields in its status (`used_today`, and the
        state while the daily cap holds calls back)."""
        self.limiter = WindowLimiter(rate.requests, rate.per)
        """Released by the caller when its call ends; paused on a Retry-After."""
        self._daily = rate.daily
        self._show = show
        self._clock = clock
        self._day = int(clock() // DAY)
        self._used = 0
        self._retry = retry
        self._down_pause = 0.0

    async def wait(self) -> float:
        """Wait for the daily cap and the rate limit to allow one more call, and count
        it; returns the seconds waited."""
        started = time.monotonic()
        while True:
            while self.capped():
                self._show(state="daily cap reached")
                now = self._clock()
                await anyio.sleep(min(CAPPED_LOOK, (now // DAY + 1) * DAY - now))
            await self.limiter.acquire()
            if not self.capped():
                break
            self.limiter.cancel()  # another task made the day's last call meanwhile
        self._count(self.used_today() + 1)
        return time.monotonic() - started

    def resume(self, used: int) -> None:
        """The day's calls made before this start (the outbox's usage table)."""
        self._count(used)

    def now(self) -> bool:
        """One more call now if the cap and the rate limit allow it, without waiting
        (a batch being split must not hold up a stop); counted if so."""
        if self.capped() or not self.limiter.try_acquire():
            return False
        self._count(self.used_today() + 1)
        return True

    def give_back(self) -> None:
        """A call allowed by `wait` and not made."""
        self.limiter.cancel()
        self._count(max(0, self.used_today() - 1))

    def capped(self) -> bool:
        """The day's calls are used up."""
        return self._daily is not None and self.used_today() >= self._daily

    def used_today(self) -> int:
        day = int(self._clock() // DAY)
        if day != self._day:
            self._day = day
            self._count(0)
        return self._used

    def _count(self, used: int) -> None:
        self._used = used
        self._show(used_today=used)

    def down(self) -> float:
        """The next pause of a destination that is down (a whole call failed, or the
        sender cannot open): the first retry delay, doubling while it stays down, at
        most DOWN_PAUSE_MAX (or max_delay). The caller pauses for it."""
        longest = min(DOWN_PAUSE_MAX, self._retry.max_delay)
        self._down_pause = min(longest, max(self._retry.first_delay, self._down_pause * 2))
        return self._down_pause

    def up(self) -> None:
        """A call went through (or the sender opened): the next outage starts afresh."""
        self._down_pause = 0.0
