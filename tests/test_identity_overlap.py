"""The merger's overlap: a batch computed while the one before commits must come to
exactly what batches applied strictly in turn come to, and fail as cleanly."""

from __future__ import annotations

import gc
import random
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.identity.rebuild import rebuild
from actors.identity.settings import IdentitySection
from storage.log import StoredEvent
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_graph import SqliteGraphStore
from tests.support.graph import Harness, built, shape
from tests.support.identity_journey import journey

RULES = [IdentitySection(), IdentitySection(limits={"email": 1, "anonymous_id": 2})]


def at(minute: int) -> str:
    return f"2026-08-01T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"


def people(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """A few devices, users and addresses in every combination, out of time order,
    with retries: merges, renames, refused links and re-decisions all happen."""
    anonymous = [f"a{n}" for n in range(rng.randint(2, 6))]
    users = [f"u{n}" for n in range(rng.randint(1, 4))]
    emails = [f"e{n}@example.org" for n in range(rng.randint(1, 3))]
    sent: list[dict[str, Any]] = []
    for n in range(count):
        kind = rng.choice(["identify", "identify", "track", "page", "group", "alias"])
        message: dict[str, Any] = {
            "type": kind,
            "messageId": f"m{n}",
            "timestamp": at(rng.randint(0, 120)),
        }
        if rng.random() < 0.7:
            message["anonymousId"] = rng.choice(anonymous)
        if "anonymousId" not in message or rng.random() < 0.5:
            message["userId"] = rng.choice(users)
        if kind == "identify":
            message["traits"] = {"plan": rng.choice("abc")}
            if rng.random() < 0.5:
                message["traits"]["email"] = rng.choice(emails)
        elif kind == "track":
            message["event"] = "Clicked"
            if rng.random() < 0.3:
                message["context"] = {"traits": {"email": rng.choice(emails)}}
        elif kind == "group":
            message["groupId"] = rng.choice(["g0", "g1"])
            message["traits"] = {"size": rng.randint(1, 9)}
        elif kind == "alias":
            message["userId"] = rng.choice(users)
            message["previousId"] = message.pop("anonymousId", rng.choice(anonymous))
        if sent and rng.random() < 0.05:
            message = dict(rng.choice(sent))  # a client's retry
        sent.append(message)
    return sent


def graph_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every graph table, with row numbers replaced by what they stand for (an
    overlapped run may number profiles differently)."""
    with sqlite3.connect(path) as db:
        key = {i: (k, v) for i, k, v in db.execute("SELECT id, kind, value FROM identities")}
        uid = dict(db.execute("SELECT id, uid FROM profiles").fetchall())
        queries = {
            "identities": "SELECT kind, value, profile, first_ts FROM identities",
            "profiles": "SELECT uid, anchor_ts, anchor_kind, anchor_value, user_id, "
            "account_id, kinds, activity FROM profiles",
            "links": "SELECT a, b, ts, seq FROM identity_links",
            "redirects": "SELECT uid, profile FROM profile_redirects",
            "accounts": "SELECT * FROM accounts",
            "merges": "SELECT survivor, merged, reason, seq FROM identity_merges",
            "changes": "SELECT uid, reasons FROM profile_changes",
            "events": "SELECT node, seq FROM profile_events",
            "checkpoint": "SELECT seq FROM checkpoints WHERE consumer = 'identity'",
        }
        rows = {name: db.execute(sql).fetchall() for name, sql in queries.items()}
    rows["identities"] = [(k, v, uid[p], ts) for k, v, p, ts in rows["identities"]]
    rows["links"] = [(key[a], key[b], ts, seq) for a, b, ts, seq in rows["links"]]
    rows["redirects"] = [(old, uid[p]) for old, p in rows["redirects"]]
    rows["events"] = [(key[node], seq) for node, seq in rows["events"]]
    return {name: sorted(found, key=repr) for name, found in rows.items()}


async def one_at_a_time(harness: Harness, batch_size: int) -> None:
    """Each batch committed before the next is read, as before the overlap."""
    assert harness.storage is not None
    store = harness.graph.store
    while events := await harness.storage.read_events(store.checkpoint(), batch_size):
        result = harness.graph.apply(events, store.checkpoint())
        harness.result.dropped.update(result.dropped)


@pytest.mark.parametrize("seed", range(40))
async def test_overlapped_batches_come_to_what_batches_in_turn_do(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    rules, size = RULES[seed % 2], 1 + seed % 3
    sent = people(rng, rng.randint(6, 24))
    split = rng.randint(0, len(sent))  # two runs: the second starts from stored rows
    async with Harness(tmp_path / "in-turn.db", rules) as in_turn:
        for part in (sent[:split], sent[split:]):
            await in_turn.send(*part)
            await one_at_a_time(in_turn, size)
        expected = graph_tables(in_turn.path)
    async with Harness(tmp_path / "overlapped.db", rules) as overlapped:
        for part in (sent[:split], sent[split:]):
            await overlapped.send(*part)
            await overlapped.apply(size)
        assert graph_tables(overlapped.path) == expected
    assert overlapped.result.dropped == in_turn.result.dropped


async def test_a_committed_batch_is_reported_when_reading_the_next_fails(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*journey())
        assert graph.storage is not None
        first = await graph.storage.read_events(0, 2)

        def locked_after_one() -> Iterator[list[StoredEvent]]:
            yield first
            raise sqlite3.OperationalError("database is locked")

        results = graph.graph.apply_all(locked_after_one(), 0)
        assert next(results).checkpoint == 2
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            next(results)
        assert graph.graph.store.checkpoint() == 2


async def test_a_reader_that_stops_early_leaves_no_transaction_open(tmp_path: Path) -> None:
    """The commit in flight is waited for (and not reported); none is left open, which
    would hold the main file's write lock."""
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*journey())
        assert graph.storage is not None
        batches = [await graph.storage.read_events(seq, 2) for seq in (0, 2, 4)]
        results = graph.graph.apply_all(batches, 0)
        next(results)
        results.close()
        assert graph.graph.store.checkpoint() == 4
        with sqlite3.connect(graph.path, timeout=0) as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock is free
            db.rollback()


