"""One bad item is set aside, never the pipeline's hostage: each consumer of the log,
on a real database, with a fault that one event, profile or record sets off (what a
bug would do), goes on with everything else, holds that item with its reason, and
applies it once the fault is gone and a retry is asked for.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors.delivery.sender import Sender
from actors.identity import isolate
from actors.identity import rebuild as rebuild_module
from actors.identity.extract import Extractor, Identifier
from actors.identity.unit import MergeResult
from actors.messages import Event
from actors.scoring import deploy
from actors.scoring.scorer import Scorer
from daemon.config import Destination
from storage.errors import StorageBusy, StorageUnavailable
from storage.held import Held
from storage.outbox import OutboxRow
from storage.sqlite_backend import SqliteBackend, SqliteLogReader
from storage.sqlite_connect import connect, open_log
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_scores import SqliteScoreStore
from storage.transaction import transaction
from tests.support import delivery
from tests.support.delivery import delivering, stage, uids, webhook
from tests.support.fake_receiver import FakeReceiver
from tests.support.graph import Harness, built, shape
from tests.support.scoring import CTO, T0, Scoring, identify, track, variant

POISON = "poison"


class Fault:
    """Raises for what `hits` picks while on; off, as after an upgrade that fixes it."""

    def __init__(self, hits: Callable[[Any], bool], error: type[Exception] = ZeroDivisionError):
        self.hits, self.error, self.on = hits, error, True

    def wrap(self, work: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(subject: Any, *args: Any) -> Any:
            if self.on and self.hits(subject):
                raise self.error("set off by one item")
            return work(subject, *args)

        return faulty


def held(path: Path) -> list[Held]:
    with closing(sqlite3.connect(path)) as db:
        return SqliteHeldStore(db).listed(None, 100)[1]


def retry_all(path: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        store = SqliteHeldStore(db)
        with transaction(store):
            return store.retry(None, None)


def journey() -> list[dict[str, Any]]:
    """Forty people, each seen anonymously, then identified; one of them is poison."""
    steps = []
    for n in range(40):
        user = POISON if n == 17 else f"user{n}"
        steps.append(track("Demo Requested", T0 + n, f"t{n}", anonymousId=f"anon{n}"))
        steps.append(identify(CTO, T0 + n + 1, f"i{n}", userId=user, anonymousId=f"anon{n}"))
    return steps


def poisoned_merger(graph: Harness) -> Fault:
    """The merger's extraction fails on any event of the poison user."""
    fault = Fault(lambda event: event.user_id == POISON, KeyError)
    extractor = graph.graph.extractor
    extractor.identifiers = fault.wrap(extractor.identifiers)  # type: ignore[method-assign]
    return fault


def merge_all(graph: Harness, path: Path, size: int = 1000) -> list[MergeResult]:
    """The merger's worker loop, as apply_next runs it: retries asked for, then the log."""
    store = SqliteHeldStore(graph.graph.store._db)  # type: ignore[attr-defined]
    attempts = isolate.attempts()
    results = isolate.retry_held(graph.graph, store, attempts)
    with closing(open_log(path, 5)) as log:
        after = graph.graph.store.checkpoint()
        reader = SqliteLogReader(log)
        results += isolate.apply_resilient(
            graph.graph, store, attempts, reader, after, size, math.inf
        )
    return results


