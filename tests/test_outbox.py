"""The outbox on a real database: what the scorer stages for each destination, in the
transaction that stores the score, and what only-on-change, filters and modes do.

Events go through the identity graph and the scorer as in production; destinations
are settled by hand here (tests/test_delivery.py drives the real actor).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from actors.delivery.payload import Payload, decode
from actors.delivery.staging import Staging, stage_changes
from actors.destinations.file import FileDestination
from actors.destinations.webhook import WebhookDestination
from actors.identity.rebuild import rebuild
from actors.scoring import deploy
from actors.scoring.model import Model
from actors.scoring.scorer import Scorer
from daemon.config import Destination
from storage.outbox import Settlement
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import connect, marks
from storage.sqlite_outbox import ADDRESSES, SqliteOutboxStore
from tests.support.graph import Harness
from tests.support.scoring import CTO, DAY, T0, Scoring, identify, track, variant


def hook(**options: object) -> WebhookDestination:
    return msgspec.convert(
        {"url": "http://127.0.0.1:9/", "secret": "s", **options}, WebhookDestination
    )


class Delivering(Scoring):
    """The test scorer, staging for `destinations`."""

    def __init__(self, graph: Harness, destinations: dict[str, Destination]) -> None:
        self.destinations = destinations
        self.db = connect(graph.path, 5)
        self.outbox = SqliteOutboxStore(self.db)
        super().__init__(graph)

    def _scorer(self, model: Model) -> Scorer:
        scorer = super()._scorer(model)
        scorer.staging = Staging(SqliteOutboxStore(self.store._db), self.destinations)
        return scorer

    def rows(self, destination: str) -> dict[str, tuple[Payload, float | None, int]]:
        """Per profile id: the queued payload, when it is due (negative: held for the
        end of a batch run, see `due`), attempts."""
        return {
            uid: (decode(payload), due, attempts)
            for uid, payload, due, attempts in self.db.execute(
                "SELECT uid, payload, due_at, attempts FROM outbox WHERE destination = ?",
                (destination,),
            )
        }

    def due(self, destination: str) -> set[str]:
        """Profile ids a destination actor would take now."""
        return {row.uid for row in self.outbox.due(destination, self.now, 10_000)}

    def ack(self, destination: str) -> int:
        """The destination acknowledges everything due."""
        due = self.outbox.due(destination, 10**12, 10_000)
        self.settle(destination, Settlement([(r.id, r.uid, r.hash) for r in due]))
        return len(due)

    def settle(self, destination: str, settlement: Settlement) -> None:
        self.outbox.begin()
        self.outbox.settle(destination, settlement, self.now)
        self.outbox.commit()


def uid_of(db_path: Path, user_id: str) -> str:
    with sqlite3.connect(db_path) as db:
        return str(
            db.execute("SELECT uid FROM profiles WHERE user_id = ?", (user_id,)).fetchone()[0]
        )


async def test_a_realtime_fit_change_is_queued_with_the_mapped_traits(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {
        "crm": hook(mode="realtime", fields={"mk_customer_fit_score": "fit"})
    }
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann", anonymousId="a-1"))
        uid = uid_of(graph.path, "ann")
        payload, due, attempts = scoring.rows("crm")[uid]
        assert payload == Payload(
            uid, {"fit": 100}, user_id="ann", email="ann@initech.com", anonymous_id="a-1"
        )
        assert (due, attempts) == (T0, 0)


async def test_a_profile_changed_five_times_before_a_send_goes_out_once_newest(
    tmp_path: Path,
) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    titles = ["Intern", "Engineer", "Manager", "VP Sales", "CTO"]
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        for n, title in enumerate(titles):
            scoring.now = T0 + n
            await scoring.send(identify({**CTO, "title": title}, T0 + n, f"t{n}", userId="ann"))
        rows = scoring.rows("crm")
        assert len(rows) == 1
        (payload, _, _) = rows[uid_of(graph.path, "ann")]
        assert payload.traits["mk_job_title"] == "CTO"


async def test_rescoring_to_the_same_payload_sends_nothing(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        assert scoring.ack("crm") == 1
        # A trait the model does not read: fit is rescored, to the same payload.
        scoring.now = T0 + 60
        await scoring.send(identify({"favourite_colour": "teal"}, T0 + 60, "2", userId="ann"))
        assert scoring.rows("crm") == {}
        # A real change is queued; changing back before it is sent queues what the
        # destination holds (the queued row may be in flight already: see below).
        await scoring.send(identify({"title": "Intern"}, T0 + 61, "3", userId="ann"))
        (queued,) = scoring.rows("crm").values()
        assert queued[0].traits["mk_job_title"] == "Intern"
        await scoring.send(identify({"title": "CTO"}, T0 + 62, "4", userId="ann"))
        (queued,) = scoring.rows("crm").values()
        assert queued[0].traits["mk_job_title"] == "CTO"


async def test_a_payload_changed_in_flight_is_sent_again(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        (in_flight,) = scoring.outbox.due("crm", 10**12, 10)
        await scoring.send(identify({"title": "Intern"}, T0 + 1, "2", userId="ann"))
        scoring.settle("crm", Settlement([(in_flight.id, in_flight.uid, in_flight.hash)]))
        (payload, _, _) = scoring.rows("crm")[in_flight.uid]
        assert payload.traits["mk_job_title"] == "Intern"


async def test_a_change_undone_while_its_send_is_in_flight_is_not_lost(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        scoring.ack("crm")
        await scoring.send(identify({"title": "Intern"}, T0 + 1, "2", userId="ann"))
        (in_flight,) = scoring.outbox.due("crm", 10**12, 10)
        # Undone while "Intern" is on its way: the destination will hold "Intern"...
        await scoring.send(identify({"title": "CTO"}, T0 + 2, "3", userId="ann"))
        scoring.settle("crm", Settlement([(in_flight.id, in_flight.uid, in_flight.hash)]))
        # ...so "CTO" must still go out.
        (payload, due, _) = scoring.rows("crm")[in_flight.uid]
        assert payload.traits["mk_job_title"] == "CTO"
        assert due is not None


async def test_the_filter_decides_who_is_sent_and_drops_who_stops_matching(
    tmp_path: Path,
) -> None:
    good = 'company_size >= 100 and mk_customer_fit_segment in ["good", "very good"]'
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime", filter=good)}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        await scoring.send(identify({**CTO, "company_size": 5}, T0, "2", userId="bob"))
        assert set(scoring.rows("crm")) == {uid_of(graph.path, "ann")}
        await scoring.send(identify({"company_size": 10}, T0 + 1, "3", userId="ann"))
        assert scoring.rows("crm") == {}


async def test_batch_mode_holds_rows_until_the_batch_run_ends(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {
        "warehouse": FileDestination(path=str(tmp_path / "out"), mode="batch"),
        "crm": hook(mode="realtime"),
    }
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        uid = uid_of(graph.path, "ann")
        assert uid in scoring.rows("warehouse")
        assert scoring.due("warehouse") == set()  # held
        assert scoring.due("crm") == {uid}  # due at once
        scoring.ack("crm")
        # A demo request raises the likelihood: the batch run stages it for the batch
        # destination only (realtime destinations take fit changes as they happen).
        scoring.now = T0 + DAY
        await scoring.send(track("Demo Requested", T0 + DAY, "2", userId="ann"))
        scoring.batch()
        (payload, _, _) = scoring.rows("warehouse")[uid]
        assert payload.traits["mk_likelihood_to_buy_score"] > 0
        assert scoring.due("warehouse") == {uid}  # released when the run ended
        assert scoring.rows("crm") == {}
        # What the next run holds waits for that run, not the one that has ended.
        await scoring.send(identify({"title": "Intern"}, T0 + DAY, "3", userId="ann"))
        assert scoring.due("warehouse") == set()
        scoring.batch()
        assert scoring.due("warehouse") == {uid}


async def test_dead_letters_replay_unless_a_newer_payload_superseded_them(
    tmp_path: Path,
) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        await scoring.send(identify(CTO, T0, "2", userId="bob"))
        rows = scoring.outbox.due("crm", 10**12, 10)
        scoring.settle("crm", Settlement(dead=[(r.id, r.hash, "400: bad email") for r in rows]))
        assert scoring.rows("crm") == {}
        letters = scoring.outbox.dead_letters("crm", 10)
        assert {(d.error, d.attempts) for d in letters} == {("400: bad email", 1)}
        # Rescoring to the same payload does not bring a dead letter back by itself.
        await scoring.send(identify({"favourite_colour": "teal"}, T0 + 1, "3", userId="ann"))
        assert scoring.rows("crm") == {}
        # Bob changes: his dead letter is stale, replay drops it; Ann's goes back.
        await scoring.send(identify({"title": "Intern"}, T0 + 2, "4", userId="bob"))
        scoring.outbox.begin()
        assert scoring.outbox.replay("crm", None, T0 + 3) == (1, 1)
        scoring.outbox.commit()
        rows_now = scoring.rows("crm")
        assert rows_now[uid_of(graph.path, "ann")][1:] == (T0 + 3, 0)
        assert rows_now[uid_of(graph.path, "bob")][0].traits["mk_job_title"] == "Intern"
        assert scoring.outbox.dead_letters("crm", 10) == []


async def test_full_sync_resends_what_the_destination_already_has(tmp_path: Path) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        await scoring.send(identify(CTO, T0, "2", userId="bob"))
        scoring.ack("crm")
        assert scoring.scorer.sync("crm", full=False).queued == 0
        result = scoring.scorer.sync("crm", full=True)
        assert (result.profiles, result.queued, result.complete) == (2, 2, True)
        assert len(scoring.rows("crm")) == 2


async def test_a_deploy_sends_the_new_fit_to_realtime_destinations_after_the_batch_run(
    tmp_path: Path,
) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        scoring.ack("crm")
        stricter = variant("stricter-2", "points = 35", "points = 5")
        deploy.deploy(scoring.store, stricter, "test", again=False)
        scoring.restart()
        scoring.now = T0 + 60
        scoring.batch()
        (payload, due, _) = scoring.rows("crm")[uid_of(graph.path, "ann")]
        assert payload.traits["mk_customer_fit_score"] == 70
        assert due == T0 + 60  # realtime: not held for a later run


async def test_addresses_are_read_through_the_profile_index(tmp_path: Path) -> None:
    """Through the (kind, value) index instead, a batch run over a million profiles
    staging for destinations took hours, not a minute. SQLite chooses it for a chunk
    of 500 profile ids, which is what the scorer asks for."""
    async with Harness(tmp_path / "s.db") as graph:
        db = connect(graph.path, 5)
        ids = list(range(500))
        plan = db.execute("EXPLAIN QUERY PLAN " + ADDRESSES.format(marks(ids)), ids).fetchall()
        assert any("identities_by_profile" in step[-1] for step in plan), plan


async def test_queued_rows_and_delivery_state_follow_their_profiles_through_a_rebuild(
    tmp_path: Path,
) -> None:
    destinations: dict[str, Destination] = {"crm": hook(mode="realtime")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        for n, user in enumerate(("ann", "bob", "cyd")):
            await scoring.send(identify(CTO, T0 + n, str(n), userId=user))
        scoring.ack("crm")  # acknowledged: ann, bob and cyd as CTOs
        await scoring.send(identify({"title": "Intern"}, T0 + 5, "5", userId="bob"))
        await scoring.send(identify({"title": "Intern"}, T0 + 6, "6", userId="cyd"))
        # Number bob's and cyd's rows the other way round, as a graph that lived
        # through merges may: the rebuild swaps them back, and (destination, profile)
        # must stay unique throughout.
        bob, cyd = (uid_of(graph.path, u) for u in ("bob", "cyd"))
        with sqlite3.connect(graph.path) as db:
            ids = dict(db.execute("SELECT uid, id FROM profiles").fetchall())
            swap = {ids[bob]: ids[cyd], ids[cyd]: ids[bob]}
            for table, column in (
                ("profiles", "id"),
                ("identities", "profile"),
                ("profile_scores", "profile"),
                ("outbox", "profile"),
                ("destination_state", "profile"),
            ):
                for old, new in swap.items():
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (-new, old))
                db.execute(f"UPDATE {table} SET {column} = -{column} WHERE {column} < 0")
        rebuild(SqliteBackend(graph.path), graph.rules)
        with sqlite3.connect(graph.path) as db:
            rows = dict(db.execute("SELECT uid, profile FROM outbox").fetchall())
            ids = dict(db.execute("SELECT uid, id FROM profiles").fetchall())
        assert rows == {bob: ids[bob], cyd: ids[cyd]}
        # Ann's state came along: rescoring her to what crm holds queues nothing.
        await scoring.send(identify({"favourite_colour": "teal"}, T0 + 9, "9", userId="ann"))
        assert set(scoring.rows("crm")) == {bob, cyd}
        # And acknowledging bob's queued row lands on bob's state, whatever his row.
        due = scoring.outbox.due("crm", 10**12, 10)
        scoring.settle("crm", Settlement([(r.id, r.uid, r.hash) for r in due if r.uid == bob]))
        await scoring.send(identify({"title": "Intern"}, T0 + 10, "10", userId="bob"))
        assert set(scoring.rows("crm")) == {cyd}


async def test_a_profile_merged_away_takes_its_queued_rows_and_a_rebuild_still_swaps(
    tmp_path: Path,
) -> None:
    destinations: dict[str, Destination] = {"warehouse": hook(mode="batch")}
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Delivering(graph, destinations)
        await scoring.send(identify(CTO, T0 + 1, "1", userId="ann"))
        await scoring.send(identify({"title": "VP"}, T0 + 2, "2", anonymousId="x"))
        # x joins ann (its profile merged away), then an earlier event gives x to
        # bob: the split brings x's profile id back, on a new row.
        await scoring.send(track("Page", T0 + 3, "3", anonymousId="x", userId="ann"))
        await scoring.send(track("Page", T0 + 2.5, "4", anonymousId="x", userId="bob"))
        with sqlite3.connect(graph.path) as db:
            queued = db.execute("SELECT uid FROM outbox").fetchall()
        assert len(queued) == len(set(queued))  # one row a profile id
        rebuild(SqliteBackend(graph.path), graph.rules)
        with sqlite3.connect(graph.path) as db:
            rows = db.execute(
                "SELECT o.uid, p.uid FROM outbox o JOIN profiles p ON p.id = o.profile"
            )
            assert all(mine == theirs for mine, theirs in rows)


async def test_rows_a_batch_run_released_go_out_in_turn_with_the_rest(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        outbox = SqliteOutboxStore(connect(graph.path, 5))

        def stage(row: int, due: float | None) -> None:
            outbox.begin()
            stage_changes(outbox, "d", [(row, f"u{row}", b"{}", row)], 0.0, due)
            outbox.commit()

        def end_run(at: float) -> None:
            outbox.begin()
            outbox.end_run(["d"], at)
            outbox.commit()

        stage(1, 100.0)  # due before the first run ends
        stage(2, None)  # held for the first run
        end_run(200.0)
        stage(3, 300.0)  # due after the first run ended, before the second
        stage(4, None)  # held for the second run
        stage(5, 450.0)  # due after the second run ended
        end_run(400.0)
        # Held rows count as due from when the last run ended, older runs' first; they
        # do not jump ahead of what was due before, nor wait behind what came after.
        assert [r.uid for r in outbox.due("d", 1000.0, 10)] == ["u1", "u3", "u2", "u4", "u5"]
