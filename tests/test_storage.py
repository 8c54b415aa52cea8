"""The SQLite event log: migrations, deduplication, all-or-nothing commits, group commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from actors.log_writer import LogWriter
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from actors.submission import NotLogged, Submission
from actors.tracking_api import iso
from storage import sqlite_log
from storage.errors import LogBehind, SchemaTooNew, StorageBusy, StorageRefused
from storage.log import AppendRequest, AppendResult, EventRecord, Rejected
from storage.migrations import LOG_MIGRATIONS, MIGRATIONS, migrate
from storage.sqlite import SqliteStorage
from storage.sqlite_connect import connect, log_path

NOW = iso(datetime.now(UTC))
"""received_at of the test's events: retries are recognised for a time after it, also
after a restart, which reads the window back by received_at."""


def record(message_id: str) -> EventRecord:
    return EventRecord(message_id, "track", NOW, b'{"type":"track"}')


def request(source: str, *message_ids: str, rejected: Sequence[Rejected] = ()) -> AppendRequest:
    return AppendRequest(source, NOW, [record(m) for m in message_ids], rejected)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    store = await SqliteStorage.open(tmp_path / "leadsync.db")
    yield store
    await store.close()


async def test_open_migrates_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "db" / "leadsync.db"
    for _ in range(2):
        store = await SqliteStorage.open(path)
        await store.close()
    for file, migrations in ((path, MIGRATIONS), (log_path(path), LOG_MIGRATIONS)):
        with closing(sqlite3.connect(file)) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (len(migrations),)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            assert ("events" in tables) == (file != path)


@pytest.mark.parametrize("events_file", [False, True])
async def test_a_database_from_a_newer_leadsync_is_refused(
    tmp_path: Path, events_file: bool
) -> None:
    path = tmp_path / "leadsync.db"
    newer = len(LOG_MIGRATIONS if events_file else MIGRATIONS) + 1
    with closing(sqlite3.connect(log_path(path) if events_file else path)) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(SchemaTooNew, match="newer than this leadsync knows"):
        await SqliteStorage.open(path)


def old_layout(path: Path) -> None:
    """A database as leadsync wrote it before the log had its own file (schema 4)."""
    with closing(sqlite3.connect(path)) as db:
        for script in MIGRATIONS[:4]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 4")
        db.executemany(
            "INSERT INTO events (source, message_id, type, received_at, body) "
            "VALUES ('web', ?, 'track', 't', ?)",
            [(f"m{i}", b"{}") for i in range(1, 4)],
        )
        db.execute(
            "INSERT INTO quarantine (source, received_at, batch_index, reason, body) "
            "VALUES ('web', 't', 2, 'bad', x'7b7d')"
        )
        db.execute("INSERT INTO checkpoints VALUES ('identity', 3, 't')")
        db.commit()


def test_a_migration_another_process_applied_meanwhile_is_not_applied_again(
    tmp_path: Path,
) -> None:
    """A daemon starting and an offline `leadsync identity rebuild` may both find the
    same file behind; each migration is decided again under the write lock."""
    path = tmp_path / "leadsync.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as first:
        with closing(sqlite3.connect(path, isolation_level=None)) as second:
            # The other process reads the same version, then applies 2 before us.
            migrate(first, path, MIGRATIONS, {2: lambda: migrate(second, path, MIGRATIONS[:2])})
        assert first.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


async def test_the_log_of_an_older_database_moves_to_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "leadsync.db"
    old_layout(path)
    store = await SqliteStorage.open(path)
    try:
        assert [(e.seq, e.source) for e in await store.read_events(0, 10)] == [
            (1, "web"),
            (2, "web"),
            (3, "web"),
        ]
        assert (await store.quarantined(5))[0] == 1
        results, head = await store.append([request("web", "m3", "m4")])
        assert (results, head) == ([AppendResult(1, 1)], 4)  # deduplicated across the move
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events'"
        ).fetchone() == (0,)
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


def test_an_older_database_can_be_read_before_the_daemon_moves_its_log(tmp_path: Path) -> None:
    """A command run on it between the upgrade and the daemon's first start."""
    path = tmp_path / "leadsync.db"
    old_layout(path)
    with closing(connect(path, 5)) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (3,)
    assert not log_path(path).exists()


async def test_a_move_interrupted_after_the_copy_is_finished_without_duplicates(
    tmp_path: Path,
) -> None:
    """The copy commits in the log's file before the old tables go from the other: a
    crash between the two leaves rows in both, and the next start copies again."""
    path = tmp_path / "leadsync.db"
    old_layout(path)
    with closing(sqlite3.connect(log_path(path))) as db:
        db.executescript(LOG_MIGRATIONS[0])
        db.execute(f"PRAGMA user_version = {len(LOG_MIGRATIONS)}")
        db.execute(f"ATTACH DATABASE '{path}' AS old")
        db.execute("INSERT INTO events SELECT * FROM old.events")
        db.execute("INSERT INTO quarantine SELECT * FROM old.quarantine")
        db.commit()
    store = await SqliteStorage.open(path)
    try:
        assert await store.log_head() == 3
        assert len(await store.read_events(0, 10)) == 3
        assert (await store.quarantined(5))[0] == 1
    finally:
        await store.close()


