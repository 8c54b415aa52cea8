"""Segment's tracking API spec: parse a request body into log records and rejects.

Pure functions, no I/O, so the rules are testable on their own and any source that
speaks the spec (HTTP today, file backfill later) applies exactly the same ones.

Segment's clients treat a 400 as final and drop the whole batch, so a batch is never
refused for one bad message: each message is judged alone, the good ones are kept, and
the bad ones come back as `Rejected` with their index and reason.
"""

from __future__ import annotations

import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from actors.messages import EVENT_TYPES, Event
from storage.log import EventRecord, Rejected

MAX_MESSAGE_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
SINGLE_ENDPOINTS = frozenset(EVENT_TYPES)
BATCH_ENDPOINTS = frozenset({"batch", "import"})

_encode = msgspec.json.Encoder().encode
_EVENT_TYPES = frozenset(EVENT_TYPES)
_UNREADABLE = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
"""msgspec raises the last two, not DecodeError, for deep nesting and invalid UTF-8."""
_FLOAT_MAX = int(sys.float_info.max)
_FLOAT_DIGITS = len(str(_FLOAT_MAX))
_DIGITS = b"0123456789"
_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % _FLOAT_DIGITS)
"""Digits enough for an integer beyond a float's range (1.8e308 has 309): a message
with such a run is checked number by number (the run may be a string, or fractional)."""


class RequestError(Exception):
    """The request as a whole is unusable (bad JSON, wrong shape): answer 400."""


class _Inbound(msgspec.Struct, rename="camel"):
    """A message as clients send it: lenient where real clients differ (numeric ids)."""

    type: str | None = None
    message_id: str | int | None = None
    user_id: str | int | None = None
    anonymous_id: str | int | None = None
    previous_id: str | int | None = None
    group_id: str | int | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    traits: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    write_key: str | None = None


_decode_inbound = msgspec.json.Decoder(_Inbound).decode


class _Envelope(msgspec.Struct, rename="camel"):
    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    write_key: str | None = None


class _TypeOnly(msgspec.Struct):
    type: Any = None


class _KeyOnly(msgspec.Struct, rename="camel"):
    write_key: str | None = None


class _Defaults:
    """What every message of one request shares, worked out once: the request's
    receipt time in both forms, and a batch's own sentAt, context and integrations."""

    __slots__ = ("context", "integrations", "received", "received_at", "sent", "sent_at")

    def __init__(self, received_at: datetime, envelope: _Envelope | None) -> None:
        self.received_at = received_at
        self.received = iso(received_at)
        self.sent_at: datetime | None = None
        self.sent: str | None = None
        self.context = envelope.context if envelope else None
        self.integrations = envelope.integrations if envelope else None
        if envelope is not None and envelope.sent_at is not None:
            try:
                self.sent = iso(envelope.sent_at)
                self.sent_at = _utc(envelope.sent_at)
            except OverflowError:
                self.sent_at = envelope.sent_at  # each message using it is then refused


