"""The data lifecycle: erasing a person, suppressing their future events, trimming the log.

`leadsync forget` finds a person by one identifier, erases everything leadsync keeps
about them in both files, and keeps a suppression entry per identifier they had: a
keyed hash (never the value), so the daemon drops their future events at ingestion
until `leadsync unforget`. The actor side (actors/lifecycle.py) decides which events
are theirs (by the identifiers each carries) and what destinations are told; this
interface finds, deletes and suppresses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import msgspec

from storage.log import StoredEvent

SALT = "suppression_salt"
"""meta key: the key of the suppression hashes, made by the migration that made the
table. A leaked table alone cannot be checked against a list of addresses."""


def identifier_hash(salt: bytes, kind: str, value: str) -> bytes:
    """What a suppression entry keeps of an identifier (values already normalised)."""
    return hashlib.blake2b(f"{kind}\0{value}".encode(), key=salt, digest_size=16).digest()


class PartlyErased(Exception):
    """The log's transaction committed and the main file's did not: the person's events
    are gone, their profile and the suppression entries are not. Forgetting again
    finishes the work."""


class Person(msgspec.Struct, frozen=True):
    """A profile as forget sees it: its row, every id it answered to, what it holds."""

    profile: int
    uid: str
    uids: list[str]
    """Its id and the ids merged into it (redirects)."""
    identifiers: list[tuple[str, str]]
    nodes: list[int]
    user_id: str | None


class Deletion(msgspec.Struct, frozen=True):
    """A deletion request queued for one destination, as an outbox payload."""

    destination: str
    profile: int
    payload: bytes
    hash: int


class Strays(msgspec.Struct, frozen=True):
    """What of the person's is kept outside their profile and the log, as confirmed by
    the caller: held events and quarantined messages (by row id) and the outbox rows
    and dead letters of profile ids that named them (a deletion request left from an
    earlier forget, whose profile is gone)."""

    held: Sequence[int] = ()
    quarantined: Sequence[int] = ()
    uids: Sequence[str] = ()


class StrayMarks(msgspec.Struct, frozen=True):
    """The highest row id in each table strays are found in: a search after these
    finds only the rows added since. (A row id can come back in the outbox, the dead
    letters and the quarantine, which lack AUTOINCREMENT, only once the highest row is
    deleted: payload strays are deleted by profile id, not row id; held has
    AUTOINCREMENT; the quarantine's trim never deletes its newest row.)"""

    held: int = 0
    quarantine: int = 0
    outbox: int = 0
    dead_letters: int = 0


class Erased(msgspec.Struct):
    """What one forget removed (counts: the values are gone)."""

    profiles: int = 0
    """The person's profile, and profiles without a user id that only their events made
    (anonymous ids a cap kept out of theirs)."""
    identifiers: int = 0
    events: int = 0
    scores: int = 0
    intents: int = 0
    queued: int = 0
    dead_letters: int = 0
    held: int = 0
    quarantined: int = 0
    suppressed: int = 0
    deletions: list[str] = []
    """Destinations a deletion request was queued for."""


class LifecycleStore(Protocol):
    """Synchronous, over both files. `begin` takes the main file's write lock,
    `begin_log` the event log's (after: the caller holds ingestion between the two);
    `commit` commits the log first, so a failure between the two leaves the profile in
    place (PartlyErased) and a second forget finishes the work."""

    def begin(self) -> None: ...

    def begin_log(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def salt(self) -> bytes: ...

    def suppressed(self) -> set[bytes]:
        """Every suppression hash, for the daemon's filter at ingestion."""
        ...

    def person(self, kind: str, value: str) -> Person | None:
        """The profile the identifier belongs to, if any."""
        ...

    def profile(self, profile: int) -> Person | None:
        """The profile with this row id as it is now; None if gone (merged away)."""
        ...

    def home_events(self, nodes: Sequence[int]) -> list[int]:
        """Log sequence numbers of the events the merger recorded under these nodes."""
        ...

    def log_head(self) -> int: ...

    def events_mentioning(
        self, needles: Iterable[str], after: int, upto: int | None
    ) -> Iterator[StoredEvent]:
        """Events after `after` (up to `upto`) whose body contains any needle, case
        folded: candidates, which the caller confirms by their identifiers."""
        ...

    def stray_marks(self) -> StrayMarks:
        """Where the tables searched for strays end now."""
        ...

    def events_between(self, after: int, upto: int | None) -> Iterator[StoredEvent]:
        """Every event after `after` (up to `upto`), in order."""
        ...

    def held_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, bytes]]:
        """Held events (row id, body) after the mark whose body contains a needle, case
        folded."""
        ...

    def quarantined_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, str, bytes]]:
        """Quarantined messages (row id, source, body) after the mark that contain a
        needle."""
        ...

    def payloads_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[str, bytes]]:
        """Outbox rows and dead letters (profile id, payload) after the marks that
        contain a needle."""
        ...

    def erase(
        self,
        people: Sequence[Person],
        identifiers: Sequence[tuple[str, str]],
        events: Sequence[int],
        deletions: Sequence[Deletion],
        now: float,
        strays: Strays,
        given: tuple[str, str] | None = None,
    ) -> Erased:
        """In the open transaction: delete the profiles' rows (links and recorded
        events of every node each holds at that moment), the events named, their
        identifiers' aggregates, held items of those events, and the strays; queue
        each deletion for a destination that had received the person; suppress the
        identifiers. The identifier `given` (the one forget was asked for) already
        suppressed makes this a repeated request: the earlier forget's group joins this
        one. Any other identifier already suppressed stays in its own forget's group
        (another person's device, say: unforgetting this person does not lift it)."""
        ...

    def unsuppress(self, hashed: bytes) -> list[bytes]:
        """Lift the suppression made with this identifier's hash, and those made with it
        (one forget suppresses every identifier of the person, and a repeated request
        joins the two groups); the hashes lifted."""
        ...