async def test_a_log_that_ends_before_the_checkpoints_is_refused(tmp_path: Path) -> None:
    """A log restored from an older backup than the database, or deleted: the merger
    would skip the new events that take the old sequence numbers."""
    path = tmp_path / "leadsync.db"
    old_layout(path)
    store = await SqliteStorage.open(path)
    await store.close()
    for leftover in tmp_path.glob("leadsync-events.db*"):
        leftover.unlink()
    with pytest.raises(LogBehind, match=r"leadsync-events\.db ends at event 0, but identity"):
        await SqliteStorage.open(path)


async def test_an_append_does_not_wait_for_a_writer_of_the_other_file(tmp_path: Path) -> None:
    """The merger's and the scorer's transactions (BEGIN IMMEDIATE on a connection with
    the log attached) leave the log's write lock free for group commits."""
    store = await SqliteStorage.open(tmp_path / "leadsync.db", busy_timeout=0.05)
    merger = connect(store.path, busy_timeout=0.05)
    try:
        merger.execute("BEGIN IMMEDIATE")
        merger.execute("SELECT count(*) FROM events").fetchone()
        merger.execute("INSERT INTO meta VALUES ('k', 'v')")
        results, head = await store.append([request("web", "m1")])
        assert (results, head) == ([AppendResult(1, 0)], 1)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            merger.execute(
                "INSERT INTO events (source, message_id, type, received_at, body) "
                "VALUES ('web', 'x', 'track', 't', x'00')"
            )
        merger.execute("COMMIT")
    finally:
        merger.close()
        await store.close()


async def test_append_stores_once_per_source_and_message_id(storage: SqliteStorage) -> None:
    results, head = await storage.append(
        [request("web", "m1", "m2"), request("web", "m2", "m3"), request("ios", "m1")]
    )
    # m2 repeats within one group commit; m1 from another source is another message.
    assert results == [AppendResult(2, 0), AppendResult(1, 1), AppendResult(1, 0)]
    assert head == 4
    results, head = await storage.append([request("web", "m1", "m3")])
    assert results == [AppendResult(0, 2)]
    assert head == 4
    events = await storage.read_events(after=0, limit=10)
    assert [(e.seq, e.source) for e in events] == [(1, "web"), (2, "web"), (3, "web"), (4, "ios")]
    assert [e.seq for e in await storage.read_events(after=2, limit=1)] == [3]


async def test_a_retry_after_a_restart_is_still_recognised(tmp_path: Path) -> None:
    """The messageIds that deduplicate retries are read back from the log at start."""
    path = tmp_path / "leadsync.db"
    store = await SqliteStorage.open(path)
    await store.append([request("web", "m1", "m2")])
    await store.close()
    store = await SqliteStorage.open(path)
    try:
        assert await store.append([request("web", "m2", "m3")]) == ([AppendResult(1, 1)], 3)
    finally:
        await store.close()


async def test_rejects_go_to_quarantine_in_the_same_commit(storage: SqliteStorage) -> None:
    bad = Rejected(1, "event: a track call needs the event name", b'{"type":"track"}')
    await storage.append([request("web", "ok", rejected=[bad])])
    total, rows = await storage.quarantined(limit=5)
    assert total == 1
    assert rows[0].batch_index == 1
    assert rows[0].reason == bad.reason
    assert rows[0].body == '{"type":"track"}'
    assert rows[0].source == "web"


async def test_a_failed_group_stores_nothing(storage: SqliteStorage) -> None:
    """All or nothing: the second request breaks the transaction, so the first is not kept
    either — every waiting client is told to retry, and the retry stores it once."""
    broken = AppendRequest("web", "t", [EventRecord("m2", "track", "t", None)])  # type: ignore[arg-type]
    with pytest.raises(StorageRefused):
        await storage.append([request("web", "m1"), broken])
    assert await storage.log_head() == 0
    results, _ = await storage.append([request("web", "m1")])
    assert results == [AppendResult(1, 0)]


async def test_maintenance_truncates_the_wal_and_trims_the_quarantine(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_log, "QUARANTINE_KEEP", 3)
    bad = [Rejected(i, f"bad {i}", b"{}") for i in range(5)]
    await storage.append([request("web", *[f"m{i}" for i in range(500)], rejected=bad)])
    wal = Path(f"{log_path(storage.path)}-wal")
    assert wal.stat().st_size > 0
    await storage.maintain()
    assert wal.stat().st_size == 0
    total, rows = await storage.quarantined(limit=10)
    assert total == 3
    assert [r.reason for r in rows] == ["bad 4", "bad 3", "bad 2"]


