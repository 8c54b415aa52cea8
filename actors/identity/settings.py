"""[identity]: how identifiers merge into profiles (actors/identity/)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from actors.settings import Positive

BUILTIN_ID_KINDS = ("user_id", "email", "anonymous_id")
DEFAULT_ID_LIMITS = {"user_id": 1, "email": 5, "anonymous_id": 100}
"""Per profile. One user id is the rule that keeps two people sharing a device apart;
the others stop one junk value (a shared kiosk, a QA script) from fusing thousands."""

IdKind = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
IdPath = Annotated[str, msgspec.Meta(pattern=r"^(traits|context|properties)(\.[A-Za-z0-9_$-]+)+$")]


class ExternalId(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An identifier some source carries besides Segment's own (a CRM id, a device id)."""

    kind: IdKind
    path: IdPath
    """Dotted path in the event, starting at traits, context or properties."""
    sources: list[str] = []
    """Only events from these sources; empty means every source."""
    limit: Positive | None = None
    """At most this many per profile; none means no cap."""


class IdentitySection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How identifiers merge into profiles. Changing a rule applies to new events;
    `leadsync identity rebuild` applies it to the whole log."""

    limits: dict[str, Positive] = {}
    """Per-kind caps, over DEFAULT_ID_LIMITS (user_id 1, email 5, anonymous_id 100)."""
    blocked_values: list[str] = msgspec.field(
        default_factory=lambda: ["", "null", "undefined", "0", "anonymous", "none", "nan"]
    )
    """Junk ids clients send when they have none; compared case-insensitively."""
    blocked_emails: list[str] = msgspec.field(
        default_factory=lambda: ["test@test.com", "test@example.com", "email@example.com"]
    )
    external_ids: list[ExternalId] = []
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 10_000
    """Events applied per transaction, at most: larger is faster (a page changed by
    several events is written once), smaller holds the main file's write lock less."""

    def limit(self, kind: str) -> int | None:
        if kind in self.limits:
            return self.limits[kind]
        for external in self.external_ids:
            if external.kind == kind:
                return external.limit
        return DEFAULT_ID_LIMITS.get(kind)
