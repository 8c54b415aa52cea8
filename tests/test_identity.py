"""The identity graph, in process: the merge rules, order independence, replay.

Events go through the same parser and log as in production (tracking_api and
SqliteStorage on a real file); the graph is applied in batches of varying size, so
state carried across batches is exercised as well as state within one.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.identity import batch as batch_module
from actors.identity.extract import Extractor, Identifier
from actors.identity.pipeline import Graph
from actors.identity.rebuild import RebuildCancelled, rebuild
from actors.identity.settings import ExternalId, IdentitySection
from actors.identity.swap import swap_in
from actors.identity.unit import StaleCheckpoint
from actors.messages import Event
from storage.errors import StorageUnavailable
from storage.graph import Change
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import connect
from storage.sqlite_graph import SqliteGraphStore
from tests.support.graph import Harness, SlowCommits, built, shape
from tests.support.identity_journey import (
    DESKTOP,
    EMAIL,
    MOBILE,
    USER,
    as_schema_5,
    email_opened,
    journey,
)


async def test_journey_in_order_yields_one_profile_with_everything(tmp_path: Path) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*journey(), email_opened())
        await graph.apply()
        (profile,) = graph.profiles().values()
    assert profile["identities"] == {
        f"anonymous_id:{DESKTOP}",
        f"anonymous_id:{MOBILE}",
        f"user_id:{USER}",
        f"email:{EMAIL}",
    }
    # Newest event wins per trait: plan was "trial" on 3 March, "pro" on 4 March.
    assert profile["traits"]["plan"] == "pro"
    assert profile["traits"]["name"] == "Peter Gibbons"
    assert profile["events"] == 7
    assert profile["sources"] == {"web": 6, "customerio": 1}
    assert profile["first_seen"] == "2026-03-01T10:00:00.000Z"
    assert profile["last_seen"] == "2026-03-05T12:00:00.000Z"


STEPS = [*journey(), email_opened()]


@pytest.fixture
async def journey_in_order(tmp_path: Path) -> list[tuple[str, frozenset[str], str]]:
    """The journey applied in order, in one batch: what every order must come to. Built
    once for all of a test's examples (it depends on none of them)."""
    expected = await built(tmp_path / "reference.db", STEPS)
    assert len(expected) == 1
    return expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(len(STEPS))),
    repeats=st.lists(st.integers(0, len(STEPS) - 1), max_size=4),
    batch_size=st.integers(1, 8),
)
async def test_journey_in_any_order_yields_the_same_profile(
    tmp_path_factory: pytest.TempPathFactory,
    journey_in_order: list[tuple[str, frozenset[str], str]],
    order: Sequence[int],
    repeats: list[int],
    batch_size: int,
) -> None:
    async with Harness(tmp_path_factory.mktemp("order") / "shuffled.db") as graph:
        # A repeat is a client's retry of a delivered message: same messageId.
        await graph.send(*(STEPS[i] for i in [*order, *repeats]))
        await graph.apply(batch_size)
        assert shape(graph.profiles()) == journey_in_order


def shared_device() -> list[dict[str, Any]]:
    """Two people log in on one family laptop; alice first (by event time)."""
    return [
        {"type": "page", "anonymousId": "laptop", "messageId": "s1",
         "timestamp": "2026-04-01T09:00:00Z"},
        {"type": "identify", "userId": "alice", "anonymousId": "laptop", "messageId": "s2",
         "traits": {"email": "alice@example.org"}, "timestamp": "2026-04-01T09:05:00Z"},
        {"type": "identify", "userId": "bob", "anonymousId": "laptop", "messageId": "s3",
         "traits": {"email": "bob@example.org"}, "timestamp": "2026-04-02T20:00:00Z"},
        {"type": "track", "userId": "bob", "event": "Viewed", "messageId": "s4",
         "timestamp": "2026-04-02T20:01:00Z"},
        {"type": "page", "anonymousId": "laptop", "messageId": "s5",
         "timestamp": "2026-04-03T09:00:00Z"},
    ]  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(5)), batch_size=st.integers(1, 5))
