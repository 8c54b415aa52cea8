"""Forgetting a person, and keeping them forgotten.

`forget` erases a person found by one identifier (storage/lifecycle.py does the
deleting): their profile and everything derived from it, and every event in the log
that carries one of their identifiers. It works on the files with the daemon stopped,
or inside the daemon, where it must not race anyone who writes, nor hold them long:

1. Outside every lock, the log is searched for events that mention the person's
   identifiers (the long part; ingestion and the pipeline carry on), then again for
   what was logged meanwhile, until a round finds nothing new; likewise the held
   events, quarantined messages, outbox and dead letters.
2. Then the main file's write gate is taken, ingestion held (`Suppressions.lock`: the
   log writer holds it from its filter to its commit, so no unfiltered event is in
   flight), and both files' write locks. The person is read again, and only what was
   added since step 1 is searched. Should they have an identifier never searched
   (the merger gave them one meanwhile), the locks are let go and step 1 runs for it
   (`LOCKED_TRIES`). Everything goes in one transaction per file, with the graph's
   generation bumped so that the merger's and the scorer's work in flight is redone.
3. Still holding ingestion, the identifiers join the daemon's suppression set: every
   later event of theirs is dropped at the log writer, counted, and answered 200.

An event is the person's if its home identifier (the first the merger extracts from
it, under which the merger records it) is one of theirs; see `_Found`. A mere mention
in another person's properties is not, nor another user's event on a shared device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import anyio
import msgspec

from actors.delivery import payload as payloads
from actors.delivery.kinds import DestinationSettings
from actors.identity.extract import ANONYMOUS_ID, EMAIL, USER_ID, Extractor, normalize_email
from actors.identity.rebuild import exclusive
from actors.identity.settings import BUILTIN_ID_KINDS, IdentitySection
from actors.messages import Event, EventType
from actors.runtime import held_from_thread
from storage.lifecycle import (
    Deletion,
    Erased,
    LifecycleStore,
    Person,
    StrayMarks,
    Strays,
    identifier_hash,
)
from storage.log import AppendRequest, StoredEvent
from storage.sqlite_lifecycle import SqliteLifecycleStore

Identifier = tuple[str, str]

LOCKED_TRIES = 3
"""Times forget takes the locks expecting the search outside them to be complete; the
last try searches whatever it must under them rather than give up."""
MANY_NEEDLES = 16
"""Identifiers past which the log is read through rather than searched for each."""
SEARCH_ROUNDS = 5
"""Rounds of the search outside the locks, each over what was logged during the one
before, while they find anything new."""
_decode_event = msgspec.json.Decoder(Event).decode


class _Storage(Protocol):
    @property
    def busy_timeout(self) -> float: ...


class Config(Protocol):
    """What forget reads of the daemon's configuration (daemon.config.Config has it)."""

    @property
    def identity(self) -> IdentitySection: ...
    @property
    def destinations(self) -> Mapping[str, DestinationSettings]: ...
    @property
    def storage(self) -> _Storage: ...


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


def forget(
    store: LifecycleStore,
    identifier: Identifier,
    config: Config,
    now: float,
    hold_ingestion: Callable[[], AbstractContextManager[None]] = nullcontext,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
    suppressed: Callable[[list[bytes]], None] = lambda hashes: None,
    screen: Callable[[list[bytes]], list[bytes]] = lambda hashes: [],
    unscreen: Callable[[list[bytes]], None] = lambda hashes: None,
) -> Erased:
    """Erase the person `identifier` belongs to (or, if none does, events and
    aggregates that carry it), and suppress their identifiers. `suppressed` hears the
    new hashes while ingestion is still held, after both files committed: if either
    commit fails, the daemon keeps taking the events the files do not suppress (and
    PartlyErased says the log's went through).

    Should the person change under the locks on every try but the last (their events
    still coming, each with a new identifier), what is known of them is screened at
    the door (`screen`: added to the daemon's set for now, the hashes it did not have
    returned) before the last search, so that the last try finds little new; what
    the forget does not suppress in the end is let through again (`unscreen`)."""
    found = _Found(identifier, config.identity)
    screened: list[bytes] = []
    try:
        for attempt in range(LOCKED_TRIES):
            last = attempt + 1 == LOCKED_TRIES
            if last:
                salt = store.salt()
                with hold_ingestion():
                    screened = screen([identifier_hash(salt, *i) for i in found.identifiers])
            found.search(store)
            try:
                with gate():
                    # The main file's write lock first: it may wait out the merger's
                    # commit (its own process, which the gate does not queue), with
                    # ingestion still open.
                    store.begin()
                    try:
                        with hold_ingestion():
                            store.begin_log()
                            erased, hashes = _erase(store, found, config, now, not last)
                            store.commit()
                            suppressed(hashes)
                            kept = set(hashes)
                            unscreen([h for h in screened if h not in kept])
                            screened = []
                    except BaseException:
                        store.rollback()  # a COMMIT that failed may leave one open
                        raise
                return erased
            except _Unsearched:
                continue
        raise AssertionError("the last try searches under the locks")
    finally:
        if screened:  # the forget failed: nothing of it is suppressed
            with hold_ingestion():
                unscreen(screened)


