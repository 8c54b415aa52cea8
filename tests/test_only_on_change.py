"""Only-on-change (actors/delivery/only_on_change.py): each rule on its own, then any
sequence of stagings and sends, played against a model destination and the SQLite
store at once (tests/test_outbox.py covers it through the scorer)."""

from __future__ import annotations

import itertools
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.delivery.only_on_change import FILTERED, Row, decide
from actors.delivery.staging import stage_changes
from storage.migrations import MIGRATIONS, migrate
from storage.outbox import OutboxRow, Settlement, StagingDecision
from storage.sqlite_outbox import SqliteOutboxStore

A, B, C = 11, 22, 33
"""Payloads, by their hash."""


def row(profile: int, payload: int | None) -> Row:
    if payload is None:
        return (profile, f"u{profile}", None, 0)
    return (profile, f"u{profile}", b"p%d" % payload, payload)


def never_asked(profiles: list[int]) -> set[int]:
    raise AssertionError(f"asked which of {profiles} are queued")


def queued(profile: int, payload: int) -> tuple[int, str, bytes, int]:
    return (profile, f"u{profile}", b"p%d" % payload, payload)


def test_a_profile_never_staged_is_queued() -> None:
    decision = decide([row(1, A)], {}, never_asked)
    assert decision == StagingDecision([], [queued(1, A)], [(1, A)])


def test_the_payload_staged_last_is_not_queued_again() -> None:
    for acked in (None, A, B):
        assert decide([row(1, A)], {1: (acked, A)}, never_asked) == StagingDecision()


def test_a_newer_payload_is_queued_whatever_the_destination_has() -> None:
    for acked in (None, A):
        decision = decide([row(1, C)], {1: (acked, B)}, never_asked)
        assert decision == StagingDecision([], [queued(1, C)], [(1, C)])


def test_a_change_back_replaces_a_different_payload_still_queued() -> None:
    """B is queued, perhaps on its way: the destination must not be left holding it."""
    decision = decide([row(1, A)], {1: (A, B)}, lambda profiles: {1})
    assert decision == StagingDecision([], [queued(1, A)], [(1, A)])


def test_a_change_back_with_nothing_queued_sends_nothing() -> None:
    """B was sent and refused for good (dead-lettered), or dropped: A is what the
    destination holds."""
    decision = decide([row(1, A)], {1: (A, B)}, lambda profiles: set())
    assert decision == StagingDecision([], [], [(1, A)])


def test_a_profile_the_filter_refuses_has_its_queued_row_dropped_once() -> None:
    refused = row(1, None)
    assert decide([refused], {1: (None, A)}, never_asked) == StagingDecision(
        [1], [], [(1, FILTERED)]
    )
    assert decide([refused], {1: (A, FILTERED)}, never_asked) == StagingDecision()
    assert decide([refused], {}, never_asked) == StagingDecision()


def test_a_profile_let_through_again_is_sent_unless_the_destination_has_it() -> None:
    states = {1: (A, FILTERED)}
    assert decide([row(1, B)], states, never_asked).queued == [queued(1, B)]
    assert decide([row(1, A)], states, lambda profiles: set()).queued == []


def test_a_full_resync_queues_every_payload_and_drops_as_ever() -> None:
    decision = decide([row(1, A), row(2, B)], {1: (A, A), 2: (None, B)}, never_asked, force=True)
    assert decision == StagingDecision([], [queued(1, A), queued(2, B)], [(1, A), (2, B)])
    assert decide([row(1, None)], {1: (A, A)}, never_asked, force=True).dropped == [1]


def test_the_queued_rows_are_asked_once_for_all_that_went_back() -> None:
    asked: list[list[int]] = []

    def queued_rows(profiles: list[int]) -> set[int]:
        asked.append(profiles)
        return {3}

    states = {1: (A, B), 2: (B, B), 3: (C, A), 4: (A, C)}
    rows = [row(1, A), row(2, C), row(3, C), row(4, A), row(5, A)]
    decision = decide(rows, states, queued_rows)
    assert asked == [[1, 3, 4]]
    # Changes first, in order, then what went back and had a row queued.
    assert [r[0] for r in decision.queued] == [2, 5, 3]
    assert decision.staged == [(1, A), (2, C), (3, C), (4, A), (5, A)]