async def test_shared_device_stays_two_people_whatever_the_order(
    tmp_path_factory: pytest.TempPathFactory, order: Sequence[int], batch_size: int
) -> None:
    steps = shared_device()
    async with Harness(tmp_path_factory.mktemp("shared") / "g.db") as graph:
        await graph.send(*(steps[i] for i in order))
        await graph.apply(batch_size)
        found = graph.profiles()
        dropped = graph.result.dropped["user_id"]
    by_user = {
        next(i for i in p["identities"] if i.startswith("user_id:")): p for p in found.values()
    }
    assert set(by_user) == {"user_id:alice", "user_id:bob"}
    # The device, and its anonymous activity, go with the first user seen on it.
    assert by_user["user_id:alice"]["identities"] == {
        "user_id:alice",
        "anonymous_id:laptop",
        "email:alice@example.org",
    }
    assert by_user["user_id:alice"]["events"] == 3
    assert by_user["user_id:bob"]["identities"] == {"user_id:bob", "email:bob@example.org"}
    assert by_user["user_id:bob"]["events"] == 2
    assert dropped >= 1


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_a_device_three_people_share_goes_with_the_earliest_in_any_order(
    tmp_path: Path, order: Sequence[int]
) -> None:
    """A re-decision must leave behind when its links were made: the next, older link
    that arrives is re-decided in its turn, not refused as if it came last."""
    steps = [
        {"type": "identify", "userId": user, "anonymousId": "tablet", "messageId": user,
         "timestamp": f"2026-04-0{day}T09:00:00Z"}
        for day, user in ((1, "carol"), (2, "alice"), (3, "bob"))
    ]  # fmt: skip
    async with Harness(tmp_path / "g.db") as graph:
        for i in order:
            await graph.send(steps[i])
            await graph.apply()
        found = graph.profiles()
    assert sorted(map(sorted, (p["identities"] for p in found.values()))) == [
        ["anonymous_id:tablet", "user_id:carol"],
        ["user_id:alice"],
        ["user_id:bob"],
    ]


def tablet_of_three() -> list[dict[str, Any]]:
    """alice, then bob, use one tablet, each with a history of their own; carol's older
    identify on it arrives last."""
    day = "2026-04-0{}T09:{:02d}:00Z".format
    return [
        *(
            {"type": "track", "userId": user, "event": "Read", "messageId": f"{user}-{n}",
             "timestamp": day(d, n)}
            for d, user in ((2, "alice"), (3, "bob"))
            for n in range(20)
        ),
        {"type": "identify", "userId": "alice", "anonymousId": "tablet", "messageId": "a",
         "timestamp": day(2, 30)},
        {"type": "identify", "userId": "bob", "anonymousId": "tablet", "messageId": "b",
         "timestamp": day(3, 30)},
        {"type": "page", "anonymousId": "tablet", "messageId": "p", "timestamp": day(4, 0)},
        {"type": "identify", "userId": "carol", "anonymousId": "tablet", "messageId": "c",
         "timestamp": day(1, 0)},
    ]  # fmt: skip