@dataclass
class ParsedRequest:
    events: list[EventRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_types: list[str] = field(default_factory=list)
    """The type of each rejected message ("unknown" if it had none)."""


def body_write_key(body: bytes) -> str | None:
    """The `writeKey` a body carries, for clients that do not send Basic auth."""
    try:
        return msgspec.json.decode(body, type=_KeyOnly).write_key
    except _UNREADABLE:
        return None


def parse(endpoint: str, body: bytes, source: str, received_at: datetime) -> ParsedRequest:
    """Turn one request body into records for the log and rejects for the quarantine."""
    parsed = ParsedRequest()
    if endpoint in BATCH_ENDPOINTS:
        try:
            envelope = msgspec.json.decode(body, type=_Envelope)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
            raise RequestError(f"body is not a batch: {_explain(exc)}") from None
        except _UNREADABLE as exc:
            raise RequestError(f"body is not valid JSON: {exc}") from None
        defaults = _Defaults(received_at, envelope)
        for index, raw in enumerate(envelope.batch):
            _judge(parsed, bytes(raw), index, None, defaults, source)
        return parsed
    if endpoint not in SINGLE_ENDPOINTS:
        raise RequestError(f"unknown endpoint /v1/{endpoint}")
    try:
        msgspec.json.decode(body, type=dict[str, Any])
    except msgspec.ValidationError as exc:
        raise RequestError(f"body is not a message: {_explain(exc)}") from None
    except _UNREADABLE as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    _judge(parsed, body, None, endpoint, _Defaults(received_at, None), source)
    return parsed


def _judge(
    parsed: ParsedRequest,
    raw: bytes,
    index: int | None,
    endpoint_type: str | None,
    defaults: _Defaults,
    source: str,
) -> None:
    try:
        event = _normalize(raw, endpoint_type, defaults, source)
    except _Invalid as exc:
        parsed.rejected.append(Rejected(index, str(exc), raw))
        parsed.rejected_types.append(_type_of(raw, endpoint_type))
        return
    kind = event.type
    parsed.events.append(EventRecord(event.message_id, kind, defaults.received, _encode(event)))


def _type_of(raw: bytes, endpoint_type: str | None) -> str:
    """A refused message's type, for per-type counts: "unknown" when it has none."""
    if endpoint_type is not None:
        return endpoint_type
    try:
        kind = msgspec.json.decode(raw, type=_TypeOnly).type
    except (*_UNREADABLE, msgspec.ValidationError):
        return "unknown"
    return kind if kind in EVENT_TYPES else "unknown"


class _Invalid(Exception):
    pass


def _normalize(raw: bytes, endpoint_type: str | None, defaults: _Defaults, source: str) -> Event:
    """Ingestion's hot path: written for speed where that costs little clarity (absent
    ids skip `_id`, a batch's sentAt is formatted once, Event is built positionally)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _Invalid(f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES} (32 KB)")
    try:
        message = _decode_inbound(raw)
    except msgspec.ValidationError as exc:
        raise _Invalid(_explain(exc)) from None
    except _UNREADABLE as exc:
        raise _Invalid(f"not valid JSON: {exc}") from None
    # Counting digits is a C loop (0.4 us for a typical message, the regex 1.6 us);
    # only a message with 309 of them can hold a run that long, and only then is it walked.
    if len(raw) - len(raw.translate(None, _DIGITS)) >= _FLOAT_DIGITS and _LONG_NUMBER.search(raw):
        _refuse_huge_numbers(message)

    kind = endpoint_type or message.type
    if kind not in _EVENT_TYPES:
        if kind is None:
            raise _Invalid(f"type: missing; expected one of {', '.join(EVENT_TYPES)}")
        raise _Invalid(f"type: {kind!r} is not one of {', '.join(EVENT_TYPES)}")

    user_id = None if message.user_id is None else _id(message.user_id)
    anonymous_id = None if message.anonymous_id is None else _id(message.anonymous_id)
    previous_id = None if message.previous_id is None else _id(message.previous_id)
    group_id = None if message.group_id is None else _id(message.group_id)
    if user_id is None and anonymous_id is None:
        raise _Invalid("userId or anonymousId is required")
    if kind == "track" and not message.event:
        raise _Invalid("event: a track call needs the event name")
    if kind == "group" and group_id is None:
        raise _Invalid("groupId: a group call needs the group id")
    if kind == "alias" and previous_id is None:
        raise _Invalid("previousId: an alias call needs the previous id")
    if kind == "alias" and user_id is None:
        raise _Invalid("userId: an alias call needs the new user id")

    try:
        if message.sent_at is None:
            sent_at, sent = defaults.sent_at, defaults.sent
            if sent_at is not None and sent is None:
                raise OverflowError  # the batch's sentAt, found out of range once
        else:
            sent_at, sent = message.sent_at, iso(message.sent_at)
        timestamp = message.timestamp
        if timestamp is None:
            corrected, original = defaults.received, None
        else:
            timestamp = _utc(timestamp)
            original = iso(timestamp)
            # Segment's rule: timestamp = receivedAt - (sentAt - originalTimestamp). A
            # device whose clock is an hour fast sends both timestamp and sentAt an hour
            # fast; their difference is the event's true age when the request left.
            corrected = (
                original
                if sent_at is None
                else iso(defaults.received_at - (_utc(sent_at) - timestamp))
            )
    except OverflowError:
        raise _Invalid("timestamp: out of range once in UTC and corrected with sentAt") from None
    context = message.context
    integrations = message.integrations
    # A batch's own context and integrations apply to every call in it.
    if defaults.context is not None:
        context = _merged(defaults.context, context)
    if defaults.integrations is not None:
        integrations = _merged(defaults.integrations, integrations)
    message_id = None if message.message_id is None else _id(message.message_id)

    # Positional, in Event's field order: cheaper than keywords on this hot path.
    return Event(
        kind,  # type: ignore[arg-type]  # checked against EVENT_TYPES above
        message_id or str(uuid.uuid4()),
        source,
        defaults.received,
        corrected,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        message.event,
        message.name,
        message.category,
        message.traits,
        message.properties,
        context,
        integrations,
        original,
        sent,
    )


def _refuse_huge_numbers(message: _Inbound) -> None:
    """JSON allows integers of any size, and msgspec reads them as Python ints, but
    no consumer can hold one beyond a float's range (a rule's range, an aggregate):
    refuse it here, with where it is, rather than store what cannot be scored."""
    stack: list[tuple[str, Any]] = [
        (name, getattr(message, name)) for name in ("traits", "properties", "context")
    ]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{path}.{key}", item) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        elif isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
            raise _Invalid(
                f"{path}: an integer of {_digits(value)} digits "
                "is beyond what leadsync can hold (a 64-bit float holds up to about 1.8e308)"
            )


def _digits(value: int) -> str:
    try:
        return str(len(str(abs(value))))
    except ValueError:  # past Python's limit for int to str (4,300 digits by default)
        return "thousands of"


def _merged(outer: dict[str, Any] | None, inner: dict[str, Any] | None) -> dict[str, Any] | None:
    if outer is None or inner is None:
        return inner if outer is None else dict(outer)
    return {**outer, **inner}


def _id(value: str | int) -> str | None:
    """Ids as strings; some clients send numbers. An empty id is no id."""
    if isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """UTC to the millisecond, "2026-01-02T03:04:05.123Z", as `isoformat` would write it.

    Ingestion formats three of these per event, and `isoformat` (about 3 us) was a fifth
    of the daemon's CPU under load; msgspec writes the same text in a tenth of the time,
    with six fraction digits (none when zero), which are cut to three here.
    """
    moment = _utc(moment)
    text = _encode(moment)
    if moment.microsecond:
        return text[1:24].decode() + "Z"
    return text[1:20].decode() + ".000Z"


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `object`, got `str` - at `$.traits`" as "traits: expected ...".

    The path is relative to the message, which is what a developer fixing their
    client needs to read.
    """
    text = str(exc)
    problem, sep, where = text.rpartition(" - at `$")
    if not sep:
        return text
    path = where.rstrip("`").lstrip(".")
    return f"{path}: {problem[:1].lower()}{problem[1:]}" if path else problem
