"""What a destination receives for one profile, and the hash only-on-change compares.

The payload holds nothing that changes without the profile changing (no send time, no
score time), so rescoring a profile to the same scores stages nothing.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from actors import tracking_api


class Payload(msgspec.Struct, omit_defaults=True, frozen=True):
    profile: str
    """The leadsync profile id."""
    traits: dict[str, Any]
    """The mk_* scores, under the destination's names for them."""
    user_id: str | None = None
    email: str | None = None
    anonymous_id: str | None = None
    deleted: bool = False
    """A deletion request (`leadsync forget`): the profile is gone; traits are empty."""


_encode = msgspec.json.Encoder(order="deterministic").encode
decode = msgspec.json.Decoder(Payload).decode


def encode(payload: Payload) -> tuple[bytes, int]:
    """The payload as stored, and its hash: 64 bits as a signed SQLite integer, never
    0 (which marks a filtered-out profile)."""
    body = _encode(payload)
    digest = int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big", signed=True)
    return body, digest or 1


def iso(epoch: float) -> str:
    """A payload's times as destinations receive them: "2026-11-23T15:45:01.123Z"."""
    return tracking_api.iso(datetime.fromtimestamp(epoch, UTC))
