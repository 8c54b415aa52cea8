"""A destination actor in process over a real SQLite file: outbox rows staged straight
into the file (tests/test_outbox.py covers what the scorer stages), and the actor, its
limiter and its sender running as in the daemon, against a receiver on loopback
(tests/support/fake_receiver.py) that the test makes fail on cue."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from actors.delivery.actor import DestinationActor
from actors.delivery.payload import Payload, encode
from actors.delivery.sender import Sender
from actors.delivery.staging import stage_changes
from actors.delivery.status import DestinationStatus
from actors.destinations.webhook import WebhookDestination
from actors.metrics import Metrics
from actors.settings import dec_hook
from daemon.config import Destination
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import connect
from storage.sqlite_outbox import SqliteOutboxStore

FAST_RETRIES = {"attempts": 10, "first_delay": 0.02, "max_delay": 0.1}


def webhook(url: str, **options: Any) -> WebhookDestination:
    settings: dict[str, Any] = {
        "url": url,
        "secret": "s3cret",
        "timeout": 0.5,
        "retry": FAST_RETRIES,
        "rate": {"requests": 1000, "per": 1},
        **options,
    }
    return msgspec.convert(settings, WebhookDestination, dec_hook=dec_hook)


def stage(path: Path, destination: str, uids: Sequence[str]) -> None:
    """Queue one payload per profile id, due now."""
    db = connect(path, 5)
    try:
        store = SqliteOutboxStore(db)
        rows = [
            (
                zlib.crc32(uid.encode()),  # a profile row of its own for each id
                uid,
                *encode(Payload(uid, {"mk_customer_fit_score": n}, email=f"{uid}@x.io")),
            )
            for n, uid in enumerate(uids)
        ]
        store.begin()
        stage_changes(store, destination, rows, 0.0, 0.0)
        store.commit()
    finally:
        db.close()


def outbox(path: Path, destination: str) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT uid, attempts, last_error FROM outbox WHERE destination = ? ORDER BY uid",
            (destination,),
        ).fetchall()


def dead(path: Path, destination: str) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return {
            uid: (attempts, error)
            for uid, attempts, error in db.execute(
                "SELECT uid, attempts, error FROM dead_letters WHERE destination = ?",
                (destination,),
            )
        }


class Running:
    def __init__(self, actor: DestinationActor) -> None:
        self.actor = actor

    @property
    def status(self) -> DestinationStatus:
        """The actor's status now (as /status would read it)."""
        return self.actor.status()

    async def until(self, condition: Callable[[], bool], limit: float = 20.0) -> None:
        with anyio.fail_after(limit):
            while not condition():
                await anyio.sleep(0.02)


def sender_for(name: str, config: Destination) -> Sender:
    """The destination's own sender (a test may put another in its place)."""
    return config.sender(name)


@asynccontextmanager
async def delivering(path: Path, name: str, config: Destination) -> AsyncIterator[Running]:
    storage = await SqliteStorage.open(path)
    sender = sender_for(name, config)
    backend = SqliteBackend(path)
    actor = DestinationActor(name, config, sender, backend, storage.write_gate, Metrics())
    try:
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            tg.start_soon(actor.run, started.set)
            await started.wait()
            yield Running(actor)
            actor.stop()
    finally:
        await storage.close()


def uids(count: int) -> list[str]:
    return [f"prf_{n:04d}" for n in range(count)]