# ------------------------------------------------------------- any sequence of events

PROFILES = (1, 2)


def digest(profile: int, version: int) -> int:
    """Payload `version` of a profile: no two profiles' payloads alike, as in life."""
    return 100 * version + profile


@dataclass(frozen=True)
class Queued:
    """An outbox row of the model, and what was true when it was queued."""

    id: int
    digest: int
    origin: int
    """Which of its profile's stagings queued it."""
    acked_then: int | None
    """What the destination had acknowledged then."""
    queued_then: bool
    """Whether a row (another payload) was queued then."""
    forced: bool
    """A full resync queued it."""
    taken_after: int = 0
    """How many of its profile's stagings there were when it was taken to be sent."""


class World:
    """One destination: its outbox and delivery states as storage keeps them, decided
    by `decide`, and what it received; every step is played on the SQLite store too. A
    profile has at most one send in flight, as with one call at a time."""

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}
        self.staged: dict[int, int] = {}
        self.outbox: dict[int, Queued] = {}
        self.flight: dict[int, tuple[Queued, OutboxRow]] = {}
        self.received: dict[int, list[Queued]] = defaultdict(list)
        self.dead: dict[int, list[Queued]] = defaultdict(list)
        self.stagings: dict[int, list[tuple[int | None, bool]]] = defaultdict(list)
        """(payload version or None, force) of each staging, by profile."""
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        migrate(self.db, Path(":memory:"), MIGRATIONS)
        self.db.executemany(
            "INSERT INTO profiles (id, uid, anchor_ts, anchor_kind, anchor_value, kinds, "
            "activity) VALUES (?, ?, '', '', '', x'', x'')",
            [(p, f"u{p}") for p in PROFILES],
        )
        self.store = SqliteOutboxStore(self.db)

    def stage(self, versions: list[tuple[int, int | None]], force: bool) -> None:
        rows = [row(p, None if v is None else digest(p, v)) for p, v in versions]
        states = {p: (self.acked.get(p), staged) for p, staged in self.staged.items()}
        decision = decide(rows, states, lambda profiles: set(profiles) & set(self.outbox), force)
        for p in decision.dropped:
            self.outbox.pop(p, None)
        for p, _, _, hashed in decision.queued:
            before = self.outbox.get(p)
            # The same row, made this payload; or a new one, with SQLite's rowid: one
            # more than the largest there is.
            new = max((q.id for q in self.outbox.values()), default=0) + 1
            origin = len(self.stagings[p])
            self.outbox[p] = Queued(
                new if before is None else before.id,
                hashed,
                origin,
                self.acked.get(p),
                before is not None,
                force,
            )
        self.staged.update(decision.staged)
        for p, v in versions:
            self.stagings[p].append((v, force))
        self.store.begin()
        assert stage_changes(self.store, "d", rows, 0.0, 0.0, force) == len(decision.queued)
        self.store.commit()

    def take(self, p: int) -> None:
        if p in self.outbox and p not in self.flight:
            (taken,) = [r for r in self.store.due("d", 10.0**12, 100) if r.uid == f"u{p}"]
            self.flight[p] = (replace(self.outbox[p], taken_after=len(self.stagings[p])), taken)

    def end(self, p: int, outcome: str) -> None:
        """The send in flight is acknowledged, to be retried, or dead-lettered. A row is
        settled by (id, hash): one made another payload meanwhile stays queued."""
        if p not in self.flight:
            return
        sent, taken = self.flight.pop(p)
        current = self.outbox.get(p)
        settled = current is not None and (current.id, current.digest) == (sent.id, sent.digest)
        if outcome == "ack":
            self.received[p].append(sent)
            self.acked[p] = sent.digest
        if outcome == "dead" and settled:
            self.dead[p].append(sent)
        if outcome != "retry" and settled:
            del self.outbox[p]
        settlement = {
            "ack": Settlement(delivered=[(taken.id, taken.uid, taken.hash)]),
            "retry": Settlement(retry=[(taken.id, taken.hash, 0.0, "503", True)]),
            "dead": Settlement(dead=[(taken.id, taken.hash, "400")]),
        }[outcome]
        self.store.begin()
        self.store.settle("d", settlement, 0.0)
        self.store.commit()

    def agrees_with_sqlite(self) -> None:
        outbox = dict(self.db.execute("SELECT profile, hash FROM outbox"))
        assert outbox == {p: q.digest for p, q in self.outbox.items()}
        states = self.db.execute("SELECT profile, acked, staged FROM destination_state")
        assert {p: (a, s) for p, a, s in states} == {
            p: (self.acked.get(p), s) for p, s in self.staged.items()
        }