async def test_a_re_decision_folds_again_only_the_identifiers_that_change_hands(
    tmp_path: Path,
) -> None:
    """bob's profile is the same before and after carol's late identify takes the tablet
    from alice: his history is not read back from the log."""
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*tablet_of_three())
        read: list[int] = []
        store = graph.graph.store
        home_events = store.home_events

        def recording(nodes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
            for node, body in home_events(nodes):
                read.append(node)
                yield node, body

        store.home_events = recording  # type: ignore[method-assign]
        await graph.apply(batch_size=1)
        found = graph.profiles()
        with sqlite3.connect(graph.path) as db:
            named = dict(db.execute("SELECT id, value FROM identities").fetchall())
    assert graph.result.recomputes == 1
    assert {named[node] for node in read} <= {"alice", "tablet", "carol"}
    assert len(read) == 22  # alice's 20 tracks and her identify, and the tablet's page
    in_order = sorted(tablet_of_three(), key=lambda m: m["timestamp"])
    assert shape(found) == await built(tmp_path / "in-order.db", in_order)


async def test_a_conflict_with_too_long_a_history_is_not_re_decided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "MAX_REFOLD_EVENTS", 10)
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*tablet_of_three())
        read: list[Sequence[int]] = []

        def reading(nodes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
            read.append(nodes)
            return iter(())

        monkeypatch.setattr(graph.graph.store, "home_events", reading)
        await graph.apply(batch_size=1)
        found = graph.profiles()
    assert graph.result.recomputes == 0
    assert read == []  # counted, not read: refusing costs no event bodies
    (tablet,) = [p for p in found.values() if "anonymous_id:tablet" in p["identities"]]
    assert "user_id:alice" in tablet["identities"]  # as it came: alice's before carol's


async def test_a_graph_from_schema_5_keeps_its_profiles_and_pending_changes(
    tmp_path: Path,
) -> None:
    """Migration 6 drops the per-identifier activity column of a graph in use, and 7
    turns the scorer's to-do list into a queue without losing what waits on it."""
    steps = journey()
    path = tmp_path / "g.db"
    async with Harness(path) as graph:
        await graph.send(*steps[:4])
        await graph.apply()
        before = graph.profiles()
    as_schema_5(path)
    with sqlite3.connect(path) as db:
        waiting = db.execute("SELECT uid, reasons FROM profile_changes ORDER BY seq").fetchall()
    assert waiting
    async with Harness(path) as graph:
        assert graph.profiles() == before
        with sqlite3.connect(path) as db:
            assert db.execute(
                "SELECT uid, reasons FROM profile_changes ORDER BY id"
            ).fetchall() == (waiting)
            assert "activity" not in {row[1] for row in db.execute("PRAGMA table_info(identities)")}
        await graph.send(*steps[4:])
        await graph.apply()
        upgraded = graph.profiles()
    assert shape(upgraded) == await built(tmp_path / "straight.db", steps)


async def test_replay_after_restart_equals_uninterrupted_build(tmp_path: Path) -> None:
    steps = [*journey(), email_opened(), *shared_device()]
    expected = await built(tmp_path / "straight.db", steps)
    async with Harness(tmp_path / "restarted.db") as graph:
        await graph.send(*steps)
        assert graph.storage is not None
        first = await graph.storage.read_events(0, 5)
        graph.graph.apply(first, 0)
        graph.restart()
        await graph.apply(batch_size=2)
        assert shape(graph.profiles()) == expected


async def test_junk_ids_are_ignored_and_emails_normalised(tmp_path: Path) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            {"type": "identify", "userId": "null", "anonymousId": "a1",
             "traits": {"email": "  Ann@Example.ORG "}, "messageId": "j1"},
            {"type": "identify", "userId": "undefined", "anonymousId": "a2",
             "traits": {"email": "ann@example.org"}, "messageId": "j2"},
            {"type": "identify", "userId": "0", "anonymousId": "a3",
             "traits": {"email": "test@example.com"}, "messageId": "j3"},
            {"type": "identify", "userId": "anonymous", "anonymousId": "a4",
             "traits": {"email": "test@example.com"}, "messageId": "j4"},
            {"type": "identify", "userId": " ", "anonymousId": "a5",
             "traits": {"email": "not-an-email"}, "messageId": "j5"},
        )  # fmt: skip
        await graph.apply()
        found = sorted(sorted(p["identities"]) for p in graph.profiles().values())
    # The junk user ids did not glue a1..a5 together; the test address did not either.
    assert found == [
        ["anonymous_id:a1", "anonymous_id:a2", "email:ann@example.org"],
        ["anonymous_id:a3"],
        ["anonymous_id:a4"],
        ["anonymous_id:a5"],
    ]


async def test_cap_per_kind_stops_a_junk_id_fusing_everyone(tmp_path: Path) -> None:
    rules = msgspec.convert({"limits": {"email": 2}}, IdentitySection)
    async with Harness(tmp_path / "g.db", rules) as graph:
        # A QA script reuses one anonymous id for many test sign-ups.
        await graph.send(
            *(
                {"type": "identify", "anonymousId": "qa-bot", "messageId": f"q{i}",
                 "traits": {"email": f"qa{i}@initech.com"},
                 "timestamp": f"2026-05-0{i + 1}T00:00:00Z"}
                for i in range(5)
            )
        )  # fmt: skip
        await graph.apply()
        found = sorted(sorted(p["identities"]) for p in graph.profiles().values())
        dropped = graph.result.dropped["email"]
    assert found[0] == ["anonymous_id:qa-bot", "email:qa0@initech.com", "email:qa1@initech.com"]
    assert found[1:] == [[f"email:qa{i}@initech.com"] for i in range(2, 5)]
    assert dropped == 3