async def test_a_rebuild_in_small_batches_on_one_connection_leaves_the_collector_on(
    tmp_path: Path,
) -> None:
    """The rebuild runs in a thread of the daemon's process: pausing the collector for
    all of it would leave the daemon's cyclic garbage uncollected for minutes."""
    steps = journey()
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*steps)
    collecting: list[bool] = []
    rebuild(
        SqliteBackend(tmp_path / "g.db"),
        IdentitySection(batch_size=1),
        progress=lambda done, total: collecting.append(gc.isenabled()),
    )
    assert collecting == [True] * len(steps)
    async with Harness(tmp_path / "g.db") as graph:
        assert shape(graph.profiles()) == await built(tmp_path / "straight.db", steps)


class Interrupted(BaseException):
    """What Ctrl-C raises in the CLI's rebuild: not an Exception."""


class InterruptedWhileWriting(SqliteGraphStore):
    def mark_changed(self, changes: Sequence[tuple[str, int]]) -> None:
        if self.checkpoint() >= 2:  # the second batch, its transaction open
            raise Interrupted
        super().mark_changed(changes)


async def test_an_interrupted_batch_is_rolled_back_after_the_one_before_is_reported(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path / "g.db") as graph:
        await graph.send(*journey())
        assert graph.storage is not None
        batches = [await graph.storage.read_events(seq, 2) for seq in (0, 2)]
        merger = graph.merger(InterruptedWhileWriting)
        results = merger.apply_all(batches, 0)
        assert next(results).checkpoint == 2
        with pytest.raises(Interrupted):
            next(results)
        with sqlite3.connect(graph.path, timeout=0) as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock is free
            db.rollback()
        assert merger.store.checkpoint() == 2
