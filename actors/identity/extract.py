"""Which identifiers an event carries: normalised, junk dropped, in a fixed order.

The order matters twice. The first identifier is the event's *home*: its traits and
activity are recorded there, so when a conflicting link is dropped, an event sent
with a user id stays with that user. And every other identifier is linked to the
home, so the links an event makes do not depend on how its JSON was written.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from actors.identity.settings import IdentitySection
from actors.messages import Event


class Identifier(NamedTuple):
    kind: str
    value: str


USER_ID, EMAIL, ANONYMOUS_ID = "user_id", "email", "anonymous_id"


def normalize_email(value: str) -> str | None:
    """Mail systems treat addresses case-insensitively in practice; people type spaces."""
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        return None
    return email


class Extractor:
    def __init__(self, rules: IdentitySection) -> None:
        self._blocked = {v.strip().casefold() for v in rules.blocked_values}
        self._blocked_emails = {e for e in map(normalize_email, rules.blocked_emails) if e}
        self._external = [
            (x.kind, x.path.split("."), frozenset(x.sources)) for x in rules.external_ids
        ]
        kinds = [USER_ID, EMAIL, *(x.kind for x in rules.external_ids), ANONYMOUS_ID]
        self.priority = {kind: rank for rank, kind in enumerate(kinds)}
        self.blocked = 0
        """Identifiers dropped as junk since start, for /metrics."""

    def identifiers(self, event: Event) -> list[Identifier]:
        # This runs for every event: the None checks here spare most events a call.
        found: list[Identifier] = []
        if event.user_id is not None:
            self._add(found, USER_ID, event.user_id)
        if event.anonymous_id is not None:
            self._add(found, ANONYMOUS_ID, event.anonymous_id)
        # Segment's alias joins an earlier id to the user id; the earlier id is, in
        # practice, the anonymous id the visitor had before signing up.
        if event.previous_id is not None:
            self._add(found, ANONYMOUS_ID, event.previous_id)
        # Only an identify's traits describe the person (a group call's describe the
        # account); any call may carry the person's traits in context.traits.
        own_traits = event.traits if event.type == "identify" else None
        context = event.context
        for traits in (own_traits, context.get("traits") if context else None):
            if isinstance(traits, dict) and isinstance(email := traits.get("email"), str):
                normalized = normalize_email(email)
                if normalized is None or normalized in self._blocked_emails:
                    self.blocked += 1
                else:
                    self._add(found, EMAIL, normalized)
        if self._external:
            self._add_external(found, event, own_traits)
        if len(found) > 1:
            found.sort(key=self._order)
        return found

    def _order(self, identifier: Identifier) -> tuple[int, str]:
        return self.priority[identifier.kind], identifier.value

    def _add_external(
        self, found: list[Identifier], event: Event, own_traits: dict[str, Any] | None
    ) -> None:
        roots = {"traits": own_traits, "context": event.context, "properties": event.properties}
        for kind, path, sources in self._external:
            if sources and event.source not in sources:
                continue
            value: Any = roots.get(path[0])
            for step in path[1:]:
                value = value.get(step) if isinstance(value, dict) else None
            if isinstance(value, str | int) and not isinstance(value, bool):
                self._add(found, kind, str(value))

    def _add(self, found: list[Identifier], kind: str, value: str) -> None:
        value = value.strip()
        if value.casefold() in self._blocked:
            self.blocked += 1
            return
        identifier = Identifier(kind, value)
        if identifier not in found:
            found.append(identifier)
