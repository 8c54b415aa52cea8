"""The scorer actor's pacing: its fold of the log gives way to ingestion near capacity."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from actors.messages import RunBatch, ScorerMessage
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from actors.scoring import actor as scoring_actor
from actors.scoring.actor import LAST_BATCH, ScorerActor
from actors.scoring.fold import FOLD_BATCH
from actors.scoring.scorer import Scorer
from daemon.config import Config
from storage.log import AppendRequest, EventRecord
from storage.scores import SCORER_CONSUMER
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend

EVENTS = FOLD_BATCH + 1000
"""More than a fold's worth: the scorer would fold at once, were it not for ingestion."""


def tracks(count: int) -> AppendRequest:
    def body(n: int) -> bytes:
        return (
            b'{"type":"track","messageId":"m%d","source":"web","receivedAt":'
            b'"2026-01-01T00:00:00.000Z","timestamp":"2026-01-01T00:00:00.000Z",'
            b'"userId":"u%d","event":"Signed Up"}' % (n, n % 50)
        )

    return AppendRequest(
        "web",
        "2026-01-01T00:00:00.000Z",
        [EventRecord(f"m{n}", "track", "2026-01-01T00:00:00.000Z", body(n)) for n in range(count)],
    )


class Flood:
    """The log writer committing 90% of the time, as under a flood of requests."""

    def __init__(self, progress: LogProgress) -> None:
        self.progress = progress
        self.eased = anyio.Event()

    async def run(self) -> None:
        last = time.monotonic()
        while not self.eased.is_set():
            await anyio.sleep(0.02)
            now = time.monotonic()
            self.progress.advance(self.progress.head, took=0.9 * (now - last))
            last = now


@dataclass
class Scene:
    storage: SqliteStorage
    progress: LogProgress
    flood: Flood
    inbox: Mailbox[ScorerMessage]
    head: int


@asynccontextmanager
async def scorer_under_flood(
    tmp_path: Path, config: Config, last_batch: float | None = None
) -> AsyncIterator[Scene]:
    """A scorer actor with a log of EVENTS unfolded and its last batch run at
    `last_batch` (by default now: the next is an hour away)."""
    storage = await SqliteStorage.open(tmp_path / "leadsync.db")
    try:
        _, head = await storage.append([tracks(EVENTS)])
        await storage.set_meta(LAST_BATCH, str(time.time() if last_batch is None else last_batch))
        progress = LogProgress()
        progress.advance(head)
        inbox = Mailbox[ScorerMessage](10)
        flood = Flood(progress)
        actor = ScorerActor(
            SqliteBackend(storage.path), config, storage.write_gate, inbox, progress, Metrics()
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood.run)
            await anyio.sleep(0.3)  # a window of it, measured from the actor's creation
            ready = anyio.Event()
            tg.start_soon(actor.run, ready.set)
            await ready.wait()
            try:
                yield Scene(storage, progress, flood, inbox, head)
            finally:
                flood.eased.set()
                inbox.close()
    finally:
        await storage.close()


def folded(progress: LogProgress) -> int:
    """How far the scorer has applied the log, as it last reported."""
    return progress.snapshot().consumers.get(SCORER_CONSUMER, 0)


def busy_verdicts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each time the scorer asks whether ingestion is busy, the answer it got: a test
    waits for the scorer to have decided, rather than for time to pass."""
    verdicts: list[bool] = []
    original = ScorerActor._ingestion_busy

    def ingestion_busy(actor: ScorerActor) -> bool:
        verdicts.append(original(actor))
        return verdicts[-1]

    monkeypatch.setattr(ScorerActor, "_ingestion_busy", ingestion_busy)
    return verdicts


async def deferred(verdicts: list[bool], times: int) -> None:
    """Until the scorer has found ingestion busy, and so held its work back, `times`
    times."""
    with anyio.fail_after(20):
        while verdicts.count(True) < times:
            await anyio.sleep(0.02)


def batch_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scorer's checkpoint as each batch run starts (how far the log was folded)."""
    runs: list[int] = []
    original = Scorer.run_batch

    def run_batch(scorer: Scorer, *args: Any, **kwargs: Any) -> Any:
        runs.append(scorer.store.checkpoint())
        return original(scorer, *args, **kwargs)

    monkeypatch.setattr(Scorer, "run_batch", run_batch)
    return runs


