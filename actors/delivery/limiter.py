"""A destination's rate limit: at most N calls in any window of T seconds.

Not a token bucket: a bucket that may burst to N and refills at N/T lets almost 2N
through in one window, and the APIs we call (HubSpot, Salesforce) count calls in
rolling windows and answer 429 past N. Here a call holds its slot from when it
starts until T after its response, so however the network delays calls, the server
never sees more than N within any T; the cost is that the achieved rate is
N / (T + latency).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import anyio


class WindowLimiter:
    def __init__(
        self, requests: int, per: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.requests = requests
        self.per = per
        self._clock = clock
        self._in_flight = 0
        self._finished: deque[float] = deque()
        self._paused_until = 0.0
        self._changed = anyio.Event()

    async def acquire(self) -> None:
        """Wait for a slot; the caller must `release()` when its call has ended."""
        while True:
            now = self._clock()
            while self._finished and self._finished[0] <= now - self.per:
                self._finished.popleft()
            wait = self._paused_until - now
            if wait <= 0:
                if self._in_flight + len(self._finished) < self.requests:
                    self._in_flight += 1
                    return
                wait = self._finished[0] + self.per - now if self._finished else math.inf
            changed = self._changed
            with anyio.move_on_after(wait):
                await changed.wait()

    def try_acquire(self) -> bool:
        """A slot now, or False (no waiting)."""
        now = self._clock()
        while self._finished and self._finished[0] <= now - self.per:
            self._finished.popleft()
        if self._paused_until > now or self._in_flight + len(self._finished) >= self.requests:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        self._in_flight -= 1
        self._finished.append(self._clock())
        self._wake()

    def cancel(self) -> None:
        """Give back a slot taken by `acquire` for a call that was not made."""
        self._in_flight -= 1
        self._wake()

    def pause(self, seconds: float) -> None:
        """No call starts for `seconds` (a Retry-After, or a destination that is down)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._wake()

    def paused_for(self) -> float:
        """Seconds until calls may start again; 0 if they may now."""
        return max(0.0, self._paused_until - self._clock())

    def rate(self) -> float:
        """Calls per second over the last window."""
        now = self._clock()
        recent = sum(1 for t in self._finished if t > now - self.per)
        return (recent + self._in_flight) / self.per

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
