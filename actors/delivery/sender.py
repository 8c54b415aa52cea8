"""What one kind of destination must do: send a batch of payloads in one call, and say
what became of each. Everything else (fetching, batching, rate limits, retries,
backoff, dead letters, figures) is actors/delivery/actor.py, written once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

import msgspec

from storage.outbox import OutboxRow

REASON_CHARS = 200
"""Of an API's answer kept in a reason: enough to say what is wrong, and a reason ends
up in logs and in the dead-letter table."""
REFUSED = frozenset({400, 413, 422})
"""Statuses that say the request itself is invalid, so some record in it is."""


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

    async def finish(self) -> None:
        """A clean stop: every send's outcome is recorded and none follows until the
        next `open` (a file is published under its final name rather than left a part)."""
        return

    def writing(self) -> str | None:
        """What it writes to now, if that is worth showing (a file's path)."""
        return None

    async def close(self) -> None:
        return


def delivery_id(row: OutboxRow) -> str:
    """The same for every send of one payload of one profile, and different for the
    next payload, so a receiver drops repeats without dropping updates."""
    return f"{row.uid}:{row.hash & 0xFFFFFFFFFFFFFFFF:016x}"


def raise_for_status(status: int, retry_after: str | None, text: str, now: float) -> None:
    """What a non-2xx answer means for the call as a whole. Only 400/413/422 blame the
    records; 401, 403, 404 and the like are the configuration's fault, so the records
    are retried (and dead-lettered with that reason if it is never fixed)."""
    if 200 <= status < 300:
        return
    said = f"HTTP {status}: {excerpt(text)}" if text.strip() else f"HTTP {status}"
    if status == 429:
        raise Unavailable(said, retry_after_seconds(retry_after, now), throttled=True)
    if status == 408 or status >= 500:
        raise Unavailable(said, retry_after_seconds(retry_after, now))
    if status in REFUSED:
        raise Refused(said)
    raise Unavailable(f"{said} (check the destination's address and credentials)")


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"
