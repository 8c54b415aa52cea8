"""Durability and overload, proved on the real daemon over loopback HTTP.

The promises under test are the ones a client relies on: a 200 means the event is on
disk and survives kill -9; a retry never stores anything twice; SIGTERM loses nothing
that was acknowledged; and overload is answered with 429 + Retry-After, with memory
bounded, instead of being absorbed until the process falls over.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import source_context
from actors.progress import LogProgress
from actors.source_context import RETRY_AFTER_BACKLOG, RETRY_AFTER_PENDING
from storage.sqlite_connect import log_path
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess
from tests.support.ingestion import serving

SOURCE = "backend"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEYS[SOURCE]}:".encode()).decode()}
MAX_PENDING = 500
STUCK = 20.0
"""Seconds after which a wait has hung: turns a hang into a failure, not a speed limit."""

Batch = list[str]
"""The messageIds of one /v1/batch request; the request body is built from them."""


@dataclass
class Tally:
    """What the client saw, so assertions compare the daemon's word with its disk."""

    acknowledged: set[str] = field(default_factory=set)
    statuses: Counter[int | None] = field(default_factory=Counter)
    """Answers by status code; None counts connection failures (refused, reset)."""
    retry_after: Counter[str | None] = field(default_factory=Counter)
    """Retry-After header of every 429."""


def batches(prefix: str, count: int, size: int) -> list[Batch]:
    return [[f"{prefix}-{b}-{i}" for i in range(size)] for b in range(count)]


def batch_body(ids: Batch, padding: int = 0) -> dict[str, object]:
    return {
        "batch": [
            {
                "type": "track",
                "messageId": message_id,
                "userId": f"user-{message_id}",
                "event": "Durability Checked",
                "properties": {"id": message_id, "padding": "x" * padding},
            }
            for message_id in ids
        ]
    }


async def post_batch(
    session: aiohttp.ClientSession, url: str, ids: Batch, tally: Tally, padding: int = 0
) -> int | None:
    """POST one batch; its status, or None when the connection failed."""
    try:
        async with session.post(
            f"{url}/v1/batch", json=batch_body(ids, padding), headers=AUTH
        ) as response:
            await response.read()
            status: int | None = response.status
            if status == 429:
                tally.retry_after[response.headers.get("Retry-After")] += 1
    except (TimeoutError, aiohttp.ClientConnectionError):
        status = None
    tally.statuses[status] += 1
    if status == 200:
        tally.acknowledged.update(ids)
    return status


async def send_until_acknowledged(
    session: aiohttp.ClientSession,
    url: str,
    work: Iterator[Batch],
    tally: Tally,
    pause: float = 0.02,
    padding: int = 0,
) -> None:
    """A Segment-style client: retry a batch on anything but 200 until it is taken.

    The pause is shorter than Segment's backoff, to keep the tests quick and to press
    the daemon harder than a polite client would.
    """
    for ids in work:
        while await post_batch(session, url, ids, tally, padding) != 200:
            await asyncio.sleep(pause)