profiles = st.sampled_from(PROFILES)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("stage"),
            st.tuples(
                # A profile once a staging (the last version drawn for it), as the
                # scorer stages them.
                st.lists(
                    st.tuples(profiles, st.sampled_from([None, 1, 2])), min_size=1, max_size=2
                ).map(lambda drawn: list(dict(drawn).items())),
                st.integers(0, 9).map(lambda n: n == 0),  # a full resync, now and then
            ),
        ),
        # "send": taken and acknowledged at once, as most are.
        st.tuples(st.sampled_from(["send", "take", "ack", "retry", "dead"]), profiles),
    ),
    max_size=40,
)


def stage(
    *versions: tuple[int, int | None],
) -> tuple[str, tuple[list[tuple[int, int | None]], bool]]:
    return ("stage", (list(versions), False))


@settings(max_examples=300, deadline=None)
@given(steps)
# Changed back while the change is on its way: it must not stay at the destination.
@example([stage((1, 1)), ("send", 1), stage((1, 2)), ("take", 1), stage((1, 1)), ("ack", 1)])
# Changed back after the change was dead-lettered, or refused and let through again:
# the destination has it, nothing is sent.
@example([stage((1, 1)), ("send", 1), stage((1, 2)), ("take", 1), ("dead", 1), stage((1, 1))])
@example([stage((1, 1)), ("send", 1), stage((1, None)), stage((1, 1))])
# Refused while on its way, let through again before it arrived.
@example([stage((1, 1)), ("take", 1), stage((1, None)), stage((1, 1)), ("ack", 1)])
def test_the_destination_ends_with_the_newest_payload_never_sent_twice_unchanged(
    steps: list[tuple[str, int | tuple[list[tuple[int, int | None]], bool]]],
) -> None:
    """Whatever the order of stagings, sends and their outcomes, the rules as a user
    sees them hold once everything queued is delivered; the SQLite store agrees with
    the model at every step."""
    world = World()
    for kind, what in steps:
        if not isinstance(what, int):
            world.stage(*what)
        elif kind in ("send", "take"):
            world.take(what)
            if kind == "send":
                world.end(what, "ack")
        else:
            world.end(what, kind)
        world.agrees_with_sqlite()
    for p in PROFILES:  # everything queued is delivered
        world.end(p, "ack")
        while p in world.outbox:
            world.take(p)
            world.end(p, "ack")
        world.agrees_with_sqlite()
    for p, stagings in world.stagings.items():
        received = world.received[p]
        # A payload is sent only if it changed (or a full resync asked), and once.
        assert len({q.origin for q in received}) == len(received)
        for q in received:
            assert q.forced or q.origin == 0 or stagings[q.origin - 1][0] != stagings[q.origin][0]
        # Nothing is sent that the filter refused before it was on its way.
        for q in received:
            assert all(v is not None for v, _ in stagings[q.origin : q.taken_after])
        # The destination ends with the newest payload, unless that was dead-lettered.
        newest, _ = stagings[-1]
        if newest is not None:
            held = [q.digest for q in (received[-1:] + world.dead[p][-1:])]
            assert digest(p, newest) in held
        # The same payload twice in a row only if, when queued again, the destination
        # had not acknowledged it yet, or a different payload was still queued (perhaps
        # on its way), or a full resync asked.
        for first, second in itertools.pairwise(received):
            if first.digest == second.digest:
                assert second.forced or second.acked_then != second.digest or second.queued_then
