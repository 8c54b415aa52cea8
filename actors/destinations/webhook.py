"""The webhook destination: signed JSON POSTs to a URL the operator owns.

One POST per call:

    POST <url>
    Content-Type: application/json
    User-Agent: leadsync/<version>
    X-Leadsync-Timestamp: 1700000000
    X-Leadsync-Signature: v1=<hex HMAC-SHA256(secret, b"1700000000." + body)>

    {"sent_at": "2023-11-14T22:13:20.000Z",
     "profiles": [{"id": "<delivery id>", "staged_at": "...", "profile": "...",
                   "traits": {...}, "user_id": ..., "email": ..., "anonymous_id": ...}]}

The timestamp is signed with the body (as Stripe does), so a captured request cannot be
replayed later: `verify` is the receiver's check, and refuses a timestamp more than five
minutes away from its own clock. A delivery id names one payload of one profile, so a
receiver can drop a repeat: a send whose answer was lost is sent again.

The receiver answers 2xx when it took the batch. To refuse some records and keep the
rest, it answers 2xx with `{"rejected": [{"index": i, "error": "...", "retryable": b}]}`
(index into "profiles"; retryable false unless said): those records are retried or
dead-lettered one by one. Any other answer concerns the whole call (see `_judge`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec

from actors.delivery import payload as payloads
from actors.delivery.sender import RecordError, Refused, Sender, Unavailable
from daemon import __version__
from daemon.config import WebhookDestination
from storage.base import OutboxRow

TIMESTAMP_HEADER = "X-Leadsync-Timestamp"
SIGNATURE_HEADER = "X-Leadsync-Signature"
TOLERANCE = 300.0
"""Seconds a receiver accepts between the signed timestamp and its own clock."""
REASON_CHARS = 200
"""Of a receiver's answer kept in a reason: enough to say what is wrong, and a reason
ends up in logs and in the dead-letter table."""

_REFUSED = frozenset({400, 413, 422})
"""Statuses that say the request itself is invalid, so some record in it is."""
_encode = msgspec.json.Encoder().encode


class _Rejection(msgspec.Struct, frozen=True):
    index: int
    error: str = "rejected by the receiver"
    retryable: bool = False


class _Answer(msgspec.Struct, frozen=True):
    rejected: list[_Rejection] = []


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Leadsync-Signature value for a body sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str | int,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = TOLERANCE,
) -> bool:
    """The receiver's check: True if `signature` (X-Leadsync-Signature) signs `body`
    (the raw request body, before any JSON parsing) at `timestamp`
    (X-Leadsync-Timestamp), and `timestamp` is within `tolerance` seconds of `now`.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any.
    return hmac.compare_digest(sign(secret, sent, body).encode(), signature.encode())


def delivery_id(row: OutboxRow) -> str:
    """The same for every send of one payload of one profile, and different for the
    next payload, so a receiver drops repeats without dropping updates."""
    return f"{row.uid}:{row.hash & 0xFFFFFFFFFFFFFFFF:016x}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


class WebhookSender(Sender):
    max_batch = 100
    max_bytes = 1_000_000

    def __init__(self, config: WebhookDestination, clock: Callable[[], float] = time.time):
        self._config = config
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def open(self, state: str | None) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            headers={"User-Agent": f"leadsync/{__version__}"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _body(self, rows: Sequence[OutboxRow], now: float) -> bytes:
        profiles = [
            {
                "id": delivery_id(row),
                "staged_at": _iso(row.staged_at),
                **msgspec.to_builtins(payloads.decode(row.payload)),
            }
            for row in rows
        ]
        return _encode({"sent_at": _iso(now), "profiles": profiles})

    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        if self._session is None:
            raise RuntimeError("WebhookSender.send before open")
        now = self._clock()
        timestamp = int(now)
        body = self._body(rows, now)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._config.secret, timestamp, body),
        }
        try:
            # No redirects: aiohttp would follow a 301/302 as a GET without the body,
            # and the 200 of that GET would read as delivered.
            async with self._session.post(
                self._config.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                text = (await response.read()).decode("utf-8", "replace")
        except TimeoutError:
            raise Unavailable(f"no answer within {self._config.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # A response error's str holds the url, whose path may carry a token.
            said = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
            raise Unavailable(f"request failed: {type(exc).__name__}: {said}") from None
        return self._judge(response.status, response.headers.get("Retry-After"), text, len(rows))

    def _judge(
        self, status: int, retry_after: str | None, text: str, count: int
    ) -> list[RecordError | None]:
        """What an answer means for the records. Only 400/413/422 blame the records;
        401, 403, 404 and the like are the configuration's fault, so the records are
        retried (and dead-lettered with that reason if it is never fixed)."""
        if 200 <= status < 300:
            return self._rejections(text, count)
        said = f"HTTP {status}: {_excerpt(text)}" if text.strip() else f"HTTP {status}"
        if status == 429:
            raise Unavailable(said, self._retry_after(retry_after), throttled=True)
        if status == 408 or status >= 500:
            raise Unavailable(said, self._retry_after(retry_after))
        if status in _REFUSED:
            raise Refused(said)
        raise Unavailable(f"{said} (check the destination's url and secret)")

    def _rejections(self, text: str, count: int) -> list[RecordError | None]:
        """A rejected list the receiver sent but we cannot read is Unavailable: it
        meant to refuse something and we cannot tell what, so calling the batch
        delivered might lose records, while sending it again is safe (delivery ids)."""
        outcome: list[RecordError | None] = [None] * count
        try:
            answer: Any = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return outcome  # "OK", or an empty body: everything was taken
        if not isinstance(answer, dict) or "rejected" not in answer:
            return outcome
        try:
            rejected = msgspec.convert(answer, _Answer).rejected
        except msgspec.ValidationError as exc:
            raise Unavailable(f"2xx answer with an unreadable rejected list: {exc}") from None
        for rejection in rejected:
            if not 0 <= rejection.index < count:
                raise Unavailable(
                    f"2xx answer rejects index {rejection.index} of a {count}-record batch"
                )
            outcome[rejection.index] = RecordError(rejection.error, rejection.retryable)
        return outcome

    def _retry_after(self, value: str | None) -> float | None:
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
            seconds = when.timestamp() - self._clock()
        return max(0.0, seconds) if math.isfinite(seconds) else None