async def test_external_ids_from_configured_sources_link_profiles(tmp_path: Path) -> None:
    rules = IdentitySection(
        external_ids=[
            ExternalId(kind="crm_id", path="traits.crm_id", sources=["backend"], limit=1),
            ExternalId(kind="device_id", path="context.device.id"),
        ]
    )
    async with Harness(tmp_path / "g.db", rules) as graph:
        await graph.send(
            {"_source": "backend", "type": "identify", "userId": "u9",
             "traits": {"crm_id": "0035g00000XyZ"}, "messageId": "e1"},
            {"_source": "backend", "type": "identify", "anonymousId": "srv-1",
             "traits": {"crm_id": "0035g00000XyZ"}, "messageId": "e2"},
            # From the web source the trait is not an identifier: no link.
            {"type": "identify", "anonymousId": "web-1",
             "traits": {"crm_id": "0035g00000XyZ"}, "messageId": "e3"},
            {"type": "track", "event": "Opened", "anonymousId": "ios-1", "messageId": "e4",
             "context": {"device": {"id": "D-1"}}},
            {"type": "track", "event": "Opened", "userId": "u9", "messageId": "e5",
             "context": {"device": {"id": "D-1"}}},
        )  # fmt: skip
        await graph.apply()
        found = sorted(sorted(p["identities"]) for p in graph.profiles().values())
    assert found == [
        ["anonymous_id:ios-1", "anonymous_id:srv-1", "crm_id:0035g00000XyZ", "device_id:D-1",
         "user_id:u9"],
        ["anonymous_id:web-1"],
    ]  # fmt: skip


def test_identifiers_are_ordered_user_email_external_anonymous() -> None:
    rules = IdentitySection(external_ids=[ExternalId(kind="crm_id", path="traits.crm")])
    extractor = Extractor(rules)
    at = "2026-01-01T00:00:00.000Z"
    identify = Event(
        type="identify",
        message_id="x",
        source="web",
        received_at=at,
        timestamp=at,
        user_id="u1",
        anonymous_id="a1",
        traits={"crm": 42, "email": "A@B.io"},
    )
    assert extractor.identifiers(identify) == [
        Identifier("user_id", "u1"),
        Identifier("email", "a@b.io"),
        Identifier("crm_id", "42"),
        Identifier("anonymous_id", "a1"),
    ]
    alias = Event("alias", "y", "web", at, at, user_id="u1", previous_id="a0")
    assert extractor.identifiers(alias) == [
        Identifier("user_id", "u1"),
        Identifier("anonymous_id", "a0"),
    ]
    # A group call's traits describe the account: its email is not the person's.
    group = Event(
        "group", "z", "web", at, at, user_id="u1", group_id="g", traits={"email": "billing@g.io"}
    )
    assert extractor.identifiers(group) == [Identifier("user_id", "u1")]


async def test_a_rebuild_under_a_lagging_merger_makes_it_read_on_from_the_rebuilt_graph(
    tmp_path: Path,
) -> None:
    steps = [*journey(), email_opened(), *shared_device()]
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*steps)
        assert graph.storage is not None
        first = await graph.storage.read_events(0, 4)
        graph.graph.apply(first, 0)
        expected_before_rebuild = graph.profiles()

        report = rebuild(SqliteBackend(graph.path), graph.rules)

        assert report.events == len(steps)
        assert report.profiles_before == len(expected_before_rebuild)
        rest = await graph.storage.read_events(4, 100)
        with pytest.raises(StaleCheckpoint) as stale:
            graph.graph.apply(rest, 4)
        assert stale.value.checkpoint == len(steps)
        await graph.apply()  # nothing left to apply: the rebuild included it all
        rebuilt = graph.profiles()
    assert shape(rebuilt) == await built(tmp_path / "straight.db", steps)


