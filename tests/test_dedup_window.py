"""Retries are recognised for a span of time (`[storage] dedup_window`), not a count of
events: the structure that remembers them, its rebuild from the log at start, and the
real daemon after more events than the old count window held and a kill -9."""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import urllib.request
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.http_source import BODY_READ_TIMEOUT
from actors.settings import ConfigError
from actors.source_context import COMMIT_WAIT_TIMEOUT
from actors.tracking_api import iso
from daemon.config import parse
from storage import recent_messages, sqlite_log
from storage.log import AppendRequest, AppendResult, EventRecord
from storage.recent_messages import SLICES, RecentMessages
from storage.sqlite import SqliteStorage
from storage.sqlite_connect import log_path
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess

WINDOW = 600.0
INSERT = "INSERT INTO events (source, message_id, type, received_at, body) VALUES (?, ?, ?, ?, ?)"
FILLER = b'{"type":"track","event":"Filler","anonymousId":"a"}'
SPAN = WINDOW / SLICES


def fingerprints(rng: random.Random, count: int) -> list[int]:
    return [rng.getrandbits(64) - (1 << 63) for _ in range(count)]


def test_a_fingerprint_is_found_for_the_window_and_forgotten_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recent_messages, "LIVE_MAX", 50)  # seal often, as under load
    rng = random.Random(7)
    recent = RecentMessages(WINDOW)
    recent.advance(1000.0)
    first = fingerprints(rng, 20)
    recent.add(first)
    later: list[int] = []
    now = 1000.0
    # Group commits every 3 s, each adding others: seals, slice ends, merges.
    while now < 1000.0 + WINDOW - 3:
        now += 3.0
        recent.advance(now)
        assert recent.seen(first) == [True] * 20, now
        assert not any(recent.seen(fingerprints(rng, 20)))  # new ones are new
        batch = fingerprints(rng, 40)
        recent.add(batch)
        later += batch
    recent.advance(1000.0 + WINDOW - 0.001)
    assert recent.seen(first) == [True] * 20
    recent.advance(1000.0 + WINDOW + SPAN)  # at most a slice more
    assert recent.seen(first) == [False] * 20
    added_since = later[-40 * int((WINDOW - SPAN) // 3) :]
    assert all(recent.seen(added_since))


def test_a_long_pause_forgets_everything() -> None:
    recent = RecentMessages(WINDOW)
    recent.advance(0.0)
    recent.add(fingerprints(random.Random(1), 1000))
    recent.advance(SPAN * 3)
    assert len(recent) == 1000
    recent.advance(WINDOW * 50)
    assert len(recent) == 0
    assert recent.nbytes == 0


def record(message_id: str, received_at: str) -> EventRecord:
    return EventRecord(message_id, "track", received_at, b'{"type":"track"}')


async def test_a_restart_reads_the_window_back_by_received_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events in the log with received_at from 15 minutes ago to now, out of order by up
    to half a minute (requests commit in another order than they arrive): after a
    restart every one received within the window is recognised, so is one received a
    little before it (its commit may have come up to RECEIPT_TO_ACK later), and those
    received long before are stored again."""
    path = tmp_path / "leadsync.db"
    await (await SqliteStorage.open(path)).close()
    wall = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    rng = random.Random(3)
    ages = sorted((rng.uniform(0, 900) for _ in range(20_000)), reverse=True)
    jittered = [max(0.0, age + rng.uniform(-30, 30)) for age in ages]
    rows = [
        ("web", f"m{i}", "track", iso(wall - timedelta(seconds=age)), b"{}")
        for i, age in enumerate(jittered)
    ]
    with closing(sqlite3.connect(log_path(path))) as db, db:
        db.executemany(INSERT, rows)
    monkeypatch.setattr(sqlite_log, "wall_clock", wall.timestamp)
    monkeypatch.setattr(sqlite_log, "monotonic", lambda: 5_000.0)
    store = await SqliteStorage.open(path, dedup_window=WINDOW)
    try:
        retries = [AppendRequest("web", "now", [record(f"m{i}", "now")]) for i in range(len(rows))]
        results, _ = await store.append(retries)
    finally:
        await store.close()
    recognised = [result == AppendResult(0, 1) for result in results]
    inside = [i for i, age in enumerate(jittered) if age <= WINDOW + 60]
    # Not recognised: received before the oldest slice kept, less RECEIPT_TO_ACK and
    # the disorder (an event after one received then may have arrived 60 s before it).
    outside = [i for i, age in enumerate(jittered) if age > WINDOW + SPAN + 70 + 60 + 1]
    assert inside
    assert outside
    assert all(recognised[i] for i in inside)
    assert not any(recognised[i] for i in outside)


def test_the_window_is_a_duration_in_the_storage_section() -> None:
    config = parse('[storage]\ndedup_window = "15m"\n', "daemon.toml", {})
    assert float(config.storage.dedup_window) == 900.0
    with pytest.raises(ConfigError, match="dedup_window"):
        parse('[storage]\ndedup_window = "0s"\n', "daemon.toml", {})


def post_batch(daemon: DaemonProcess, ids: list[str]) -> tuple[int, object]:
    body = json.dumps(
        {
            "batch": [
                {"type": "track", "event": "Retried", "userId": "u-1", "messageId": i} for i in ids
            ]
        }
    )
    auth = base64.b64encode(f"{WRITE_KEYS['backend']}:".encode()).decode()
    request = urllib.request.Request(
        daemon.url + "/v1/batch",
        data=body.encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def duplicates(daemon: DaemonProcess) -> float:
    for line in daemon.admin("/metrics")[1].splitlines():
        if line.startswith('leadsync_events_duplicate_total{source="backend"}'):
            return float(line.split()[-1])
    return 0.0


@dataclass(frozen=True)
class Numbered:
    """`count` message ids: `prefix` followed by 0, 1, 2... SQLite makes them itself,
    and logs a million in less than half the time a million rows from Python take."""

    prefix: str
    count: int


def log_events(
    daemon: DaemonProcess, received_at: datetime, message_ids: list[str] | Numbered
) -> None:
    """Write events straight into the stopped daemon's log, as it would have, and move
    the consumers' checkpoints past them, so that its merger has nothing to do."""
    at = iso(received_at)
    with closing(sqlite3.connect(log_path(daemon.database))) as db, db:
        if isinstance(message_ids, Numbered):
            db.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO events (source, message_id, type, received_at, body) "
                "SELECT 'backend', ? || i, 'track', ?, ? FROM n",
                (message_ids.count - 1, message_ids.prefix, at, FILLER),
            )
        else:
            db.executemany(INSERT, (("backend", m, "track", at, FILLER) for m in message_ids))
        [(head,)] = db.execute("SELECT max(seq) FROM events").fetchall()
    with closing(sqlite3.connect(daemon.database)) as db, db:
        db.executemany(
            "INSERT INTO checkpoints (consumer, seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            [("identity", head, at), ("scorer", head, at)],
        )


def test_a_retry_after_a_million_other_events_and_a_kill_9_is_stored_once(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """The old window held the newest 1,000,000 events: a batch acknowledged before
    1,200,000 others was stored a second time when its client retried. Now what counts
    is time: a batch acknowledged within the window is recognised however many came
    after it, across a kill -9; one received an hour ago is a new event."""
    daemon = make_daemon().start()
    daemon.kill()
    old = [f"old-{i}" for i in range(20)]
    log_events(daemon, datetime.now(UTC) - timedelta(hours=1), old)
    daemon.start()
    first = [f"first-{i}" for i in range(20)]
    assert post_batch(daemon, first) == (200, {"success": True})
    daemon.kill()
    # 1,200,000 events after it, as if taken in the seconds before the kill.
    log_events(daemon, datetime.now(UTC), Numbered("other-", 1_200_000))

    daemon.start()
    assert post_batch(daemon, first) == (200, {"success": True})
    assert post_batch(daemon, old) == (200, {"success": True})
    stored = dict(
        daemon.query(
            "SELECT message_id, count(*) FROM events WHERE message_id LIKE 'first-%' "
            "OR message_id LIKE 'old-%' GROUP BY message_id"
        )
    )
    assert {m: stored[m] for m in first} == dict.fromkeys(first, 1)
    assert {m: stored[m] for m in old} == dict.fromkeys(old, 2)
    assert duplicates(daemon) == 20


def test_the_read_back_allows_for_the_longest_wait_for_an_acknowledgement() -> None:
    """The start-up read takes each event as committed RECEIPT_TO_ACK after it arrived:
    that must cover the HTTP source's longest wait between stamping and answering."""
    assert sqlite_log.RECEIPT_TO_ACK >= BODY_READ_TIMEOUT + COMMIT_WAIT_TIMEOUT
