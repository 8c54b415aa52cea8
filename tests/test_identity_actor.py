"""The identity actor in process: it follows the log, and tells the scorer what changed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest
import structlog.testing

from actors import logs
from actors.identity import worker
from actors.identity.actor import IdentityActor
from actors.identity.settings import IdentitySection
from actors.messages import ProfileChanged, ScorerMessage
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from storage.errors import StorageFull
from storage.graph import Change
from storage.log import AppendRequest
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend, SqliteCheckpointer
from tests.support.graph import records
from tests.support.identity_journey import USER, journey


async def merge_journey(path: Path, outbox: Mailbox[ScorerMessage]) -> None:
    """Log the journey, run the actor until it has applied all of it, stop it."""
    storage = await SqliteStorage.open(path)
    requests = [AppendRequest(s, "now", e) for s, e in map(records, journey())]
    _, head = await storage.append(requests)
    progress = LogProgress()
    progress.advance(head)
    # One event a batch: a profile born and absorbed within one batch is never seen
    # (see graph._merge), and here the merges should be ones the scorer hears about.
    actor = IdentityActor(
        SqliteBackend(path),
        IdentitySection(batch_size=1),
        progress,
        Metrics(),
        ("warning", "json"),
        outbox,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(actor.run, lambda: None)
        with anyio.fail_after(30):
            while progress.snapshot().consumers.get("identity") != head:
                await anyio.sleep(0.01)
        actor.stop()
    await storage.close()


async def test_changed_profiles_are_recorded_durably_and_offered_to_the_scorer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "leadsync.db"
    outbox = Mailbox[ScorerMessage](100)
    await merge_journey(path, outbox)

    offered: dict[str, set[str]] = {}
    while True:
        try:
            change = outbox.receiver.receive_nowait()
        except anyio.WouldBlock:
            break
        assert isinstance(change, ProfileChanged)
        offered.setdefault(change.profile_id, set()).update(change.reasons)

    with sqlite3.connect(path) as db:
        (survivor,) = db.execute(
            "SELECT p.uid FROM profiles p JOIN identities i ON i.profile = p.id "
            "WHERE i.kind = 'user_id' AND i.value = ?",
            (USER,),
        ).fetchone()
        recorded: dict[str, int] = {}
        for uid, reasons in db.execute("SELECT uid, reasons FROM profile_changes"):
            recorded[uid] = recorded.get(uid, 0) | reasons
    # The durable record: the surviving profile, and each profile merged into it.
    assert Change(recorded[survivor]) & Change.MERGE
    assert Change(recorded[survivor]) & Change.TRAITS
    gone = {uid for uid, flags in recorded.items() if Change(flags) & Change.MERGED_AWAY}
    # The mobile's: it had a profile of its own until the login joined it. The email
    # and the user id joined the desktop's on the events that first named them.
    assert len(gone) == 1
    assert survivor not in gone
    # The hint the scorer reads first says the same.
    assert {"merge", "traits", "activity"} <= offered[survivor]
    assert all("merged_away" in offered[uid] for uid in gone)


async def test_a_full_scorer_inbox_never_stalls_the_merger(tmp_path: Path) -> None:
    outbox = Mailbox[ScorerMessage](1)  # nobody reads it
    await merge_journey(tmp_path / "leadsync.db", outbox)
    assert outbox.depth() == 1


def test_a_worker_refused_a_lower_priority_runs_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's @resources filter refuses setpriority with EPERM; the merger must
    still start (it once broke the pool, and the daemon never became ready)."""

    def refused(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "nice", refused)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # not this test process's
    monkeypatch.setattr(logs, "configure", lambda *_: None)  # nor its logging
    monkeypatch.setattr(worker, "_nice_refused", None)
    monkeypatch.setattr(worker, "_state", None)
    monkeypatch.setattr(worker, "checkpoint_every", lambda *_: None)  # no thread left over
    worker.initialize(
        os.getppid(), SqliteBackend(tmp_path / "leadsync.db")
    )  # its "daemon" is alive
    asyncio.run(_migrated(tmp_path / "leadsync.db"))
    with structlog.testing.capture_logs() as logged:
        assert (
            worker.start(SqliteBackend(tmp_path / "leadsync.db"), IdentitySection(), "info", "json")
            == 0
        )
    assert worker._state is not None
    worker._state.close()
    [line] = [e for e in logged if "priority" in e["event"]]
    assert line["event"] == "merger worker runs at the daemon's priority: lowering it was refused"
    assert "Operation not permitted" in line["error"]