async def test_the_fold_waits_while_the_log_writer_is_busy_and_catches_up_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring_actor, "BUSY_WINDOW", 0.2)
    # Rounds and folds at the pace of the busy window, not once a second.
    monkeypatch.setattr(scoring_actor, "IDLE_WAKE", 0.2)
    monkeypatch.setattr(scoring_actor, "FOLD_INTERVAL", 0.2)
    monkeypatch.setattr(scoring_actor, "FOLD_WAIT_LIMIT", 3600.0)
    verdicts = busy_verdicts(monkeypatch)
    async with scorer_under_flood(tmp_path, Config()) as scene:
        progress, flood, head = scene.progress, scene.flood, scene.head
        await deferred(verdicts, 2)
        assert folded(progress) == 0  # it waited: nothing folded
        flood.eased.set()
        with anyio.fail_after(10):
            while folded(progress) < head:
                await anyio.sleep(0.05)


async def test_under_a_flood_that_never_eases_the_fold_waits_a_few_seconds_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion busy all along, and far from the backlog bound: the fold gives way
    for FOLD_WAIT_LIMIT, then folds, so a steady load does not leave it behind."""
    monkeypatch.setattr(scoring_actor, "BUSY_WINDOW", 0.2)
    monkeypatch.setattr(scoring_actor, "FOLD_WAIT_LIMIT", 1.0)
    verdicts = busy_verdicts(monkeypatch)
    async with scorer_under_flood(tmp_path, Config()) as scene:
        progress, head = scene.progress, scene.head
        await deferred(verdicts, 1)
        assert folded(progress) == 0  # it gave way first
        with anyio.fail_after(10):  # flooded all along, and still it folds
            while folded(progress) < head:
                await anyio.sleep(0.05)
        assert verdicts[-1] is True  # ingestion was still found busy


async def test_the_fold_does_not_wait_past_half_the_backlog_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting longer would make the HTTP source refuse events for the scorer's sake."""
    monkeypatch.setattr(scoring_actor, "BUSY_WINDOW", 0.2)
    monkeypatch.setattr(scoring_actor, "FOLD_WAIT_LIMIT", 3600.0)
    config = Config()
    config = msgspec.structs.replace(
        config, http=msgspec.structs.replace(config.http, max_backlog=2 * (EVENTS - 10))
    )
    limit = config.http.max_backlog // 2
    async with scorer_under_flood(tmp_path, config) as scene:
        progress, head = scene.progress, scene.head
        with anyio.fail_after(10):  # flooded all along, and still it folds
            while head - folded(progress) >= limit:
                await anyio.sleep(0.05)


async def test_a_batch_run_folds_what_was_logged_before_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer than a fold's worth of events waiting and the fold's timer far off: a run
    asked for now still folds them first (it once started on the older aggregates)."""
    seen = batch_runs(monkeypatch)
    monkeypatch.setattr(scoring_actor, "FOLD_INTERVAL", 3600.0)
    async with scorer_under_flood(tmp_path, Config()) as scene:
        scene.flood.eased.set()
        with anyio.fail_after(10):  # a fold's worth, then no more for an hour
            while not folded(scene.progress):
                await anyio.sleep(0.05)
        request = tracks(50)
        request = AppendRequest(  # 50 more, ids after the first ones
            "web",
            request.received_at,
            [msgspec.structs.replace(e, message_id=f"n{i}") for i, e in enumerate(request.events)],
        )
        _, newer = await scene.storage.append([request])
        scene.progress.advance(newer)
        run = RunBatch()
        await scene.inbox.send(run)
        with anyio.fail_after(10):
            await run.done.wait()
    assert seen == [newer]


async def test_a_scheduled_run_waits_for_ingestion_to_ease_and_a_requested_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = batch_runs(monkeypatch)
    monkeypatch.setattr(scoring_actor, "BUSY_WINDOW", 0.2)
    verdicts = busy_verdicts(monkeypatch)
    async with scorer_under_flood(tmp_path, Config(), last_batch=0.0) as scene:  # overdue
        await deferred(verdicts, 2)
        assert runs == []  # not while ingestion is flooded
        run = RunBatch()
        await scene.inbox.send(run)
        with anyio.fail_after(20):
            await run.done.wait()
        # Asked for: it ran, once the log was folded to within a fold's worth (the run
        # folds the rest as it goes).
        assert len(runs) == 1
        assert scene.head - runs[0] < FOLD_BATCH
