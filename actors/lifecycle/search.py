"""Whose are they: the search for a person's profiles, identifiers and events, in the
log and in the tables where strays lie (held events, the quarantine, the outbox and
dead letters), outside the locks and, for what came since, under them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from actors.delivery import payload as payloads
from actors.identity.extract import ANONYMOUS_ID, EMAIL, USER_ID, Extractor
from actors.identity.settings import IdentitySection
from actors.lifecycle.identifiers import Identifier, loose_identifiers
from actors.messages import Event
from storage.lifecycle import LifecycleStore, Person, StrayMarks, Strays
from storage.log import StoredEvent

MANY_NEEDLES = 16
"""Identifiers past which the log is read through rather than searched for each."""
SEARCH_ROUNDS = 5
"""Rounds of the search outside the locks, each over what was logged during the one
before, while they find anything new."""
_decode_event = msgspec.json.Decoder(Event).decode


class Unsearched(Exception):
    """Under the locks, the person has an identifier never searched (or a profile to
    adopt that needs the log searched): the locks are let go for the search."""


class Found:
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
        self._candidates: dict[int, Person] = {}
        """Profiles the person's events led to in this round, not decided yet."""
        self._adopted: set[int] = set()
        """Profiles taken as the person's devices (`_adopt`), while still theirs."""
        self._homeless: set[Identifier] = set()
        """Identifiers followed while no profile had them, and none has yet."""
        self._strays = StrayCandidates()

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
        (Unsearched)."""
        self._reread(store)
        self._add(store.person(*self.identifier))
        self._rehome(store, upto, bounded)
        old = [i for i in self.identifiers if i in self._searched]
        if old:
            self._sift(store, old, self._upto, upto, bounded)
        while True:
            self._adopt(store, upto)
            new = [i for i in self.identifiers if i not in self._searched]
            if not new:
                break
            if bounded:
                raise Unsearched(new)
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
        else:
            self._consider(store, identifier, person, upto, bounded)

    def _consider(
        self,
        store: LifecycleStore,
        identifier: Identifier,
        person: Person,
        upto: int | None,
        bounded: bool,
    ) -> None:
        """A profile the person's events lead to (through `identifier`): a candidate,
        decided with the others found in the same round (`_adopt`: it reads the log, so
        not under the locks while `bounded`)."""
        profile = person.profile
        if profile in self.people or profile in self._refused or profile in self._candidates:
            return
        if bounded:
            raise Unsearched([identifier])
        self._candidates[profile] = person

    def _adopt(self, store: LifecycleStore, upto: int | None) -> None:
        """The candidates taken as the person's devices, or refused: a profile with a
        user id is someone's; one whose ids come in an event identified as somebody
        other than the person (a user id, email or external id neither theirs nor the
        profile's own: a device someone else signed in on) is not theirs. One pass over
        the log for all of them (a person past the cap on anonymous ids has a profile
        for each further device: hundreds, for whom a pass each took minutes)."""
        candidates, self._candidates = self._candidates, {}
        owner: dict[Identifier, int] = {}
        for profile, person in candidates.items():
            if person.user_id is not None or any(k == USER_ID for k, _ in person.identifiers):
                self._refused.add(profile)
            else:
                owner.update(dict.fromkeys(person.identifiers, profile))
        touched = self._touched_by_others(store, owner, candidates, upto)
        for profile, person in candidates.items():
            if profile in self._refused or profile in touched:
                self._refused.add(profile)
            else:
                self._add(person)
                self._adopted.add(profile)

    def _touched_by_others(
        self,
        store: LifecycleStore,
        owner: dict[Identifier, int],
        candidates: dict[int, Person],
        upto: int | None,
    ) -> set[int]:
        """The candidates (by their identifiers, `owner`) that an event names together
        with somebody other than the person."""
        if not owner:
            return set()
        ids = list(owner)
        if len(ids) > MANY_NEEDLES:
            events = store.events_between(0, upto)
        else:
            events = store.events_mentioning(_values(ids), 0, upto)
        wanted = self.wanted
        touched: set[int] = set()
        for stored in events:
            try:
                event = _decode_event(stored.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            carried = [(i.kind, i.value) for i in self.extractor.identifiers(event)]
            for profile in {owner[i] for i in carried if i in owner} - touched:
                own = candidates[profile].identifiers
                if any(
                    k != ANONYMOUS_ID and (k, v) not in wanted and (k, v) not in own
                    for k, v in carried
                ):
                    touched.add(profile)
        return touched

    def _disown(self, carried: list[Identifier]) -> None:
        """An event filed under someone else's identifier: a profile adopted as the
        person's device that it names together with someone else (a user id, email or
        external id not theirs) was not theirs to take; it is let go, as `_adopt`
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
            self._consider(store, identifier, person, upto, bounded)
            self._homeless.discard(identifier)

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


class StrayCandidates:
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

    def collect(self, store: LifecycleStore, found: Found) -> None:
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

    def confirmed(self, store: LifecycleStore, found: Found) -> Strays:
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