class _Unsearched(Exception):
    """Under the locks, the person has an identifier never searched (or a profile to
    adopt that needs the log searched): the locks are let go for the search."""


def _erase(
    store: LifecycleStore, found: _Found, config: Config, now: float, bounded: bool
) -> tuple[Erased, list[bytes]]:
    """The locked step, in the open transaction: the last search (`bounded`: of what
    was added since the search outside the locks, or _Unsearched), then the deletes."""
    found.gather(store, None, bounded)
    people = list(found.people.values())
    for person in people:
        found.events.update(dict.fromkeys(store.home_events(person.nodes)))
    found.settle(store)
    deletions = [d for person in people for d in _deletions(person, config)]
    erased = store.erase(
        people,
        found.identifiers,
        sorted(found.events),
        deletions,
        now,
        found.strays(store),
        given=found.identifier,
    )
    salt = store.salt()
    return erased, [identifier_hash(salt, *i) for i in found.identifiers]


class _Found:
    """The person's profiles, identifiers and events, as far as searched.

    An event is the person's if its home (the first identifier the merger extracts
    from it, where the merger records it) is one of theirs; one the merger has not
    applied yet whose home is an identifier no profile has (an anonymous id, email or
    external id; never a user id), and that carries one of theirs, is theirs too (the
    merger will join it to them), unless the cap on the home's kind would keep it out
    of their profile (a second email where one is allowed). An event whose home is
    someone else's (a second user of a shared device) is left, even though it carries
    the person's anonymous id. Besides the profile the identifier belongs to, a
    profile without a user id that the person's events join to them is theirs, if no
    other person's identified event touches it: an anonymous id that a cap kept out of
    their profile (at most 100 by default) is their device, and an email of theirs
    that had a profile of its own before they signed in with it is theirs."""

    def __init__(self, identifier: Identifier, rules: IdentitySection) -> None:
        self.identifier = identifier
        self.rules = rules
        self.extractor = Extractor(rules)
        self.people: dict[int, Person] = {}
        self.identifiers: list[Identifier] = [identifier]
        self.events: dict[int, Identifier | None] = {}
        """The person's events, each with its home identifier (None: a body that
        cannot be read, or an event the merger recorded under one of their nodes)."""
        self._searched: set[Identifier] = set()
        self._refused: set[int] = set()
        """Profiles looked at for adoption and found to be touched by someone else."""
        self._upto = 0
        """The log's head when the searched identifiers were searched."""
        self._wanted: set[Identifier] = set()
        self._wanted_key = (0, -1)
        self._adopted: set[int] = set()
        """Profiles taken as the person's devices (`_adoptable`), while still theirs."""
        self._homeless: set[Identifier] = set()
        """Identifiers followed while no profile had them, and none has yet."""
        self._strays = _StrayCandidates()

    def search(self, store: LifecycleStore) -> None:
        """Outside the locks: the log to its head, then what was logged meanwhile, while
        a round turns up anything new; then the tables strays are found in."""
        for _ in range(SEARCH_ROUNDS):
            before = (len(self.identifiers), sorted(self.people))
            self.gather(store, store.log_head(), bounded=False)
            if (len(self.identifiers), sorted(self.people)) == before:
                break
        self._strays.collect(store, self)

    def gather(self, store: LifecycleStore, upto: int | None, bounded: bool) -> None:
        """Search the log up to `upto` (None: to its end, under the locks), following
        the identifiers found, until nothing new turns up. Each profile is read again
        first: the merger may have given it more identifiers (or merged it into
        another) since the last round. Identifiers searched before are searched only
        in what was logged since; a new one in the whole log, which `bounded` refuses
        (_Unsearched)."""
        self._reread(store)
        self._add(store.person(*self.identifier))
        self._rehome(store, upto, bounded)
        old = [i for i in self.identifiers if i in self._searched]
        if old:
            self._sift(store, old, self._upto, upto, bounded)
        while new := [i for i in self.identifiers if i not in self._searched]:
            if bounded:
                raise _Unsearched(new)
            self._searched.update(new)
            self._sift(store, new, 0, upto, bounded)
        if upto is not None:
            self._upto = upto

    def _sift(
        self,
        store: LifecycleStore,
        identifiers: list[Identifier],
        after: int,
        upto: int | None,
        bounded: bool,
    ) -> None:
        """Keep the person's events among those after `after` that carry one of the
        identifiers, one at a time as the scan finds them (a short value can be in
        most of the log), and follow what they bring; identifiers followed are searched
        by the caller's next round. A few identifiers are searched for in SQL; past
        MANY_NEEDLES, whose cost grows with each value, the range is read through and
        each event's identifiers looked up."""
        through = len(identifiers) > MANY_NEEDLES
        if through:
            candidates = store.events_between(after, upto)
        else:
            candidates = store.events_mentioning(_values(identifiers), after, upto)
        for stored in candidates:
            home, follow = self._judge(store, stored, through)
            if home is not False:
                self.events[stored.seq] = home
            for other in follow:
                if other not in self.identifiers:
                    self._follow(store, other, upto, bounded)

    def _judge(
        self, store: LifecycleStore, stored: StoredEvent, unsought: bool
    ) -> tuple[Identifier | Literal[False] | None, list[Identifier]]:
        """Whether an event is the person's (False if not, else its home), and the
        identifiers it brings to follow. A body the strict decoder cannot read (the
        merger held it) goes if it mentions one of theirs: as a candidate of the
        search, it does; read through (`unsought`), if one of their values is in it."""
        wanted = self.wanted
        try:
            event = _decode_event(stored.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if unsought:
                text = stored.body.decode(errors="replace").lower()
                return (None if any(v.lower() in text for _, v in wanted) else False), []
            return None, []
        carried = [(i.kind, i.value) for i in self.extractor.identifiers(event)]
        if not any(i in wanted for i in carried):
            return False, []
        home = carried[0]
        others = [i for i in carried if i not in wanted]
        if home in wanted:
            return home, others
        self._disown(carried)
        if home[0] == USER_ID:
            return False, []  # someone else's user id: their event
        # A home no profile has: the merger has not applied the event yet, and will
        # join it to the person (theirs), unless a cap keeps a second email (say)
        # out of their profile. An anonymous id the cap keeps out is still their
        # device (a profile of it would be adopted). A home in another profile:
        # theirs only if that one is adopted (its events are added then).
        if store.person(*home) is not None:
            return False, (others if home[0] == ANONYMOUS_ID else [])
        if home[0] != ANONYMOUS_ID and self._capped(home[0], carried):
            return False, []
        return home, others

    def _capped(self, kind: str, carried: list[Identifier]) -> bool:
        """Whether the cap on `kind` keeps the event's new identifiers of that kind out
        of the person's profiles it touches, as the merger would (Caps.violation)."""
        limit = self.rules.limit(kind)
        if limit is None:
            return False
        touched = [p for p in self.people.values() if any(i in carried for i in p.identifiers)]
        held = {i for p in touched for i in p.identifiers if i[0] == kind}
        new = {i for i in carried if i[0] == kind and i not in held}
        return len(held) + len(new) > limit

    def _follow(
        self, store: LifecycleStore, identifier: Identifier, upto: int | None, bounded: bool
    ) -> None:
        """An identifier that came with the person's events: theirs if no profile has
        it yet (its events are erased, so none will), or if its profile is adoptable
        (which searches the whole log: not under the locks while `bounded`)."""
        person = store.person(*identifier)
        if person is None:
            self.identifiers.append(identifier)
            self._homeless.add(identifier)
        elif person.profile not in self.people and person.profile not in self._refused:
            if bounded:
                raise _Unsearched([identifier])
            if self._adoptable(store, person, upto):
                self._add(person)
                self._adopted.add(person.profile)
            else:
                self._refused.add(person.profile)

    def _disown(self, carried: list[Identifier]) -> None:
        """An event filed under someone else's identifier: a profile adopted as the
        person's device that it names together with someone else (a user id, email or
        external id not theirs) was not theirs to take; it is let go, as `_adoptable`
        would have refused it had the event been logged before its check."""
        wanted = self.wanted
        if not any(kind != ANONYMOUS_ID and (kind, v) not in wanted for kind, v in carried):
            return
        for profile in sorted(self._adopted):
            person = self.people.get(profile)  # None: merged away meanwhile
            if person is None or any(i in carried for i in person.identifiers):
                self.people.pop(profile, None)
                self._adopted.discard(profile)
                self._refused.add(profile)

    def _rehome(self, store: LifecycleStore, upto: int | None, bounded: bool) -> None:
        """An identifier followed while no profile had it that the merger has since put
        in one: theirs only if that profile is (a cap can have kept a device of theirs
        out of their profile, in a profile of its own, which is adopted then)."""
        for identifier in sorted(self._homeless):
            person = store.person(*identifier)
            if person is None:
                continue
            if person.profile not in self.people and person.profile not in self._refused:
                if bounded:
                    raise _Unsearched([identifier])
                if self._adoptable(store, person, upto):
                    self._add(person)
                    self._adopted.add(person.profile)
                else:
                    self._refused.add(person.profile)
            self._homeless.discard(identifier)

    def _adoptable(self, store: LifecycleStore, person: Person, upto: int | None) -> bool:
        """Without a user id, and none of its ids comes in an event identified as
        somebody other than the person (a user id, email or external id neither theirs
        nor the profile's own: a device someone else signed in on)."""
        if person.user_id is not None or any(k == USER_ID for k, _ in person.identifiers):
            return False
        own = set(person.identifiers)
        wanted = self.wanted
        for stored in store.events_mentioning(_values(person.identifiers), 0, upto):
            try:
                event = _decode_event(stored.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            carried = [(i.kind, i.value) for i in self.extractor.identifiers(event)]
            if any(i in own for i in carried) and any(
                k != ANONYMOUS_ID and (k, v) not in wanted and (k, v) not in own for k, v in carried
            ):
                return False
        return True

    @property
    def wanted(self) -> set[Identifier]:
        """The identifiers as a set, made again only when the list changed (it only
        grows, but at `settle`, which makes a new list)."""
        key = (id(self.identifiers), len(self.identifiers))
        if self._wanted_key != key:
            self._wanted, self._wanted_key = set(self.identifiers), key
        return self._wanted

    def _add(self, person: Person | None) -> None:
        """A profile of the person's, as read now (again, if known: it may have more)."""
        if person is None:
            return
        self.people[person.profile] = person
        self.identifiers += [i for i in person.identifiers if i not in self.identifiers]

    def _reread(self, store: LifecycleStore) -> None:
        """Each profile as it is now; one merged away meanwhile is found again through
        the identifier given and its user ids and emails, in the profile that took
        them (not through an anonymous id, which a re-decision may have given to
        another user of the device)."""
        for profile, before in list(self.people.items()):
            now = store.profile(profile)
            if now is None:
                del self.people[profile]
                for identifier in before.identifiers:
                    if identifier == self.identifier or identifier[0] != ANONYMOUS_ID:
                        self._add(store.person(*identifier))
            else:
                self._add(now)

    def strays(self, store: LifecycleStore) -> Strays:
        """Under the locks: the held events, quarantined messages and payloads of
        profiles gone that are the person's, among those found outside the locks and
        those added since."""
        self._strays.collect(store, self)
        return self._strays.confirmed(store, self)

    def carries(self, body: bytes, source: str) -> list[Identifier] | None:
        """The identifiers of a held or quarantined body, if one is the person's."""
        try:
            event = _decode_event(body)
            carried = [(i.kind, i.value) for i in self.extractor.identifiers(event)]
        except (msgspec.DecodeError, msgspec.ValidationError):
            carried = loose_identifiers(self.extractor, body, source)
        wanted = self.wanted
        return carried if any(i in wanted for i in carried) else None

    def claims(self, store: LifecycleStore, carried: list[Identifier]) -> bool:
        """Whether a message carrying these is the person's, as `_judge` decides for an
        event in the log: filed under one of their identifiers, or under one no profile
        has that the merger would join to them; not under someone else's."""
        wanted = self.wanted
        if not any(i in wanted for i in carried):
            return False
        home = carried[0]
        if home in wanted:
            return True
        if home[0] == USER_ID or store.person(*home) is not None:
            return False
        return home[0] == ANONYMOUS_ID or not self._capped(home[0], carried)

    def settle(self, store: LifecycleStore) -> None:
        """Under the locks, after the last search: drop the events whose home the
        merger has meanwhile put in someone else's profile (a conflict re-decided by
        event time can move a device to the user who was on it first), and the
        identifiers too. Those erased and suppressed are the given one, those of the
        profiles erased, and those followed that still no profile has; not one
        followed while it had none, or held by a profile merged away meanwhile, that
        the merger has since put in someone else's profile."""
        mine = {i for person in self.people.values() for i in person.identifiers}
        self.identifiers = [
            i
            for i in self.identifiers
            if i == self.identifier or i in mine or store.person(*i) is None
        ]
        owner: dict[Identifier, bool] = {}
        for seq, home in list(self.events.items()):
            if home is None or home in mine:
                continue
            if home not in owner:
                owner[home] = store.person(*home) is not None
            if owner[home]:
                del self.events[seq]


def _values(identifiers: Sequence[Identifier]) -> list[str]:
    return [value for _, value in identifiers]


class _StrayCandidates:
    """What of the person's may lie outside the log and their profile: held events,
    quarantined messages (by row id, with the identifiers each carries) and payloads
    of profile ids (with the first id each names). Collected outside the locks, then
    under them only from the rows added since; judged under them."""

    def __init__(self) -> None:
        self.held: dict[int, list[Identifier]] = {}
        self.quarantined: dict[int, list[Identifier]] = {}
        self.payloads: dict[str, Identifier] = {}
        self._looked_for: set[Identifier] = set()
        self._marks = StrayMarks()

    def collect(self, store: LifecycleStore, found: _Found) -> None:
        """Rows that mention an identifier: from the start for one not looked for yet,
        after the last marks for the others. The marks are read first, so that a row
        added during the scans is looked at again next time, never missed."""
        marks = store.stray_marks()
        new = [i for i in found.identifiers if i not in self._looked_for]
        old = [i for i in found.identifiers if i in self._looked_for]
        for identifiers, after in ((new, StrayMarks()), (old, self._marks)):
            if not identifiers:
                continue
            needles = _values(identifiers)
            for row, body in store.held_mentioning(needles, after):
                if (carried := found.carries(body, "")) is not None:
                    self.held[row] = carried
            for row, source, body in store.quarantined_mentioning(needles, after):
                if (carried := found.carries(body, source)) is not None:
                    self.quarantined[row] = carried
            for uid, payload in store.payloads_mentioning(needles, after):
                if (first := _first_id(payload)) is not None:
                    self.payloads[uid] = first
        self._looked_for.update(new)
        self._marks = marks

    def confirmed(self, store: LifecycleStore, found: _Found) -> Strays:
        """Those that are the person's by the identifiers they hold now (a value that is
        only part of another, or sits in someone else's message, is not theirs)."""
        wanted = set(found.identifiers)
        return Strays(
            held=sorted(r for r, carried in self.held.items() if found.claims(store, carried)),
            quarantined=sorted(
                r for r, carried in self.quarantined.items() if found.claims(store, carried)
            ),
            uids=sorted(uid for uid, first in self.payloads.items() if first in wanted),
        )


def _first_id(body: bytes) -> Identifier | None:
    """A destination payload's first id: its user id, else email, else anonymous id."""
    try:
        payload = payloads.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    for kind, value in (
        (USER_ID, payload.user_id),
        (EMAIL, payload.email),
        (ANONYMOUS_ID, payload.anonymous_id),
    ):
        if value is not None:
            return kind, value
    return None


def _deletions(person: Person, config: Config) -> list[Deletion]:
    """A deletion request (a profile entry with "deleted": true) for each destination
    whose kind takes one (DELETES: webhooks). Segment's tracking API has no delete,
    and files cannot unwrite; docs/destinations.md says what stays downstream."""
    first = dict(reversed(person.identifiers))  # the oldest of each kind
    body, digest = payloads.encode(
        payloads.Payload(
            profile=person.uid,
            traits={},
            user_id=person.user_id,
            email=first.get(EMAIL),
            anonymous_id=first.get("anonymous_id"),
            deleted=True,
        )
    )
    return [
        Deletion(name, person.profile, body, digest)
        for name, destination in config.destinations.items()
        if destination.DELETES
    ]


def unforget(store: LifecycleStore, identifier: Identifier) -> list[bytes]:
    """Lift the suppression that covers `identifier` (and the rest of that forget's)."""
    return store.unsuppress(identifier_hash(store.salt(), *identifier))


def forget_here(
    database: Path,
    identifier: Identifier,
    config: Config,
    suppressions: Suppressions | None = None,
    write_gate: anyio.Semaphore | None = None,
) -> Erased:
    """Forget on the files, in a worker thread: inside the daemon (`suppressions` and
    `write_gate` given: ingestion held, the main file's writers queued, the suppression
    set updated), or with it stopped. Raises RebuildRunning during a rebuild."""

    with exclusive(database):
        store = SqliteLifecycleStore.open(database, config.storage.busy_timeout)
        try:
            if suppressions is None or write_gate is None:
                return forget(store, identifier, config, time.time())
            lock, gate = suppressions.lock, write_gate
            return forget(
                store,
                identifier,
                config,
                time.time(),
                hold_ingestion=lambda: held_from_thread(lock),
                gate=lambda: held_from_thread(gate),
                suppressed=suppressions.hashes.update,
                screen=suppressions.add,
                unscreen=suppressions.hashes.difference_update,
            )
        finally:
            store.close()


def unforget_here(
    database: Path,
    identifier: Identifier,
    config: Config,
    suppressions: Suppressions | None = None,
    write_gate: anyio.Semaphore | None = None,
) -> int:
    """Lift a suppression on the files; inside the daemon, from its set too (ingestion
    held for the moment). Returns how many identifiers it covered (0: none did). The
    locks are taken in forget's order: the gate, the main file's, ingestion."""

    store = SqliteLifecycleStore.open(database, config.storage.busy_timeout)
    gate = nullcontext() if write_gate is None else held_from_thread(write_gate)
    hold = nullcontext() if suppressions is None else held_from_thread(suppressions.lock)
    try:
        with gate:
            store.begin()
            try:
                with hold:
                    lifted = unforget(store, identifier)
                    store.commit()
                    # After the commit: a failed one leaves the daemon dropping what the
                    # file still suppresses.
                    if suppressions is not None:
                        suppressions.hashes.difference_update(lifted)
            except BaseException:
                store.rollback()
                raise
        return len(lifted)
    finally:
        store.close()


def load_suppressions(database: Path, config: Config) -> Suppressions:
    """The suppression set as the database has it, for the daemon's start."""

    store = SqliteLifecycleStore.open(database, config.storage.busy_timeout)
    try:
        return Suppressions(store.salt(), store.suppressed(), config.identity)
    finally:
        store.close()