def stored_counts(daemon: DaemonProcess) -> dict[str, int]:
    rows = daemon.query(
        "SELECT message_id, count(*) FROM events WHERE source = ? GROUP BY message_id", SOURCE
    )
    return {str(message_id): int(count) for message_id, count in rows}


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when the series has not appeared yet)."""
    _, text = daemon.admin("/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(STUCK):
        while not condition():
            await asyncio.sleep(0.005)


async def test_every_acknowledged_event_survives_kill_9_mid_load_and_none_twice(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    work = batches("kill", count=150, size=20)
    pending_work = iter(work)
    tally = Tally()
    kill_sent = float("inf")
    failed_in_flight = 0
    acknowledged_at_kill: set[str] = set()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed_in_flight
        for ids in pending_work:
            while True:
                started = time.monotonic()
                status = await post_batch(session, daemon.url, ids, tally)
                if status == 200:
                    break
                if status is None and started < kill_sent:
                    failed_in_flight += 1  # it was on its way when the kill came
                await asyncio.sleep(0.02)

    half_sent, killed = asyncio.Event(), asyncio.Event()

    async def caught_by_the_kill(session: aiohttp.ClientSession) -> None:
        """One request sure to be on its way when the kill comes: half its body sent, the
        rest after the kill. (On a busy machine the daemon can have answered every other
        request by then, the client being the slower of the two.) Then retried as any."""
        nonlocal failed_in_flight
        await wait_until(lambda: len(tally.acknowledged) >= 400)
        ids = next(pending_work)
        body = json.dumps(batch_body(ids)).encode()

        async def halves() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            half_sent.set()
            await killed.wait()
            yield body[len(body) // 2 :]

        headers = {**AUTH, "Content-Type": "application/json"}
        try:
            async with session.post(f"{daemon.url}/v1/batch", data=halves(), headers=headers):
                pass
        except (TimeoutError, aiohttp.ClientConnectionError):
            tally.statuses[None] += 1
            failed_in_flight += 1  # it was on its way when the kill came
        while await post_batch(session, daemon.url, ids, tally) != 200:
            await asyncio.sleep(0.02)

    def kill() -> None:
        nonlocal kill_sent
        kill_sent = time.monotonic()
        daemon.kill()

    async def crash_and_restart() -> None:
        await wait_until(lambda: len(tally.acknowledged) >= 400)
        await half_sent.wait()
        acknowledged_at_kill.update(tally.acknowledged)
        await asyncio.to_thread(kill)
        killed.set()
        await asyncio.to_thread(daemon.start)

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        asyncio.timeout(STUCK),
    ):
        await asyncio.gather(
            crash_and_restart(),
            caught_by_the_kill(session),
            *(client(session) for _ in range(6)),
        )

        # A client that lost its answers may resend batches that were already taken:
        # they are acknowledged again and not stored again.
        duplicates_before = metric(daemon, "leadsync_events_duplicate_total", source=SOURCE)
        for ids in work[:3]:
            assert await post_batch(session, daemon.url, ids, tally) == 200
        duplicates_after = metric(daemon, "leadsync_events_duplicate_total", source=SOURCE)

    # The crash hit requests in flight, and the clients had to retry.
    assert failed_in_flight > 0
    assert tally.statuses[None] > 0
    stored = stored_counts(daemon)
    assert len(acknowledged_at_kill) >= 400
    assert acknowledged_at_kill <= set(stored)
    assert set(stored) == tally.acknowledged == {message_id for ids in work for message_id in ids}
    assert set(stored.values()) == {1}
    assert duplicates_after - duplicates_before == 3 * 20
    _, status = daemon.admin("/status")
    [(rows,)] = daemon.query("SELECT count(*) FROM events")
    assert status["events_stored"] == rows == 150 * 20


async def test_sigterm_drains_in_order_and_loses_no_acknowledged_event(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    work = iter(itertools.count())
    tally = Tally()
    sent_after_exit: Counter[int | None] = Counter()
    exited = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        """Send each batch once, and go on until the daemon is gone and refuses one."""
        while True:
            after_exit = exited.is_set()
            number = next(work)
            ids = [f"term-{number}-{i}" for i in range(10)]
            status = await post_batch(session, daemon.url, ids, tally)
            if after_exit:
                sent_after_exit[status] += 1
                return
            if status != 200:
                await asyncio.sleep(0.01)

    async def stop() -> int:
        await wait_until(lambda: len(tally.acknowledged) >= 300)
        code = await asyncio.to_thread(daemon.terminate)
        exited.set()
        return code

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        asyncio.timeout(STUCK),
    ):
        code, *_ = await asyncio.gather(stop(), *(client(session) for _ in range(6)))

    assert code == 0  # drained within shutdown_grace (124 otherwise)
    stored = stored_counts(daemon)
    # Every 200 is on disk, once; and the drain answered every request it committed, so
    # nothing is on disk that its client was told had failed.
    assert set(stored) == tally.acknowledged
    assert set(stored.values()) == {1}
    assert set(tally.statuses) <= {200, 503, None}
    # Once the daemon is gone, nothing answers (and nothing can say 200 and drop it).
    assert sent_after_exit == Counter({None: 6})

    # Sources stop first, so nothing new reaches the log writer once it drains; each
    # actor is asked to stop only once the one before it has finished; admin goes last.
    shutdown = [
        line["event"] if line["event"] != "stopping actor" else line["actor"]
        for line in daemon.log_lines()
        if line["event"] in {"stop signal received; draining", "stopping actor", "stopped"}
    ]
    assert shutdown[:2] == ["stop signal received; draining", "http"]
    assert shutdown[-2:] == ["admin", "stopped"]
    assert "log_writer" in shutdown[2:-2]
    [final] = [line for line in daemon.log_lines() if line["event"] == "stopped"]
    assert (final["exit_code"], final["events_stored"]) == (0, len(stored))


async def test_a_stalled_disk_is_answered_with_429_memory_stays_bounded_and_nothing_is_lost(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    # A long busy_timeout makes the log writer wait for the lock (as it would for a slow
    # disk) instead of failing the group with 503: the pending bound is what answers.
    daemon = make_daemon(
        extra_config='[storage]\nbusy_timeout = "60s"\n',
        http_config=f"max_pending_events = {MAX_PENDING}",
    ).start()
    clients, batch_size = 16, 100
    work = iter(batches("flood", count=clients * 5, size=batch_size))
    tally = Tally()
    rss: list[int] = []
    pending: list[float] = []

    lock = sqlite3.connect(log_path(daemon.database), isolation_level=None, timeout=10)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another process holds the log's write lock
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            asyncio.timeout(STUCK),
            asyncio.TaskGroup() as flood,
        ):
            for _ in range(clients):
                flood.create_task(
                    send_until_acknowledged(session, daemon.url, work, tally, padding=200)
                )
            while tally.statuses[429] < 300:
                rss.append(daemon.rss_bytes())
                pending.append(metric(daemon, "leadsync_log_pending_events"))
                await asyncio.sleep(0.01)
            _, status = await asyncio.to_thread(daemon.admin, "/status")
            acknowledged_while_locked = len(tally.acknowledged)
            lock.execute("ROLLBACK")
    finally:
        lock.close()
    assert acknowledged_while_locked == 0  # nothing could be committed
    # Overload was said, with the delay Segment's clients wait before retrying.
    refused = tally.statuses[429]
    assert tally.retry_after == Counter({str(RETRY_AFTER_PENDING): refused})
    assert metric(daemon, "leadsync_http_backpressure_total", reason="pending") == refused
    assert set(tally.statuses) == {200, 429}
    # Memory held by waiting events is bounded: the bound, plus one batch per request
    # that passed the check at the same moment.
    assert MAX_PENDING <= status["pending_events"] <= MAX_PENDING + clients * batch_size
    assert max(pending) <= MAX_PENDING + clients * batch_size
    assert max(rss) < 200 * 1024 * 1024
    # Once the lock is gone the daemon recovers by itself and every event is in once.
    stored = stored_counts(daemon)
    assert set(stored) == tally.acknowledged
    assert len(stored) == clients * 5 * batch_size
    assert set(stored.values()) == {1}
    assert metric(daemon, "leadsync_log_pending_events") == 0


async def test_a_stalled_consumer_is_answered_with_429_until_it_catches_up(
    tmp_path: Path,
) -> None:
    # In process, so a consumer can be held still: a consumer reports the sequence it has
    # applied to LogProgress, and a stalled one is a checkpoint that stays put.
    progress = LogProgress()
    progress.applied("fast", 0)
    progress.applied("stalled", 0)
    tally = Tally()
    work = batches("backlog", count=5, size=20)
    statuses: list[int | None] = []
    async with (
        serving(tmp_path, "max_backlog = 50", progress) as api,
        aiohttp.ClientSession() as session,
    ):
        url = api.url
        for ids in work[:4]:
            statuses.append(await post_batch(session, url, ids, tally))
            progress.applied("fast", progress.head)  # one consumer keeps up
        statuses.append(await post_batch(session, url, work[4], tally))
        progress.applied("stalled", progress.head)  # the slow one catches up
        statuses.append(await post_batch(session, url, work[3], tally))
        statuses.append(await post_batch(session, url, work[4], tally))
        stored = await api.storage.read_events(0, 1000)

    # 0, 20, 40 behind: taken (under 50); 60 behind: refused until the slowest catches up.
    assert statuses == [200, 200, 200, 429, 429, 200, 200]
    assert tally.retry_after == Counter({str(RETRY_AFTER_BACKLOG): 2})
    assert api.sample("leadsync_http_backpressure_total", reason="backlog") == 2
    assert [json.loads(event.body)["messageId"] for event in stored] == [
        message_id for ids in work for message_id in ids
    ]


async def test_a_consumer_replaying_the_log_on_purpose_does_not_push_back(
    tmp_path: Path,
) -> None:
    # The scorer reads the whole log again after a deploy with new event weights; a
    # big log must not turn that into minutes of 429s for every client.
    progress = LogProgress()
    progress.applied("identity", 0)
    progress.applied("scorer", 0, replaying=True)
    statuses: list[int | None] = []
    async with (
        serving(tmp_path, "max_backlog = 50", progress) as api,
        aiohttp.ClientSession() as session,
    ):
        url = api.url
        for ids in batches("replay", count=5, size=20):
            statuses.append(await post_batch(session, url, ids, Tally()))
            progress.applied("identity", progress.head)
        progress.applied("scorer", 0)  # caught up: its lag counts again
        statuses.append(await post_batch(session, url, ["late"], Tally()))
    assert statuses == [200, 200, 200, 200, 200, 429]


async def test_a_commit_that_never_comes_is_answered_503_and_the_retry_is_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a submission lost (the writer gone between taking and answering it), its
    request must not wait for ever; a retry is safe because the log dedups messageIds."""
    monkeypatch.setattr(source_context, "COMMIT_WAIT_TIMEOUT", 0.3)
    progress = LogProgress()
    tally = Tally()
    async with (
        serving(tmp_path, progress=progress, log_writer=False) as api,  # no writer reads it
        aiohttp.ClientSession() as session,
    ):
        with anyio.fail_after(10):
            status = await post_batch(session, api.url, batches("lost", 1, 5)[0], tally)
    assert status == 503
    assert progress.pending == 0
