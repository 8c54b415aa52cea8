"""Identifiers as forget and the suppression filter read them: KIND:VALUE given by an
operator, and those a message carries, read leniently when the strict decoder refuses
it."""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from actors.identity.extract import EMAIL, Extractor, normalize_email
from actors.identity.settings import BUILTIN_ID_KINDS, IdentitySection
from actors.messages import Event, EventType

Identifier = tuple[str, str]


class _Loose(msgspec.Struct, rename="camel"):
    """A message as a client may have sent it, every field taken as it comes."""

    type: Any = None
    user_id: Any = None
    anonymous_id: Any = None
    previous_id: Any = None
    traits: Any = None
    properties: Any = None
    context: Any = None
    batch: Any = None


_decode_loose = msgspec.json.Decoder(_Loose).decode
_AS_TYPE: dict[str, EventType] = {kind: kind for kind in get_args(EventType)}


def loose_identifiers(extractor: Extractor, body: bytes, source: str) -> list[Identifier]:
    """The identifiers in a body the strict decoder refuses (a message rejected at the
    door, a held event): read leniently, ids as strings (clients send numbers), a
    batch's messages each, an email in traits whatever the call. Nothing from a body
    that is not JSON at all."""
    try:
        outer = _decode_loose(body)
        messages = [outer]
        if isinstance(outer.batch, list):
            messages += [msgspec.convert(m, _Loose) for m in outer.batch if isinstance(m, dict)]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return []
    found: list[Identifier] = []
    for loose in messages:
        # Any JSON at all may stand for the type here: a list or an object must not
        # be looked up in a set. A group call's traits are the account's, not the
        # person's: read as an identify's, they would name someone else's email.
        kind = _AS_TYPE.get(loose.type, "identify") if isinstance(loose.type, str) else "identify"
        event = Event(
            type=kind,
            message_id="",
            source=source,
            received_at="",
            timestamp="",
            user_id=_loose_id(loose.user_id),
            anonymous_id=_loose_id(loose.anonymous_id),
            previous_id=_loose_id(loose.previous_id),
            traits=loose.traits if isinstance(loose.traits, dict) else None,
            properties=loose.properties if isinstance(loose.properties, dict) else None,
            context=loose.context if isinstance(loose.context, dict) else None,
        )
        found += [(i.kind, i.value) for i in extractor.identifiers(event)]
    return found


def _loose_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


class BadIdentifier(ValueError):
    """Not KIND:VALUE with a kind this configuration knows."""


def parse_identifier(text: str, rules: IdentitySection) -> Identifier:
    """KIND:VALUE as the merger stores it (emails normalised)."""
    kinds = [*BUILTIN_ID_KINDS, *(x.kind for x in rules.external_ids)]
    kind, colon, value = text.partition(":")
    value = value.strip()
    if not colon or kind not in kinds or not value:
        raise BadIdentifier(
            f"expected KIND:VALUE with KIND one of {', '.join(kinds)}, got {text!r}"
        )
    if kind == EMAIL:
        normalized = normalize_email(value)
        if normalized is None:
            raise BadIdentifier(f"{value!r} is not an email address")
        value = normalized
    return kind, value