async def _migrated(path: Path) -> None:
    await (await SqliteStorage.open(path)).close()


async def _logged(path: Path) -> int:
    storage = await SqliteStorage.open(path)
    _, head = await storage.append([AppendRequest(s, "now", e) for s, e in map(records, journey())])
    await storage.close()
    return head


def test_a_worker_call_reports_the_batches_committed_before_one_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call applies batch after batch; when one fails (a full disk), those committed
    before it are reported all the same, and the failed one is tried again next time."""
    path = tmp_path / "leadsync.db"
    head = asyncio.run(_logged(path))
    monkeypatch.setattr(logs, "configure", lambda *_: None)
    monkeypatch.setattr(worker, "_state", None)
    worker.start(SqliteBackend(path), IdentitySection(batch_size=2), "info", "json")
    merger = worker._state
    assert merger is not None
    commit, commits = merger.graph.store.commit, []

    def full_from_the_second() -> None:
        commits.append(1)
        if len(commits) >= 2:
            raise StorageFull("database or disk is full")
        commit()

    monkeypatch.setattr(merger.graph.store, "commit", full_from_the_second)
    try:
        with structlog.testing.capture_logs() as logged:
            first = worker.apply_next(0)
        assert [e["event"] for e in logged] == [
            "identity batch not applied; the next call starts from it"
        ]
        assert first is not None
        assert (first.checkpoint, first.applied, len(first.seconds)) == (2, 2, 1)
        with pytest.raises(StorageFull, match="full"):
            worker.apply_next(2)
        monkeypatch.setattr(merger.graph.store, "commit", commit)  # space freed
        rest = worker.apply_next(2)
        assert rest is not None
        assert (rest.checkpoint, rest.applied, len(rest.seconds)) == (
            head,
            head - 2,
            (head - 1) // 2,
        )
        assert worker.apply_next(head) is None
    finally:
        merger.close()


class CountedCheckpoints(SqliteBackend):
    """Counts the checkpoints its checkpointer finished."""

    done = 0

    def checkpointer(self) -> SqliteCheckpointer:
        real = super().checkpointer()
        backend = self

        class Counted(SqliteCheckpointer):
            def checkpoint(self) -> None:
                real.checkpoint()
                object.__setattr__(backend, "done", backend.done + 1)

            def close(self) -> None:
                real.close()

        return Counted(real._db)


def test_the_worker_checkpoints_the_main_file_so_its_wal_is_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merger writes tens of MB a batch with checkpoints on commit turned off: its
    worker's thread copies them back, so the next batch starts the WAL over instead
    of growing it."""
    monkeypatch.setattr(worker, "CHECKPOINT_SECONDS", 0.05)
    path = tmp_path / "g.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE t (x BLOB)")

    def batch() -> int:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO t VALUES (randomblob(1000))", [()] * 2000)
        db.execute("COMMIT")
        return path.with_name("g.db-wal").stat().st_size

    first = batch()
    assert batch() > 1.5 * first  # nobody checkpoints: it grows
    stop = threading.Event()
    backend = CountedCheckpoints(path)
    thread = threading.Thread(target=worker.checkpoint_every, args=(backend, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while path.stat().st_size < 4_000_000:  # the rows copied back into the file
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.01)
        # One whole checkpoint after that (the copy seen may be one whose restart of
        # the WAL has not happened yet).
        after = backend.done
        while backend.done < after + 2:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.01)
        grown = path.with_name("g.db-wal").stat().st_size
        assert batch() <= grown
    finally:
        stop.set()
        thread.join()
        db.close()
