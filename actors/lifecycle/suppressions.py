"""The daemon's set of suppressed identifier hashes: the filter at ingestion that drops
a forgotten person's later events."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import msgspec

from actors.identity.extract import ANONYMOUS_ID, Extractor
from actors.identity.settings import IdentitySection
from actors.lifecycle.identifiers import Identifier, loose_identifiers
from actors.messages import Event
from storage.backend import Backend
from storage.lifecycle import identifier_hash
from storage.log import AppendRequest

_decode_event = msgspec.json.Decoder(Event).decode


class Suppressions:
    """The daemon's set of suppressed identifier hashes, and the filter at ingestion.

    Shared by the log writer (reads it under `lock`) and forget/unforget (change it
    under `lock`); empty, the filter costs one test a group commit."""

    def __init__(self, salt: bytes, hashes: set[bytes], rules: IdentitySection) -> None:
        self.salt = salt
        self.hashes = hashes
        self.lock = anyio.Semaphore(1)
        self._extractor = Extractor(rules)

    def hash(self, identifier: Identifier) -> bytes:
        return identifier_hash(self.salt, *identifier)

    def add(self, hashes: list[bytes]) -> list[bytes]:
        """Suppress these (under `lock`); the ones not suppressed already."""
        new = [h for h in dict.fromkeys(hashes) if h not in self.hashes]
        self.hashes.update(new)
        return new

    def screen(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendRequest], list[int]]:
        """The requests without the events of suppressed people, and how many each lost.
        Their rejected messages go too: the quarantine would keep what they said (the
        client is answered about them all the same)."""
        if not self.hashes:
            return list(requests), [0] * len(requests)
        kept: list[AppendRequest] = []
        dropped: list[int] = []
        for request in requests:
            source = request.source
            events = [e for e in request.events if not self._suppressed(e.body, source)]
            rejected = [r for r in request.rejected if not self._carried(r.body, source)]
            dropped.append(len(request.events) - len(events))
            kept.append(msgspec.structs.replace(request, events=events, rejected=rejected))
        return kept, dropped

    def _suppressed(self, body: bytes, source: str) -> bool:
        try:
            event = _decode_event(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._carried(body, source)
        return self.covers(self._extractor.identifiers(event))

    def covers(self, carried: Sequence[Identifier]) -> bool:
        """Whether an event carrying these identifiers is a forgotten person's: one of
        its user id, emails or external ids is suppressed, or a suppressed anonymous id
        comes with nothing naming anybody. Someone signed in on a device a forgotten
        person used is someone else, and their events are kept."""
        device = False
        for identifier in carried:
            if self.hash(identifier) in self.hashes:
                if identifier[0] != ANONYMOUS_ID:
                    return True
                device = True
        return device and all(kind == ANONYMOUS_ID for kind, _ in carried)

    def _carried(self, body: bytes, source: str) -> bool:
        """A body the strict decoder refuses, read leniently. This runs in the log
        writer's group commit, on what any client sent: a body it cannot make sense
        of is kept (quarantined, as without a forget), never an error that fails the
        commit of everyone else's events."""
        try:
            found = loose_identifiers(self._extractor, body, source)
        except Exception:
            return False
        return self.covers(found)


def load_suppressions(backend: Backend, rules: IdentitySection) -> Suppressions:
    """The suppression set as the database has it, for the daemon's start."""
    store = backend.lifecycle()
    try:
        return Suppressions(store.salt(), store.suppressed(), rules)
    finally:
        store.close()
