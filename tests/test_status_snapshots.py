"""What /status and /metrics read is a snapshot: taken at read time, it stays as it was
when the owner moves on, and a reader cannot change the owner through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.progress import LogProgress, LogStatus
from tests.support.delivery import delivering, stage, uids, webhook
from tests.support.fake_receiver import FakeReceiver


def test_a_log_snapshot_stays_as_it_was_and_changes_nothing_of_the_owner() -> None:
    progress = LogProgress()
    progress.advance(10)
    progress.applied("identity", 4)
    before = progress.snapshot()
    assert before == LogStatus(head=10, pending=0, backlog=6, consumers={"identity": 4})

    progress.advance(20)
    progress.hold(3)
    progress.applied("identity", 20)
    progress.applied("scorer", 5)
    assert before == LogStatus(head=10, pending=0, backlog=6, consumers={"identity": 4})

    with pytest.raises(AttributeError):
        before.head = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.consumers["identity"] = 0  # type: ignore[index]
    assert progress.snapshot() == LogStatus(
        head=20, pending=3, backlog=15, consumers={"identity": 20, "scorer": 5}
    )


async def test_a_destination_status_read_before_a_delivery_stays_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.db"
    async with (
        FakeReceiver() as receiver,
        delivering(path, "hook", webhook(receiver.url + "/in")) as running,
    ):
        await running.until(lambda: running.status.state == "idle")
        before = running.actor.status()
        with pytest.raises(AttributeError):
            before.sent = 99  # type: ignore[misc]
        stage(path, "hook", uids(3))
        await running.until(lambda: running.status.sent == 3)
        assert (before.state, before.sent, before.last_success_at) == ("idle", 0, None)
        assert running.actor.status().last_success_at is not None
