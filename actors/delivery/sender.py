"""What one kind of destination must do: send a batch of payloads in one call, and say
what became of each. Everything else (fetching, batching, rate limits, retries,
backoff, dead letters, figures) is actors/delivery/actor.py, written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import msgspec

from storage.base import OutboxRow


class RecordError(msgspec.Struct, frozen=True):
    """One record of a call failed; the others did not."""

    reason: str
    retryable: bool
    """False: sending it again cannot succeed (invalid data): dead-lettered at once."""


class Unavailable(Exception):
    """The call as a whole failed in a way that may pass (5xx, timeout, dropped
    connection, 429): every record is retried later, and the destination pauses."""

    def __init__(self, reason: str, retry_after: float | None = None, throttled: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        """Seconds the API asked us to wait (Retry-After), if it said."""
        self.throttled = throttled
        """429: the API is rate limiting us. Not the records' fault, so no attempt is
        counted against them."""


class Refused(Exception):
    """The call as a whole was refused as invalid (a 400 that names no record): some
    record in it is bad. The actor splits the batch to find which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Sender(ABC):
    """One per destination actor instance; `send` may be called by several of the
    actor's tasks at once (up to the destination's `concurrency`), unless `serial`."""

    max_batch: int = 100
    """Records per call: the API's maximum (the config may ask for fewer)."""
    max_bytes: int | None = None
    """Payload bytes per call, if the API limits the request size."""
    serial: bool = False
    """One call at a time, whatever the config says (a file has one end)."""

    async def open(self, state: str | None) -> None:
        """Before the first send; `state` is what `state()` last returned in a
        settled round (kept in the database, in the same transaction as the outcome)."""
        return

    @abstractmethod
    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        """Deliver `rows` in one call. One entry per row, in order: None if delivered.
        Raises Unavailable or Refused when the call as a whole failed."""

    async def tick(self) -> None:
        """Called every few seconds, sends or not (a file rotates when its time is up
        even if nothing more comes)."""
        return

    def state(self) -> str | None:
        """What must be kept with the outcome of the sends so far (a file's length,
        say), or None."""
        return None

    async def close(self) -> None:
        return