async def test_the_merger_holds_the_event_it_fails_on_and_applies_every_other(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    steps = journey()
    async with Harness(path) as graph:
        fault = poisoned_merger(graph)
        await graph.send(*steps)
        results = merge_all(graph, path)
        assert sum(r.held for r in results) == 1
        (item,) = held(path)
        assert (item.component, item.kind, item.attempts) == ("identity", "event", 3)
        assert "KeyError: 'set off by one item'" in item.error
        assert b'"userId":"poison"' in (item.body or b"")
        head = (await graph.storage.read_events(0, 10_000))[-1].seq  # type: ignore[union-attr]
        assert graph.graph.store.checkpoint() == head
        # Every event but the poison was applied, once: as if it had never been sent.
        without = [s for s in steps if s.get("userId") != POISON]
        assert shape(graph.profiles()) == await built(tmp_path / "without.db", without)

        fault.on = False  # an upgrade fixed it
        assert retry_all(path) == (0, 1)
        assert sum(r.held for r in merge_all(graph, path)) == 0
        assert held(path) == []
        assert graph.graph.store.checkpoint() == head
        assert shape(graph.profiles()) == await built(tmp_path / "all.db", steps)


async def test_a_held_event_that_fails_again_stays_held_with_more_attempts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    async with Harness(path) as graph:
        poisoned_merger(graph)
        await graph.send(*journey())
        merge_all(graph, path, size=7)
        retry_all(path)
        merge_all(graph, path)
        (item,) = held(path)
        assert (item.attempts, item.retry) == (6, False)


async def test_the_database_failing_is_not_an_events_fault(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Harness(path) as graph:
        fault = Fault(lambda event: event.user_id == POISON, StorageUnavailable)
        extractor = graph.graph.extractor
        extractor.identifiers = fault.wrap(extractor.identifiers)  # type: ignore[method-assign]
        await graph.send(*journey())
        with pytest.raises(StorageUnavailable):
            merge_all(graph, path)
        assert held(path) == []


def poisoned_fit(scoring: Scoring) -> Fault:
    fault = Fault(lambda traits: traits.profile.get("title") == POISON)
    scoring.scorer.fit.score = fault.wrap(scoring.scorer.fit.score)  # type: ignore[method-assign]
    return fault


def restarted_with_held(scoring: Scoring) -> Scorer:
    """A new scorer on a new connection, as the actor builds it: held store first."""
    scoring.store = SqliteScoreStore(connect(scoring.graph.path, 5))
    model = deploy.active(scoring.store)
    extractor = Extractor(scoring.graph.rules)
    scorer = Scorer(scoring.store, model, extractor, {"web": "web"}, lambda: scoring.now)
    scorer.held = SqliteHeldStore(scoring.store._db)
    scorer.use(model)
    scoring.scorer = scorer
    return scorer


def with_held(scoring: Scoring) -> Scorer:
    scorer = scoring.scorer
    scorer.held = SqliteHeldStore(scoring.store._db)
    return scorer


async def test_the_scorer_holds_the_profile_whose_fit_fails_and_scores_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with Harness(path) as graph:
        scoring = Scoring(graph)
        scorer = with_held(scoring)
        fault = poisoned_fit(scoring)
        counted: list[int] = []
        scorer.attempts.on_held = lambda items: counted.append(len(items))
        await scoring.send(
            identify(CTO, T0, "1", userId="ann"),
            identify({**CTO, "title": POISON}, T0, "2", userId="bob"),
            identify(CTO, T0, "3", userId="cat"),
        )
        assert scoring.profile_score("user_id", "ann").fit_score == 100
        assert scoring.profile_score("user_id", "cat").fit_score == 100
        (item,) = held(path)
        assert (item.component, item.kind, item.attempts) == ("scorer", "profile", 3)
        assert "ZeroDivisionError" in item.error
        assert counted == [1]
        assert scorer.store.changes(10) == []  # off the to-do list: it is held instead

        scoring.batch()  # a batch run meets the same fault, and goes on
        assert [h.key for h in held(path)] == [item.key]
        fault.on = False
        assert retry_all(path) == (1, 0)
        while scorer.score_changes():
            pass
        assert held(path) == []
        assert scoring.profile_score("user_id", "bob").fit_segment is not None


async def test_the_fold_holds_the_event_it_fails_on_and_moves_on(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Harness(path) as graph:
        scoring = Scoring(graph)
        scorer = with_held(scoring)
        fault = Fault(lambda stored: b'"messageId":"t17"' in stored.body)
        scorer._weigh = fault.wrap(scorer._weigh)  # type: ignore[method-assign]
        await scoring.send(*journey())
        scoring.batch()
        (item,) = held(path)
        assert (item.component, item.kind) == ("scorer", "event")
        assert scorer.store.checkpoint() == scorer.store.log_head()
        before = scoring.profile_score("user_id", POISON).ltb_score
        assert before == 0  # its demo request was not folded
        fault.on = False
        assert retry_all(path) == (0, 1)
        assert scorer.retry_held() == 1
        assert scorer.retry_held() == 0  # released: not folded a second time
        scorer.run_batch()
        assert held(path) == []
    # Exactly what a scorer that never failed makes of the same events.
    async with Harness(tmp_path / "clean.db") as clean_graph:
        clean = Scoring(clean_graph)
        await clean.send(*journey())
        clean.batch()
        expected = clean.profile_score("user_id", POISON).ltb_score
    assert expected
    assert scoring.profile_score("user_id", POISON).ltb_score == expected


async def test_a_replay_after_a_deploy_folds_a_held_event_once(tmp_path: Path) -> None:
    """New event weights read the whole log again: a held event is folded then (or
    held again), and a retry asked for later must not fold it a second time."""
    path = tmp_path / "s.db"
    async with Harness(path) as graph:
        scoring = Scoring(graph)
        scorer = with_held(scoring)
        fault = Fault(lambda stored: b'"messageId":"d1"' in stored.body)
        scorer._weigh = fault.wrap(scorer._weigh)  # type: ignore[method-assign]
        await scoring.send(track("Demo Requested", T0, "d1", userId="ann"))
        scoring.batch()
        assert len(held(path)) == 1
        cheaper = variant("cheap-demo", "points = 40", "points = 15")
        deploy.deploy(scoring.store, cheaper, "test", again=False)
        scorer = restarted_with_held(scoring)  # the fixed version, with the new model
        assert held(path) == []  # the replay reads it again
        scoring.batch()
        once = scoring.profile_score("user_id", "ann").ltb_score
        assert once == 15
        retry_all(path)
        scorer.retry_held()
        scorer.run_batch()
        assert scoring.profile_score("user_id", "ann").ltb_score == once


async def test_what_failed_work_set_aside_is_never_written_with_later_work(
    tmp_path: Path,
) -> None:
    """An event that failed three times (memory pressure, say: here a fault) is held
    only in the transaction of the fold that skipped it; if that fold fails (a
    locked database), the next one decides again."""
    path = tmp_path / "s.db"
    async with Harness(path) as graph:
        scoring = Scoring(graph)
        scorer = with_held(scoring)
        fault = Fault(lambda stored: b'"messageId":"d1"' in stored.body)
        scorer._weigh = fault.wrap(scorer._weigh)  # type: ignore[method-assign]
        await scoring.send(track("Demo Requested", T0, "d1", userId="ann"))
        intents = scorer.store.intents

        def locked(keys: Any) -> Any:
            scorer.store.intents = intents  # type: ignore[method-assign]
            raise StorageBusy("database is locked")

        scorer.store.intents = locked  # type: ignore[method-assign]
        with pytest.raises(StorageBusy):
            scorer.fold_events(10**9)
        fault.on = False  # it passed
        scoring.batch()
        assert held(path) == []
        assert scoring.profile_score("user_id", "ann").ltb_score == 40


async def test_a_profile_row_that_cannot_be_read_is_held_and_the_rest_scored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with Harness(path) as graph:
        scoring = Scoring(graph)
        scorer = with_held(scoring)
        await scoring.send(
            identify(CTO, T0, "1", userId="ann"), identify(CTO, T0, "2", userId="bob")
        )
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE profiles SET activity = 'not json' WHERE user_id = 'ann'")
            db.execute("INSERT INTO profile_changes (uid, reasons) SELECT uid, 4 FROM profiles")
        assert scorer.score_changes() == 2
        (item,) = held(path)
        assert item.kind == "profile"
        assert "row of" in item.error
        assert "cannot be read" in item.error
        assert scorer.store.changes(10) == []
        scoring.batch()  # a batch run over the same row: the same, no crash
        assert [h.key for h in held(path)] == [item.key]


async def test_a_rebuild_holds_the_event_it_fails_on_and_the_swap_brings_it_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.db"
    steps = journey()
    async with Harness(path) as graph:
        await graph.send(*steps)
        await graph.apply()
        assert held(path) == []

        class Poisoned(Extractor):
            def identifiers(self, event: Event) -> list[Identifier]:
                if event.user_id == POISON:
                    raise KeyError("set off by one item")
                return super().identifiers(event)

        monkeypatch.setattr(rebuild_module, "Extractor", Poisoned)
        rebuild_module.rebuild(SqliteBackend(path), graph.rules)
        (item,) = held(path)
        assert (item.component, item.kind) == ("identity", "event")
        without = [s for s in steps if s.get("userId") != POISON]
        assert shape(graph.profiles()) == await built(tmp_path / "without.db", without)


class _Exploding(Sender):
    """A webhook sender with a bug that one record sets off."""

    def __init__(self, inner: Sender, bad: str) -> None:
        self.inner, self.bad = inner, bad
        self.max_batch, self.serial = inner.max_batch, inner.serial

    async def open(self, state: str | None) -> None:
        await self.inner.open(state)

    async def send(self, rows: Sequence[OutboxRow]) -> list[Any]:
        if any(row.uid == self.bad for row in rows):
            raise ValueError("cannot encode this record")
        return await self.inner.send(rows)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def exploding_sender(monkeypatch: pytest.MonkeyPatch) -> str:
    bad = "prf_0005"
    original = delivery.sender_for

    def sender_for(name: str, config: Destination) -> Sender:
        return _Exploding(original(name, config), bad)

    monkeypatch.setattr(delivery, "sender_for", sender_for)
    return bad


async def test_a_record_the_sender_fails_on_is_retried_then_dead_lettered_alone(
    tmp_path: Path, exploding_sender: str
) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        config = webhook(receiver.url, batch_size=16, retry={"attempts": 3, "first_delay": 0.02})
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(16))
            await running.until(lambda: running.status.sent == 15)
            await running.until(lambda: running.status.dead_lettered == 1)
        assert sorted(r["profile"] for r in receiver.records()) == [
            u for u in uids(16) if u != exploding_sender
        ]
        ((uid, (attempts, error)),) = delivery.dead(path, "hook").items()
        assert (uid, attempts) == (exploding_sender, 3)
        assert "the sender failed: ValueError: cannot encode this record" in error
