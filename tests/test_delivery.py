"""The destination actor against a real HTTP receiver on loopback that fails on cue:
everything is delivered exactly once in the end or dead-lettered with its reason, the
rate limit holds as the receiver counts it, and a destination that is down holds up
no other.

The outbox rows are staged straight into a real SQLite file (tests/test_outbox.py
covers what the scorer stages); the actor, its limiter and the webhook sender run as
in the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from actors.destinations.file import FileDestination
from actors.settings import dec_hook
from storage.sqlite_outbox import SqliteOutboxStore
from tests.support.delivery import (
    FAST_RETRIES,
    dead,
    delivering,
    outbox,
    stage,
    uids,
    webhook,
)
from tests.support.fake_receiver import (
    FakeReceiver,
    Rejection,
    drop,
    hang,
    refuse,
    server_error,
    throttle,
    webhook_rejected,
)


async def test_everything_queued_is_delivered_once_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        async with delivering(path, "hook", webhook(receiver.url + "/in")) as running:
            stage(path, "hook", uids(250))
            await running.until(lambda: running.status.sent == 250)
        assert sorted(r["profile"] for r in receiver.records()) == uids(250)
        assert all(len(r.records) <= 100 for r in receiver.requests)
        assert outbox(path, "hook") == []


async def test_faults_end_in_exactly_once_delivery_or_a_dead_letter_with_the_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        receiver.script(
            throttle(0.2),
            server_error(503),
            drop(),
            hang(),
            webhook_rejected(
                Rejection(3, "invalid email", retryable=False),
                Rejection(7, "try later", retryable=True),
            ),
        )
        config = webhook(receiver.url, batch_size=20, concurrency=1)
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(60))
            await running.until(lambda: running.status.sent == 59)
            await running.until(lambda: running.status.dead_lettered == 1)
        taken = [r["profile"] for r in receiver.records()]
        assert len(taken) == len(set(taken)) == 59
        # One batch a fault, in turn; the fourth record of the last was refused for good.
        (refused,) = dead(path, "hook").items()
        assert refused[1][1] == "invalid email"
        assert refused[0] not in taken
        assert outbox(path, "hook") == []
        answers = [r.answer for r in receiver.requests[:5]]
        assert answers == ["429", "503", "drop", "hang", "webhook_rejected[3, 7]"]


async def test_retries_run_out_into_the_dead_letter_table_with_the_last_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        receiver.fallback = server_error(502)
        config = webhook(receiver.url, retry={**FAST_RETRIES, "attempts": 4})
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(3))
            await running.until(lambda: running.status.dead_lettered == 3)
        letters = dead(path, "hook")
        assert {attempts for attempts, _ in letters.values()} == {4}
        assert all("502" in error and "after 4 attempts" in error for _, error in letters.values())
        tries = [record["profile"] for r in receiver.requests for record in r.records]
        assert sorted(tries) == sorted(uids(3) * 4)


async def test_throttling_counts_no_attempt_and_honours_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        receiver.script(*[throttle(0.1)] * 5)
        config = webhook(receiver.url, retry={**FAST_RETRIES, "attempts": 2})
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(1))
            await running.until(lambda: running.status.sent == 1)
        # Five 429s and no dead letter although only two attempts are allowed.
        assert [r.answer for r in receiver.requests] == ["429"] * 5 + ["200"]
        gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
        assert min(gaps) >= 0.09  # loopback jitter; Retry-After was 0.1 s


async def test_a_batch_refused_as_a_whole_is_split_until_the_bad_record_stands_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        bad = "prf_0005"
        receiver.fail_when(lambda record: record["profile"] == bad, answer=lambda *_: refuse())
        async with delivering(path, "hook", webhook(receiver.url, batch_size=16)) as running:
            stage(path, "hook", uids(16))
            await running.until(lambda: running.status.sent == 15)
            await running.until(lambda: running.status.dead_lettered == 1)
        assert set(dead(path, "hook")) == {bad}
        taken = sorted(r["profile"] for r in receiver.records())
        assert taken == [u for u in uids(16) if u != bad]
        # Halving 16 finds one record in 1 + 2 * log2(16) calls.
        assert len(receiver.requests) == 9


async def test_the_limiter_never_lets_more_than_the_rate_reach_the_receiver(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        config = webhook(
            receiver.url, batch_size=1, concurrency=4, rate={"requests": 5, "per": 0.5}
        )
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(16))
            await running.until(lambda: running.status.sent == 16)
        assert len(receiver.requests) == 16
        assert receiver.max_in_window(0.5) <= 5
        # And it is a limit, not a crawl: some window was full.
        assert receiver.max_in_window(0.5) == 5


async def test_the_daily_cap_stops_calls_for_the_rest_of_the_day(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        config = webhook(receiver.url, batch_size=1, rate={"requests": 100, "per": 1, "daily": 3})
        async with delivering(path, "hook", config) as running:
            stage(path, "hook", uids(5))
            await running.until(lambda: running.status.state == "daily cap reached")
            await anyio.sleep(0.3)
        assert len(receiver.requests) == 3
        assert len(outbox(path, "hook")) == 2
        # The count is kept: a restart the same day makes no more calls.
        async with delivering(path, "hook", config) as running:
            await running.until(lambda: running.status.state == "daily cap reached")
        assert len(receiver.requests) == 3


async def test_a_destination_that_is_down_holds_up_no_other(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as down, FakeReceiver() as up:
        down.fallback = hang()
        async with (
            delivering(path, "down", webhook(down.url, timeout=5)) as stuck,
            delivering(path, "up", webhook(up.url)) as running,
        ):
            stage(path, "down", uids(200))
            stage(path, "up", uids(200))
            await running.until(lambda: running.status.sent == 200)
            assert stuck.status.sent == 0
        assert len(up.records()) == 200


async def test_a_record_error_that_may_pass_is_retried_alone(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    async with FakeReceiver() as receiver:
        receiver.script(webhook_rejected(Rejection(1, "locked", retryable=True)))
        async with delivering(path, "hook", webhook(receiver.url)) as running:
            stage(path, "hook", uids(3))
            await running.until(lambda: running.status.sent == 3)
        assert [len(r.taken) for r in receiver.requests] == [2, 1]
        assert receiver.requests[1].records[0]["profile"] == "prf_0001"


async def test_a_destination_waiting_on_calls_in_flight_does_not_spin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.db"
    reads = 0
    due = SqliteOutboxStore.due

    def counted(store: SqliteOutboxStore, *args: Any) -> Any:
        nonlocal reads
        reads += 1
        return due(store, *args)

    monkeypatch.setattr(SqliteOutboxStore, "due", counted)
    async with FakeReceiver() as receiver:
        receiver.fallback = hang()
        async with delivering(path, "hook", webhook(receiver.url, timeout=5)) as running:
            stage(path, "hook", uids(1))
            await receiver.wait_until(lambda: len(receiver.requests) == 1)
            before = reads
            await anyio.sleep(1.0)
            # The other task has nothing to send but the row in flight: it waits for
            # the call to end (or half a second), it does not read the outbox in a loop.
            assert reads - before <= 4
            assert running.status.sent == 0
            # The hung call answered now, the actor stops at once rather than at the
            # call's timeout.
            await receiver.stop()


async def test_a_file_destination_that_cannot_open_waits_and_the_daemon_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    blocked = tmp_path / "out"
    blocked.write_text("a file where the directory should be")
    config = msgspec.convert(
        {"path": str(blocked), "retry": FAST_RETRIES, "rotate_interval": 0.1},
        FileDestination,
        dec_hook=dec_hook,
    )
    async with delivering(path, "files", config) as running:
        stage(path, "files", uids(3))
        await running.until(lambda: running.status.state == "cannot start")
        assert running.status.last_error is not None
        blocked.unlink()  # the operator fixes it
        await running.until(lambda: running.status.sent == 3)
