"""The `segment` destination: identify calls carrying the mk_* traits, through
Segment's HTTP tracking API (`POST /v1/batch`), or any API that speaks it (another
leadsync included).

Each identify's messageId is derived from the profile and the payload's hash, so a
send repeated after a lost acknowledgement is dropped by the receiver's
deduplication (Segment's, or leadsync's own) instead of being counted twice.
Segment answers 200 for everything it can parse; leadsync answers 200 with the
indexes of the messages it refused, or 400 with them when it refused them all: both
are read per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec

from actors.delivery.payload import decode
from actors.delivery.sender import RecordError, Refused, Sender, Unavailable
from daemon import __version__
from daemon.config import SegmentDestination
from storage.base import OutboxRow

MAX_MESSAGE = 32 * 1024
"""Segment's limit per message; a larger one can never be accepted."""

_encode = msgspec.json.Encoder().encode


class _Rejection(msgspec.Struct):
    index: int | None = None
    message: str = ""


class _Answer(msgspec.Struct):
    rejected: list[_Rejection] = []
    message: str = ""


_answer = msgspec.json.Decoder(_Answer).decode


class SegmentSender(Sender):
    max_batch = 100
    max_bytes = 450_000
    """Under Segment's 500 KB per request, with room for the identify envelope."""

    def __init__(self, config: SegmentDestination) -> None:
        self._config = config
        self._url = config.host.rstrip("/") + "/v1/batch"
        self._session: aiohttp.ClientSession | None = None

    async def open(self, state: str | None) -> None:
        self._session = aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(self._config.write_key, ""),
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            headers={"User-Agent": f"leadsync/{__version__}"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        assert self._session is not None
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
        body = b'{"batch":[' + b",".join(batch) + b'],"sentAt":"' + _now().encode() + b'"}'
        try:
            async with self._session.post(
                self._url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                text = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise Unavailable(f"no answer within {self._config.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"cannot reach {self._url}: {exc}") from None
        if status == 429:
            raise Unavailable("429 Too Many Requests", _seconds(retry_after), throttled=True)
        if status >= 500 or status == 408:
            raise Unavailable(f"{status} from {self._url}: {_excerpt(text)}")
        answer = _parse(text)
        if status in (400, 413, 422) and not answer.rejected:
            raise Refused(f"{status}: {_excerpt(text)}")
        if status >= 400 and status not in (400, 413, 422):
            raise Unavailable(
                f"{status} from {self._url}: {_excerpt(text)} (check the write key and host)"
            )
        for rejection in answer.rejected:
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
        "messageId": f"leadsync-{row.uid}-{row.hash & 0xFFFFFFFFFFFFFFFF:016x}",
        "timestamp": datetime.fromtimestamp(row.staged_at, UTC).isoformat(),
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


def _parse(text: bytes) -> _Answer:
    try:
        return _answer(text)
    except msgspec.DecodeError:
        return _Answer()


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _excerpt(text: bytes) -> str:
    return text[:200].decode("utf-8", "replace").strip()


def _now() -> str:
    return datetime.now(UTC).isoformat()
