"""The doorbell: a destination starts on the rows the scorer stages for it as soon as
they are committed, not at its next look at the outbox.

In process, as the daemon wires them (daemon/app.py): the identity graph applied by
the test, the scorer actor and a destination actor sharing one Doorbell, and a real
HTTP receiver. The destination's fallback poll is 30 s here, so a row that arrives
within 10 s came because the bell rang.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

from actors.delivery.actor import DestinationActor
from actors.delivery.doorbell import Bell, Doorbell
from actors.messages import ProfileChanged, RunBatch, ScorerMessage
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from actors.scoring.actor import ScorerActor
from daemon.config import Config
from storage.sqlite_backend import SqliteBackend
from tests.support.delivery import webhook
from tests.support.fake_receiver import FakeReceiver
from tests.support.graph import Harness
from tests.support.scoring import CTO

FALLBACK = 30.0
"""The destination's own look at the outbox: far longer than any wait below."""
ARRIVAL = 10.0
"""What a row is given to reach the receiver (FakeReceiver.wait_until's limit)."""


@dataclass
class Pipeline:
    graph: Harness
    receiver: FakeReceiver
    scorer: Mailbox[ScorerMessage]
    destination: DestinationActor

    async def identify(self, user: str) -> None:
        """An identify applied to the graph, and the hint the identity actor sends."""
        await self.graph.send(
            {"type": "identify", "userId": user, "traits": CTO, "messageId": f"m-{user}"}
        )
        await self.graph.apply()
        await self.scorer.send(ProfileChanged(user, ["traits"], 0))

    async def idle(self) -> None:
        """Until the destination has looked at the outbox, found nothing, and waits."""
        with anyio.fail_after(ARRIVAL):
            while self.destination.status().state != "idle":
                await anyio.sleep(0.02)


@asynccontextmanager
async def pipeline(tmp_path: Path, mode: str) -> AsyncIterator[Pipeline]:
    path = tmp_path / "leadsync.db"
    async with Harness(path) as graph, FakeReceiver() as receiver:
        assert graph.storage is not None
        gate = graph.storage.write_gate
        hook = webhook(receiver.url + "/hook", mode=mode)
        config = msgspec.structs.replace(Config(), destinations={"hook": hook})
        doorbell = Doorbell()
        inbox = Mailbox[ScorerMessage](10)
        scorer = ScorerActor(
            SqliteBackend(path), config, gate, inbox, LogProgress(), Metrics(), doorbell=doorbell
        )
        destination = DestinationActor(
            "hook",
            hook,
            hook.sender("hook"),
            SqliteBackend(path),
            gate,
            Metrics(),
            bell=doorbell.bell("hook"),
            fallback=FALLBACK,
        )
        async with anyio.create_task_group() as tg:
            for actor in (scorer, destination):
                ready = anyio.Event()
                tg.start_soon(actor.run, ready.set)
                await ready.wait()
            try:
                yield Pipeline(graph, receiver, inbox, destination)
            finally:
                destination.stop()
                inbox.close()


def queued(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def test_a_fit_staged_for_a_realtime_destination_wakes_it_at_once(tmp_path: Path) -> None:
    async with pipeline(tmp_path, "realtime") as scene:
        await scene.idle()  # its first look is over: only the bell can bring it sooner
        await scene.identify("ann")
        await scene.receiver.wait_until(lambda: len(scene.receiver.records()) == 1)
        (record,) = scene.receiver.records()
        assert record["user_id"] == "ann"
        assert record["traits"]["mk_customer_fit_segment"] == "very good"


async def test_rows_a_batch_run_releases_wake_their_destination(tmp_path: Path) -> None:
    async with pipeline(tmp_path, "batch") as scene:
        await scene.idle()
        await scene.identify("ann")
        with anyio.fail_after(ARRIVAL):  # staged, and held for the batch run
            while not queued(tmp_path / "leadsync.db"):
                await anyio.sleep(0.02)
        await anyio.sleep(0.2)
        assert scene.receiver.requests == []
        run = RunBatch()
        await scene.scorer.send(run)
        await scene.receiver.wait_until(lambda: len(scene.receiver.records()) == 1)
        assert scene.receiver.records()[0]["user_id"] == "ann"


async def test_rings_while_nobody_listens_are_heard_once() -> None:
    """A ring while the actor is busy is not lost, and a burst of them is one look."""
    bell = Bell()
    bell.ring()
    bell.ring()
    bell.ring()
    with anyio.fail_after(ARRIVAL):
        assert await bell.wait(FALLBACK)  # heard at once, though rung before the wait
    assert not await bell.wait(0.05)  # and only once
    bell.ring()
    with anyio.fail_after(ARRIVAL):
        assert await bell.wait(FALLBACK)  # a ring after a wait is heard by the next