async def test_maintenance_does_not_hold_group_commits_for_a_reader_of_the_log(
    tmp_path: Path,
) -> None:
    """The merger reads the log inside its write transactions. A TRUNCATE checkpoint
    waits for such a reader with the log's gate held, so it waits briefly and leaves
    the rest for next time, rather than hold ingestion for the busy timeout."""
    store = await SqliteStorage.open(tmp_path / "leadsync.db", busy_timeout=30)
    merger = connect(store.path, busy_timeout=30)
    try:
        await store.append([request("web", "m1")])
        merger.execute("BEGIN")
        merger.execute("SELECT count(*) FROM events").fetchone()  # a snapshot of the log
        await store.append([request("web", "m2")])
        with anyio.fail_after(10):  # a bound on a hang: 30 s was the old wait
            await store.maintain()
            assert await store.append([request("web", "m3")]) == ([AppendResult(1, 0)], 3)
        merger.execute("COMMIT")
        await store.maintain()
        assert Path(f"{log_path(store.path)}-wal").stat().st_size == 0
    finally:
        merger.close()
        await store.close()


@pytest.mark.parametrize("events_file", [False, True])
async def test_probe_writable_fails_while_another_process_holds_the_write_lock(
    tmp_path: Path, events_file: bool
) -> None:
    store = await SqliteStorage.open(tmp_path / "leadsync.db", busy_timeout=0.1)
    try:
        await store.probe_writable()
        file = log_path(store.path) if events_file else store.path
        holder = sqlite3.connect(file, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageBusy, match="locked"):
            await store.probe_writable()
        holder.execute("ROLLBACK")
        holder.close()
        await store.probe_writable()
    finally:
        await store.close()


class CountingStorage(SqliteStorage):
    """Counts transactions, and can hold the first one until released."""

    appends: list[int]
    gate: anyio.Event

    async def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        self.appends.append(len(requests))
        await self.gate.wait()
        return await super().append(requests)


async def run_writer(storage: SqliteStorage, body: Callable[[Mailbox[Submission]], object]) -> None:
    mailbox: Mailbox[Submission] = Mailbox(1000)
    writer = LogWriter(storage, mailbox, LogProgress(), Metrics(), maintenance_interval=3600)
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(writer.run, ready.set)
        await ready.wait()
        await body(mailbox)  # type: ignore[misc]
        mailbox.close()


async def test_concurrent_requests_share_one_commit(tmp_path: Path) -> None:
    """Group commit: while one transaction is being written, the requests that arrive
    queue up, and the next transaction takes all of them."""
    store = await CountingStorage.open(tmp_path / "leadsync.db")
    store.appends, store.gate = [], anyio.Event()
    results: list[AppendResult] = []

    async def send_fifty(mailbox: Mailbox[Submission]) -> None:
        async def one(i: int) -> None:
            submission = Submission(request("web", f"a{i}", f"b{i}"))
            await mailbox.send(submission)
            results.append(await submission.wait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            with anyio.fail_after(5):
                while not store.appends:  # the first commit is under way, and held
                    await anyio.sleep(0.001)
            for i in range(1, 50):
                tg.start_soon(one, i)
            with anyio.fail_after(5):
                while mailbox.depth() < 49:  # the other 49 queue behind it
                    await anyio.sleep(0.001)
            store.gate.set()

    try:
        await run_writer(store, send_fifty)
    finally:
        await store.close()
    assert results == [AppendResult(2, 0)] * 50
    assert sum(store.appends) == 50
    assert store.appends == [1, 49]


async def test_a_failed_commit_tells_every_waiting_client_and_the_writer_carries_on(
    tmp_path: Path,
) -> None:
    store = await SqliteStorage.open(tmp_path / "leadsync.db", busy_timeout=0.05)
    holder = sqlite3.connect(log_path(store.path), isolation_level=None)

    async def locked_then_free(mailbox: Mailbox[Submission]) -> None:
        holder.execute("BEGIN IMMEDIATE")
        first = Submission(request("web", "m1"))
        await mailbox.send(first)
        with pytest.raises(NotLogged, match="locked"):
            await first.wait()
        holder.execute("ROLLBACK")
        second = Submission(request("web", "m1"))
        await mailbox.send(second)
        assert await second.wait() == AppendResult(1, 0)

    try:
        await run_writer(store, locked_then_free)
    finally:
        holder.close()
        await store.close()


async def test_a_write_cancelled_while_waiting_for_the_lock_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """/readyz gives its probe 2 s; if that ran out while BEGIN waited for the lock,
    the BEGIN still happened in aiosqlite's thread and every later append failed."""
    store = await SqliteStorage.open(tmp_path / "leadsync.db", busy_timeout=2)
    try:
        holder = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
        with anyio.move_on_after(0.2) as probe:
            await store.probe_writable()  # its BEGIN gets the lock at 0.5 s
        assert probe.cancelled_caught
        holder.close()
        await store.append([request("web", "after-the-timeout")])
        assert await store.log_head() == 1
    finally:
        await store.close()
