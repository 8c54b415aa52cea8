"""The segment destination's sender (its settings: actors/destinations/segment/__init__.py)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from actors import __version__
from actors.delivery.http import HttpSender
from actors.delivery.payload import decode, iso
from actors.delivery.sender import (
    REFUSED,
    RecordError,
    delivery_id,
    raise_for_status,
)
from actors.destinations.segment import SegmentDestination
from storage.outbox import OutboxRow

MAX_MESSAGE = 32 * 1024
"""Segment's limit per message; a larger one can never be accepted."""

_encode = msgspec.json.Encoder().encode


class _Rejection(msgspec.Struct):
    index: int | None = None
    message: str = ""


class _Answer(msgspec.Struct):
    rejected: list[_Rejection] = []


_answer = msgspec.json.Decoder(_Answer).decode


class SegmentSender(HttpSender):
    max_batch = 100
    max_bytes = 450_000
    """Under Segment's 500 KB per request, with room for the identify envelope."""

    def __init__(self, config: SegmentDestination, clock: Callable[[], float] = time.time):
        # The write key as the Basic auth user name, as Segment's own clients send it.
        key = base64.b64encode(f"{config.write_key}:".encode()).decode()
        super().__init__(config.timeout, clock, {"Authorization": f"Basic {key}"})
        self._url = config.host.rstrip("/") + "/v1/batch"

    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        outcome: list[RecordError | None] = [None] * len(rows)
        batch: list[bytes] = []
        sent: list[int] = []
        for index, row in enumerate(rows):
            message = _identify(row)
            if isinstance(message, RecordError):
                outcome[index] = message
            else:
                batch.append(message)
                sent.append(index)
        if not batch:
            return outcome
        now = self._clock()
        body = b'{"batch":[%b],"sentAt":"%b"}' % (b",".join(batch), iso(now).encode())
        status, retry_after, text = await self.post(self._url, body, {})
        rejected = _rejected(text)
        # leadsync answers 400 when it refused every message, naming each.
        if not (status in REFUSED and rejected):
            raise_for_status(status, retry_after, text, now)
        for rejection in rejected:
            if rejection.index is not None and 0 <= rejection.index < len(sent):
                outcome[sent[rejection.index]] = RecordError(
                    f"refused: {rejection.message}", retryable=False
                )
        return outcome


def _identify(row: OutboxRow) -> bytes | RecordError:
    payload = decode(row.payload)
    if payload.user_id is None and payload.anonymous_id is None:
        return RecordError(
            "the profile has no user id or anonymous id to identify it by", retryable=False
        )
    message: dict[str, Any] = {
        "type": "identify",
        "messageId": f"leadsync-{delivery_id(row)}",
        "timestamp": iso(row.staged_at),
        "traits": payload.traits,
        "context": {"library": {"name": "leadsync", "version": __version__}},
    }
    if payload.user_id is not None:
        message["userId"] = payload.user_id
    if payload.anonymous_id is not None:
        message["anonymousId"] = payload.anonymous_id
    encoded = _encode(message)
    if len(encoded) > MAX_MESSAGE:
        return RecordError(
            f"identify of {len(encoded)} bytes is over Segment's 32 KB", retryable=False
        )
    return encoded


def _rejected(text: str) -> list[_Rejection]:
    try:
        return _answer(text).rejected
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
