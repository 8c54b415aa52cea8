"""The loop every durable consumer of the log shares (actors/log_consumer.py): a round
the storage failed is counted and tried again, the checkpoint is published after every
round, and a stop ends it after the round in hand."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from actors import log_consumer
from actors.log_consumer import LogConsumer, Round
from actors.metrics import Metrics
from actors.progress import LogProgress
from storage.errors import StorageBusy


class Scripted(LogConsumer):
    """Plays `script`: each round's outcome, or an exception to raise."""

    def __init__(self, script: list[Round | Exception], stops_at_once: bool = False) -> None:
        super().__init__("scripted", "scripted", LogProgress(), Metrics(), pace=0.01)
        self.script = script
        self.stops_at_once = stops_at_once
        self.stopping = False
        self.rounds: list[bool] = []
        self.seen: list[int | None] = []
        self.idled = 0

    def closing(self) -> bool:
        return self.stopping

    def stopped_during(self) -> bool:
        return self.stops_at_once

    async def round(self, closing: bool) -> Round:
        self.rounds.append(closing)
        self.seen.append(self.progress.snapshot().consumers.get("scripted"))
        step = self.script.pop(0) if self.script else Round.IDLE
        if isinstance(step, Exception):
            raise step
        self.checkpoint += 10
        if not self.script:
            self.stopping = True  # the daemon asks it to stop during this round
        return step

    async def idle(self) -> None:
        self.idled += 1

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await self.follow()


async def test_a_round_the_storage_failed_is_counted_and_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_consumer, "RETRY_AFTER_STORAGE_ERROR", 0.01)
    consumer = Scripted([StorageBusy("database is locked"), Round.FULL, Round.SOME])
    with anyio.fail_after(10):
        await consumer.run(lambda: None)
    errors = consumer.metrics.storage_errors.labels("scripted")._value.get()
    assert errors == 1
    # The failed round committed nothing: its retry starts where it did.
    assert consumer.seen == [None, 0, 10, 20]
    assert consumer.progress.snapshot().consumers["scripted"] == 30
    # Stopped during its last round: one more round, which knows it closes.
    assert consumer.rounds == [False, False, False, True]


async def test_one_that_stops_at_once_ends_after_the_round_in_hand() -> None:
    consumer = Scripted([Round.IDLE, Round.FULL], stops_at_once=True)
    with anyio.fail_after(10):
        await consumer.run(lambda: None)
    assert consumer.rounds == [False, False]
    assert consumer.idled == 1
    assert consumer.progress.snapshot().consumers["scripted"] == 20


async def test_a_storage_failure_while_closing_leaves_the_rest_on_disk() -> None:
    consumer = Scripted([StorageBusy("database is locked")])
    consumer.stopping = True
    with anyio.fail_after(10):
        await consumer.run(lambda: None)
    assert consumer.rounds == [True]
