"""The webhook destination's sender (its settings: actors/destinations/webhook/__init__.py)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from actors.delivery import payload as payloads
from actors.delivery.http import HttpSender
from actors.delivery.payload import iso
from actors.delivery.sender import (
    RecordError,
    Unavailable,
    delivery_id,
    raise_for_status,
)
from actors.destinations.webhook import WebhookDestination
from storage.outbox import OutboxRow

TIMESTAMP_HEADER = "X-Leadsync-Timestamp"
SIGNATURE_HEADER = "X-Leadsync-Signature"
TOLERANCE = 300.0
"""Seconds a receiver accepts between the signed timestamp and its own clock."""
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


class WebhookSender(HttpSender):
    max_batch = 100
    max_bytes = 1_000_000

    def __init__(self, config: WebhookDestination, clock: Callable[[], float] = time.time):
        super().__init__(config.timeout, clock)
        self._config = config

    def _body(self, rows: Sequence[OutboxRow], now: float) -> bytes:
        profiles = [
            {
                "id": delivery_id(row),
                "staged_at": iso(row.staged_at),
                **msgspec.to_builtins(payloads.decode(row.payload)),
            }
            for row in rows
        ]
        return _encode({"sent_at": iso(now), "profiles": profiles})

    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        now = self._clock()
        timestamp = int(now)
        body = self._body(rows, now)
        headers = {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._config.secret, timestamp, body),
        }
        answer = await self.post(self._config.url, body, headers)
        return self._judge(answer.status, answer.retry_after, answer.text, len(rows))

    def _judge(
        self, status: int, retry_after: str | None, text: str, count: int
    ) -> list[RecordError | None]:
        raise_for_status(status, retry_after, text, self._clock())
        return self._rejections(text, count)

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
