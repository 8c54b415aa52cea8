"""The scorer on a real database: events go through the log and the identity graph as
in production, then the scorer's three jobs run with an injected clock.

Points are the shipped example model's (actors/scoring/example_model.toml): a demo
request is worth 40, fading by half every 7 days.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actors.identity.rebuild import rebuild
from actors.scoring import deploy
from storage.scores import ACCOUNT, PROFILE
from storage.sqlite_backend import SqliteBackend
from tests.support.graph import Harness
from tests.support.scoring import CTO, DAY, T0, Scoring, at, identify, track, variant


async def test_new_traits_are_scored_for_fit_with_the_signals_and_inputs(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(identify(CTO, T0, "1", userId="ann"))
        score = scoring.profile_score("user_id", "ann")
        assert (score.fit_score, score.fit_segment, score.fit_model) == (
            100,
            "very good",
            "example-1",
        )
        assert score.fit_at == T0
        assert score.traits()["mk_customer_fit_signals"][0] == "Senior decision maker"
        assert score.traits()["mk_job_title"] == "CTO"
        # A new profile gets its likelihood at once (nothing it did is weighted yet).
        assert (score.ltb_score, score.ltb_segment, score.grade) == (0, "low", "C")

        await scoring.send(identify({"email": "ann@gmail.com"}, T0 + 60, "2", userId="ann"))
        score = scoring.profile_score("user_id", "ann")
        assert score.fit_score == 70
        assert "mk_customer_fit_score" in score.traits()


async def test_likelihood_halves_after_a_half_life_and_new_events_raise_it(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(track("Demo Requested", T0, "1", userId="ann"))
        scoring.batch()
        first = scoring.profile_score("user_id", "ann")
        assert (first.ltb_score, first.ltb_segment, first.ltb_signals) == (
            40,
            "high",
            ["Requested a demo"],
        )

        scoring.now = T0 + 7 * DAY
        scoring.batch()
        halved = scoring.profile_score("user_id", "ann")
        assert (halved.ltb_score, halved.ltb_segment) == (20, "medium")
        assert halved.ltb_at == T0 + 7 * DAY

        await scoring.send(track("Demo Requested", T0 + 7 * DAY, "2", userId="ann"))
        scoring.batch()
        raised = scoring.profile_score("user_id", "ann")
        assert (raised.ltb_score, raised.ltb_segment) == (60, "very high")

        scoring.now = T0 + 200 * DAY  # quiet for longer than the 90-day lookback
        scoring.batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == 0
        with sqlite3.connect(graph.path) as db:
            assert db.execute("SELECT count(*) FROM intent").fetchone() == (0,), (
                "aggregates past the lookback are deleted"
            )


async def test_merged_profiles_add_up_their_activity_and_the_old_score_goes(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(
            identify({"title": "CTO"}, T0, "1", anonymousId="desk"),
            track("Demo Requested", T0, "2", anonymousId="desk"),
            track("Demo Requested", T0, "3", anonymousId="phone"),
            identify({"title": "CTO"}, T0, "4", anonymousId="phone"),
        )
        scoring.batch()
        assert len(scoring.score_ids()) == 2
        assert scoring.profile_score("anonymous_id", "phone").ltb_score == 40

        await scoring.send(identify({}, T0 + 1, "5", userId="ann", anonymousId="desk"))
        await scoring.send(identify({}, T0 + 2, "6", userId="ann", anonymousId="phone"))
        assert len(scoring.score_ids()) == 1, "the merged-away profile's score is deleted"
        scoring.batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == 80


async def test_a_deploy_rescores_every_profile_in_the_next_batch(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(
            identify(CTO, T0, "1", userId="ann"), identify(CTO, T0, "2", userId="bob")
        )
        scoring.batch()
        stricter = variant("stricter-2", "points = 35", "points = 5")
        assert deploy.deploy(scoring.store, stricter, "test", again=False).value == "deployed"
        scoring.restart()
        assert scoring.scorer.model.version == "stricter-2"

        # Until the batch, scores keep the version that made them...
        assert scoring.profile_score("user_id", "bob").fit_model == "example-1"
        # ...except where traits changed meanwhile: those are scored at once.
        await scoring.send(identify({"plan": "pro"}, T0 + 5, "3", userId="ann"))
        ann = scoring.profile_score("user_id", "ann")
        assert (ann.fit_model, ann.fit_score) == ("stricter-2", 70)

        scoring.now += 60
        scoring.batch()
        bob = scoring.profile_score("user_id", "bob")
        assert (bob.fit_model, bob.fit_score, bob.ltb_model) == ("stricter-2", 70, "stricter-2")
        assert [d.version for d in scoring.store.deploys(10)] == ["stricter-2", "example-1"]


async def test_changed_event_weights_rebuild_the_aggregates_from_the_log(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(track("Demo Requested", T0, "1", userId="ann"))
        scoring.batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == 40
        cheaper = variant("cheap-demo", "points = 40", "points = 15")
        deploy.deploy(scoring.store, cheaper, "test", again=False)
        scoring.restart()
        assert scoring.store.checkpoint() == 0, "the log is read again"
        scoring.batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == 15


async def test_a_scorer_stopped_midway_through_the_log_ends_where_an_unstopped_one_does(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(
            *(
                track(
                    "Demo Requested" if n % 3 else "Signed Up",
                    T0 + n * 3600,
                    f"e{n}",
                    userId=f"u{n % 4}",
                )
                for n in range(40)
            )
        )
        scoring.scorer.fold_events(10**9, limit=7)
        scoring.scorer.fold_events(10**9, limit=7)
        scoring.restart()  # as after kill -9: the next fold reads on from the checkpoint
        while scoring.scorer.fold_events(10**9, limit=7):
            pass
        with sqlite3.connect(graph.path) as db:
            resumed = db.execute("SELECT kind, value, state FROM intent ORDER BY 1, 2").fetchall()
            scoring.store.begin()
            scoring.store.reset_intents()
            scoring.store.commit()
            while scoring.scorer.fold_events(10**9):
                pass
            straight = db.execute("SELECT kind, value, state FROM intent ORDER BY 1, 2").fetchall()
        assert len(resumed) == 4
        assert resumed == straight


async def test_an_account_is_scored_from_its_traits_and_all_its_members(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        acme = {"name": "Acme", "employees": 300, "industry": "Software"}
        await scoring.send(
            {
                "type": "group",
                "groupId": "acme",
                "userId": "ann",
                "traits": acme,
                "messageId": "g1",
                "timestamp": at(T0),
            },
            {
                "type": "group",
                "groupId": "acme",
                "userId": "bob",
                "traits": acme,
                "messageId": "g2",
                "timestamp": at(T0),
            },
            track("Demo Requested", T0, "1", userId="ann"),
            track("Demo Requested", T0, "2", userId="bob"),
            identify({"title": "Engineer"}, T0, "3", userId="bob"),
        )
        account = scoring.store.scores(ACCOUNT, ["acme"])["acme"]
        # Mid-sized 25 + software 20, read from the account's own traits.
        assert (account.fit_score, account.fit_segment) == (45, "medium")
        scoring.batch()
        account = scoring.store.scores(ACCOUNT, ["acme"])["acme"]
        assert (account.ltb_score, account.ltb_segment, account.grade) == (80, "very high", "B")
        # Members see the account's traits too: bob is an Engineer (no title points)
        # at a mid-sized software company.
        assert scoring.profile_score("user_id", "bob").fit_score == 45


async def test_new_account_traits_rescore_every_member_at_once(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        small = {"name": "Acme", "employees": 10}
        await scoring.send(
            group("acme", small, T0, "g1", userId="ann"),
            group("acme", small, T0, "g2", userId="bob"),
        )
        assert scoring.profile_score("user_id", "bob").fit_score == 0
        # Only ann's call says the account grew; bob, a member, reads it through account.*
        grown = {"employees": 300, "industry": "Software"}
        await scoring.send(group("acme", grown, T0 + 60, "g3", userId="ann"))
        assert scoring.profile_score("user_id", "bob").fit_score == 45
        assert scoring.store.scores(ACCOUNT, ["acme"])["acme"].fit_score == 45


async def test_a_profile_renamed_by_an_older_event_keeps_its_likelihood(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(
            identify(CTO, T0, "1", userId="ann"),
            track("Demo Requested", T0, "2", userId="ann"),
            track("Demo Requested", T0, "3", userId="ann"),
        )
        scoring.batch()
        before = scoring.profile_score("user_id", "ann")
        assert (before.ltb_score, before.grade) == (80, "A")
        # An event from before her first one: the profile is now named after an
        # older identifier (a new profile id), and the old id is merged away.
        await scoring.send(identify({}, T0 - DAY, "0", userId="ann", anonymousId="laptop"))
        assert len(scoring.score_ids()) == 1
        after = scoring.profile_score("user_id", "ann")
        assert (after.ltb_score, after.grade) == (80, "A")


async def test_an_event_dated_in_the_future_counts_as_of_its_arrival(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        scoring.now = datetime.now(UTC).timestamp()
        next_year = scoring.now + 365 * DAY
        await scoring.send(
            track("Email Opened", next_year, "1", userId="ann"),
            track("Demo Requested", scoring.now, "2", userId="ann"),
        )
        scoring.batch()
        # Not 1 (the demo request decayed against a clock a year ahead): 40 + 1.
        assert scoring.profile_score("user_id", "ann").ltb_score == 41


async def test_a_longer_lookback_rebuilds_the_aggregates(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(track("Demo Requested", T0, "1", userId="ann"))
        scoring.now = T0 + 120 * DAY
        scoring.batch()  # past the 90-day lookback: the aggregate is deleted
        longer = variant("long-memory", 'lookback = "90d"', 'lookback = "180d"')
        deploy.deploy(scoring.store, longer, "test", again=False)
        scoring.restart()
        scoring.batch()
        # 40 halved 120/7 times: 0.0003, which rounds to 0 but is there again.
        with sqlite3.connect(graph.path) as db:
            assert db.execute("SELECT count(*) FROM intent").fetchone() == (1,)


async def test_a_batch_run_stops_when_a_rebuild_swaps_the_graph_in(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        # Known profiles first: a new one's likelihood would count its demo at once.
        await scoring.send(
            identify(CTO, T0, "0a", userId="ann"), identify(CTO, T0, "0b", userId="bob")
        )
        await scoring.send(
            track("Demo Requested", T0, "1", userId="ann"),
            track("Demo Requested", T0, "2", userId="bob"),
        )
        reads = 0
        profiles_after = scoring.store.profiles_after

        def swap_after_first_read(row: int, limit: int, fit_model: str) -> Any:
            nonlocal reads
            reads += 1
            found = profiles_after(row, limit, fit_model)
            if reads == 2:  # as swap_in does, between the read and the write
                with sqlite3.connect(graph.path) as db:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES ('identity_graph_generation', '1')"
                    )
            return found

        scoring.store.profiles_after = swap_after_first_read  # type: ignore[method-assign]
        while scoring.scorer.fold_events(10**9):
            pass
        result = scoring.scorer.run_batch(chunk=1)
        assert not result.complete
        assert result.profiles == 1
        scores = scoring.store.scores(PROFILE, sorted(scoring.score_ids())).values()
        assert sorted(s.ltb_score or 0 for s in scores) == [0, 40], (
            "the chunk read before the swap is not written"
        )


async def test_a_change_landing_while_the_scorer_works_is_kept(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await graph.send(identify(CTO, T0, "1", userId="ann"))
        await graph.apply()
        taken = scoring.store.changes(10)
        await graph.send(identify({"title": "Engineer"}, T0 + 1, "2", userId="ann"))
        await graph.apply()  # the identity actor marks ann again meanwhile
        scoring.store.begin()
        scoring.store.clear_changes([row for row, _, _ in taken])
        scoring.store.commit()
        with sqlite3.connect(graph.path) as db:
            (ann,) = db.execute("SELECT uid FROM profiles").fetchone()
        assert ann in {uid for _, uid, _ in taken}
        assert [uid for _, uid, _ in scoring.store.changes(10)] == [ann]


def group(group_id: str, traits: dict[str, Any], when: float, n: str, **ids: str) -> dict[str, Any]:
    return {
        "type": "group",
        "groupId": group_id,
        "traits": traits,
        "messageId": n,
        "timestamp": at(when),
        **ids,
    }


async def test_scores_follow_their_profiles_through_an_identity_rebuild(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(track("Demo Requested", T0, "1", userId="bob"))
        await scoring.send(identify(CTO, T0 - DAY, "0", userId="ann"))
        scoring.batch()
        before = {u: scoring.profile_score("user_id", u) for u in ("ann", "bob")}
        # A graph that has lived through merges numbers its rows otherwise than a
        # rebuild does: a score must follow the person, not the row number.
        with sqlite3.connect(graph.path) as db:
            for table, column in (
                ("profiles", "id"),
                ("identities", "profile"),
                ("profile_scores", "profile"),
            ):
                db.execute(f"UPDATE {table} SET {column} = {column} + 100")
        rebuild(SqliteBackend(graph.path), graph.rules)
        with sqlite3.connect(graph.path) as db:
            assert db.execute("SELECT max(id) FROM profiles").fetchone()[0] < 100
        after = {u: scoring.profile_score("user_id", u) for u in ("ann", "bob")}
        assert after == before
        assert (after["ann"].fit_score, after["bob"].ltb_score) == (100, 40)


async def test_a_profile_merged_away_while_the_scorer_works_leaves_no_score_behind(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await graph.send(identify(CTO, T0, "1", userId="ann"))
        await graph.apply()
        read = scoring.store.profiles_by_uid

        def merged_meanwhile(uids: Any) -> Any:
            found = read(uids)
            # What the merger does to a profile it merges away, between the scorer's
            # read and its write (delete_profiles).
            with sqlite3.connect(graph.path) as db:
                for profile in found:
                    db.execute("DELETE FROM profiles WHERE id = ?", (profile.row,))
                    db.execute("DELETE FROM profile_scores WHERE profile = ?", (profile.row,))
            return found

        scoring.store.profiles_by_uid = merged_meanwhile  # type: ignore[method-assign]
        assert scoring.scorer.score_changes() > 0
        with sqlite3.connect(graph.path) as db:
            assert db.execute("SELECT count(*) FROM profile_scores").fetchone() == (0,)


async def test_account_news_carried_by_a_profile_merged_away_in_the_same_batch_is_kept(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(
            group("acme", {"employees": 10}, T0, "g1", userId="bob"),
            identify({"title": "Engineer"}, T0, "c1", userId="carl"),
        )
        assert scoring.profile_score("user_id", "bob").fit_score == 0
        # A visitor's group call grows the account, and the visitor logs in as carl:
        # one batch, in which the visitor's profile is born and merged into carl's.
        await scoring.send(
            group(
                "acme", {"employees": 300, "industry": "Software"}, T0 + 60, "g2", anonymousId="v"
            ),
            identify({}, T0 + 61, "c2", userId="carl", anonymousId="v"),
        )
        assert scoring.profile_score("user_id", "bob").fit_score == 45
        assert scoring.store.scores(ACCOUNT, ["acme"])["acme"].fit_score == 45


async def test_a_new_visitors_events_count_in_its_likelihood_before_the_fold(
    tmp_path: Path,
) -> None:
    """A new profile, and one a merge made, get their likelihood at once: the events
    the merger applied for them count although the fold has not reached them."""
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(track("Demo Requested", T0, "1", anonymousId="visitor"))
        assert scoring.scorer.store.checkpoint() == 0  # nothing folded
        assert scoring.profile_score("anonymous_id", "visitor").ltb_score == 40
        # Identified, and the visitor's profile merged into the user's: both count.
        await scoring.send(
            track("Demo Requested", T0 + 60, "2", userId="ann"),
            identify(CTO, T0 + 120, "3", userId="ann", anonymousId="visitor"),
        )
        assert scoring.scorer.store.checkpoint() == 0
        merged = scoring.profile_score("user_id", "ann")
        assert merged.ltb_score == 80
        # Folded later: the same figure, counted once.
        scoring.batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == merged.ltb_score


async def test_a_batch_run_reports_the_profiles_scored_after_each_chunk(tmp_path: Path) -> None:
    async with Harness(tmp_path / "s.db") as graph:
        scoring = Scoring(graph)
        await scoring.send(*(identify(CTO, T0, str(n), userId=f"u{n}") for n in range(5)))
        heard: list[int] = []
        result = scoring.scorer.run_batch(chunk=2, between=lambda _, done: heard.append(done))
        assert heard == [2, 4, 5]
        assert result.profiles == 5
        assert scoring.store.profile_count() == 5