async def test_a_batch_read_before_a_rebuild_swap_is_not_written_after_it(tmp_path: Path) -> None:
    """The rebuild's checkpoint can equal the merger's (both caught up): the swap's
    generation, not the checkpoint alone, tells the merger its reads are stale."""
    steps = journey()
    async with Harness(tmp_path / "g.db") as graph:
        assert graph.storage is not None
        await graph.send(*steps[:4])
        await graph.apply()
        backend = SqliteBackend(graph.path)
        with backend.scratch() as work:
            Graph(work.graph, graph.rules, Extractor(graph.rules)).apply(
                await graph.storage.read_events(0, 100), 0
            )
            await graph.send(steps[4])
            late = await graph.storage.read_events(4, 100)

            class SwappedBeforeWriting(SqliteGraphStore):
                def begin(self) -> None:
                    with closing(backend.session()) as db:
                        swap_in(db, work, 4)  # a rebuild to the same checkpoint
                    super().begin()

            merger = Graph(
                SwappedBeforeWriting(connect(graph.path, 5)), graph.rules, Extractor(graph.rules)
            )
            with pytest.raises(StaleCheckpoint):
                merger.apply(late, 4)


async def test_users_who_share_a_kiosk_in_time_order_need_no_re_decision(tmp_path: Path) -> None:
    """Each later user's link to the kiosk is refused as it comes: re-deciding the
    ever-growing kiosk component on every event would hold the write lock for minutes."""
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            *(
                {"type": "identify", "userId": f"visitor-{n}", "anonymousId": "kiosk",
                 "messageId": f"v{n}", "timestamp": f"2026-07-01T10:{n // 60:02d}:{n % 60:02d}Z"}
                for n in range(300)
            )
        )  # fmt: skip
        await graph.apply(batch_size=50)
        assert graph.result.dropped["user_id"] == 299
        assert graph.result.recomputes == 0
        found = graph.profiles()
    assert len(found) == 300
    (kiosk,) = [p for p in found.values() if "anonymous_id:kiosk" in p["identities"]]
    assert "user_id:visitor-0" in kiosk["identities"]


async def test_a_tie_between_sources_is_settled_the_same_in_any_order(tmp_path: Path) -> None:
    """The log keeps one messageId per source, so one time and one messageId can come
    from two sources; the trait they set must not depend on which arrived first."""
    web = {"type": "identify", "userId": "t1", "messageId": "same", "traits": {"plan": "free"},
           "timestamp": "2026-07-01T00:00:00Z"}  # fmt: skip
    backend = {**web, "_source": "backend", "traits": {"plan": "pro"}}
    plans: list[str] = []
    for order in ([web, backend], [backend, web]):
        async with Harness(tmp_path / f"{len(plans)}.db") as graph:
            await graph.send(*order)
            await graph.apply()
            (profile,) = graph.profiles().values()
            plans.append(profile["traits"]["plan"])
    assert plans[0] == plans[1]


async def test_a_cancelled_rebuild_leaves_the_graph_and_no_scratch_file(tmp_path: Path) -> None:
    async with Harness(
        tmp_path / "g.db", msgspec.convert({"batch_size": 2}, IdentitySection)
    ) as graph:
        await graph.send(*journey())
        await graph.apply()
        before = shape(graph.profiles())

        def stop(done: int, total: int) -> None:
            raise RebuildCancelled("stopping")

        with pytest.raises(RebuildCancelled):
            rebuild(SqliteBackend(graph.path), IdentitySection(limits={"email": 1}), progress=stop)
        assert shape(graph.profiles()) == before
    # The lock file stays (flock needs a file); the scratch database does not.
    leftovers = [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name]
    assert leftovers == ["g.db.rebuild-lock"]


