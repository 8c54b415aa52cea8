"""The identity graph in process: messages logged through the tracking API's parser
into a real SqliteStorage file, and the merger's `Graph` applying them in batches, each
computed while the one before commits, as the merger's worker does.

`Harness` is what the identity, scorer, outbox and poison tests build on; `shape` and
`built` compare graphs reached in different ways."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from actors import tracking_api
from actors.identity.extract import Extractor
from actors.identity.pipeline import Graph
from actors.identity.settings import IdentitySection
from actors.identity.unit import MergeResult
from actors.messages import Event
from storage.log import AppendRequest, EventRecord
from storage.sqlite import SqliteStorage
from storage.sqlite_connect import connect
from storage.sqlite_graph import SqliteGraphStore
from tests.support.identity_journey import profiles


def records(message: dict[str, Any]) -> tuple[str, list[EventRecord]]:
    """(source, log records) of one message as a source hands it to the log: parsed by the
    tracking API, or a Customer.io event (already an `Event`) as the webhook source makes it.
    `_source` in a message names its source (web by default)."""
    if message.get("source") == "customerio":
        event = msgspec.convert(message, Event)
        return "customerio", [
            EventRecord(event.message_id, event.type, event.received_at, msgspec.json.encode(event))
        ]
    source = message.get("_source", "web")
    body = {k: v for k, v in message.items() if k != "_source"}
    parsed = tracking_api.parse(body["type"], json.dumps(body).encode(), source, datetime.now(UTC))
    assert not parsed.rejected, parsed.rejected
    return source, parsed.events


class SlowCommits(SqliteGraphStore):
    """Commits that take as long as a large batch's: the batch after is computed in the
    meantime, every time, from what the one before left in memory."""

    def commit(self) -> None:
        time.sleep(0.005)
        super().commit()


class Harness:
    """A log file and the merger's graph over it: `send` logs, `apply` merges."""

    def __init__(self, path: Path, rules: IdentitySection | None = None) -> None:
        self.path = path
        self.rules = rules or IdentitySection()
        self.storage: SqliteStorage | None = None
        self.applied = 0
        self.result = MergeResult()

    async def __aenter__(self) -> Harness:
        self.storage = await SqliteStorage.open(self.path)
        self.graph = self.merger()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.storage is not None
        await self.storage.close()

    def merger(self, store: type[SqliteGraphStore] = SlowCommits) -> Graph:
        """As the merger's worker has it: a batch reads through a connection of its
        own, which does not see the batch before until that one has committed."""
        return Graph(
            store(connect(self.path, 5)),
            self.rules,
            Extractor(self.rules),
            reads=SqliteGraphStore(connect(self.path, 5)),
        )

    def restart(self) -> None:
        """A fresh graph on a fresh connection: only what was committed survives."""
        self.graph = self.merger()

    async def send(self, *messages: dict[str, Any]) -> None:
        """Log the messages in this order, one request each, in one commit."""
        assert self.storage is not None
        requests = [
            AppendRequest(source, "now", events) for source, events in map(records, messages)
        ]
        await self.storage.append(requests)

    async def apply(self, batch_size: int = 1000) -> None:
        """Everything logged so far, `batch_size` events a batch, as the merger does:
        each batch computed while the one before commits."""
        assert self.storage is not None
        after = self.graph.store.checkpoint()
        batches = []
        while events := await self.storage.read_events(after, batch_size):
            batches.append(events)
            after = events[-1].seq
        for result in self.graph.apply_all(batches, self.graph.store.checkpoint()):
            self.result.merges += result.merges
            self.result.dropped.update(result.dropped)
            self.result.recomputes += result.recomputes

    def profiles(self) -> dict[str, dict[str, Any]]:
        return profiles(self.path)


def shape(found: dict[str, dict[str, Any]]) -> list[tuple[str, frozenset[str], str]]:
    """What must not depend on order: ids, members, traits, counts (as one sortable key)."""
    return sorted(
        (
            uid,
            frozenset(p["identities"]),
            json.dumps([p["traits"], p["events"], p["sources"]], sort_keys=True),
        )
        for uid, p in found.items()
    )


async def built(
    path: Path, steps: Sequence[dict[str, Any]]
) -> list[tuple[str, frozenset[str], str]]:
    """The shape of a graph built from `steps` in one batch: what any other way of
    applying them must come to."""
    async with Harness(path) as straight:
        await straight.send(*steps)
        await straight.apply()
        return shape(straight.profiles())