async def test_a_first_identify_with_a_user_id_and_an_email_leaves_no_merge_behind(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            {
                "type": "identify",
                "userId": "ann",
                "traits": {"email": "ann@initech.com"},
                "messageId": "m1",
                "timestamp": "2026-03-01T10:00:00Z",
            }
        )
        await graph.apply()
        (profile,) = graph.profiles().values()
        assert profile["identities"] == {"user_id:ann", "email:ann@initech.com"}
        db = connect(graph.path, 5)
        # No id that nobody ever saw: nothing redirects, nothing was merged away.
        assert db.execute("SELECT count(*) FROM profile_redirects").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM identity_merges").fetchone() == (0,)
        assert [r[1] for r in db.execute("SELECT uid, reasons FROM profile_changes")] == [
            int(Change.IDENTITY | Change.TRAITS | Change.ACTIVITY)
        ]
        db.close()


def at(minute: int) -> str:
    return f"2026-08-01T10:{minute:02d}:00Z"


async def test_a_batch_follows_identifiers_the_batch_still_committing_moved_in_sql(
    tmp_path: Path,
) -> None:
    """The batch before merged a profile away and re-pointed, in SQL, an identifier it
    had not read; the next batch reads that identifier before the merge is committed."""
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            {"type": "identify", "userId": "u1", "messageId": "p1", "timestamp": at(0)},
            {"type": "identify", "anonymousId": "a1", "traits": {"email": "x@example.org"},
             "messageId": "p2", "timestamp": at(1)},
            {"type": "identify", "anonymousId": "a2", "traits": {"email": "x@example.org"},
             "messageId": "p3", "timestamp": at(2)},
        )  # fmt: skip
        await graph.apply()
        await graph.send(
            {"type": "track", "userId": "u1", "anonymousId": "a1", "event": "Login",
             "messageId": "p4", "timestamp": at(3)},
            {"type": "identify", "anonymousId": "a2", "traits": {"plan": "pro"},
             "messageId": "p5", "timestamp": at(4)},
        )  # fmt: skip
        await graph.apply(batch_size=1)
        (person,) = graph.profiles().values()
    assert person["identities"] == {
        "user_id:u1", "anonymous_id:a1", "anonymous_id:a2", "email:x@example.org"
    }  # fmt: skip
    assert person["traits"]["plan"] == "pro"
    assert person["events"] == 5


async def test_a_refused_link_the_next_batch_repeats_is_counted_once(tmp_path: Path) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "r1",
             "timestamp": at(0)},
        )  # fmt: skip
        await graph.apply()
        await graph.send(
            *(
                {"type": "identify", "userId": "u2", "anonymousId": "a1", "messageId": f"r{n}",
                 "timestamp": at(n)}
                for n in (2, 3)
            )
        )  # fmt: skip
        await graph.apply(batch_size=1)
        assert graph.result.dropped == {"user_id": 1}
        assert len(graph.profiles()) == 2


async def test_an_account_keeps_what_the_batch_still_committing_said_of_it(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(
            {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"plan": "pro"},
             "messageId": "g1", "timestamp": at(0)},
            {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"employees": 50},
             "messageId": "g2", "timestamp": at(5)},
        )  # fmt: skip
        await graph.apply(batch_size=1)
        with sqlite3.connect(graph.path) as db:
            ((first_seen, last_seen, traits),) = db.execute(
                "SELECT first_seen, last_seen, traits FROM accounts"
            ).fetchall()
    assert (first_seen, last_seen) == (at(0).replace("Z", ".000Z"), at(5).replace("Z", ".000Z"))
    assert {name: stamp[0] for name, stamp in json.loads(traits).items()} == {
        "plan": "pro",
        "employees": 50,
    }


class FailsSecondCommit(SlowCommits):
    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1
        if self.commits == 2:
            raise StorageUnavailable("disk I/O error")
        super().commit()


async def test_a_failed_commit_takes_the_batch_computed_after_it_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    steps = [*journey(), email_opened()]
    expected = await built(tmp_path / "straight.db", steps)
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*steps)
        assert graph.storage is not None
        batches = [await graph.storage.read_events(seq, 2) for seq in (0, 2, 4)]
        merger = graph.merger(FailsSecondCommit)
        results = merger.apply_all(batches, 0)
        assert next(results).checkpoint == 2
        with pytest.raises(StorageUnavailable, match="disk I/O"):
            next(results)
        assert merger.store.checkpoint() == 2  # neither the failed batch nor the one after
        await graph.apply()
        assert shape(graph.profiles()) == expected
