"""`leadsync backup` under load and `leadsync restore`, and the log's retention trim,
as an operator sees them: through the command line and a real daemon. A command that
sets the scene or is run again runs in the test's process; those the test is about, and
those where a lock, a pid or a log line is what counts, in a process of their own."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from daemon import cli
from daemon.datadir import DataDirLock
from storage import sqlite_backup, sqlite_connect
from storage.log import AppendRequest, EventRecord
from storage.sqlite import SqliteStorage
from storage.sqlite_backup import check_backup
from storage.sqlite_connect import connect, log_path
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.posting import post


def test_a_backup_taken_under_load_restores_every_event_acknowledged_before_it(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    acknowledged: list[tuple[float, list[str]]] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            ids = [f"m-{n}-{i}" for i in range(50)]
            batch = [
                {"type": "track", "userId": f"u{n % 100}", "event": "Page Viewed", "messageId": m}
                for m in ids
            ]
            if post(daemon, batch) == 200:
                acknowledged.append((time.monotonic(), ids))
            n += 1

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        wait_for(lambda: len(acknowledged) >= 20)
        started = time.monotonic()
        before = [m for at, ids in list(acknowledged) if at < started for m in ids]
        made = leadsync("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
        ended = time.monotonic()
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) > count + 5)
    finally:
        stop.set()
        sender.join(30)
    assert made.returncode == 0, made.stderr
    assert "leadsync.db" in made.stdout
    assert "leadsync-events.db" in made.stdout
    after = [m for at, ids in acknowledged if at > ended for m in ids]
    again = leadsync_here("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert again.returncode == 73
    assert "back up into an empty directory" in again.stderr

    refused = leadsync_here(
        "restore", str(tmp_path / "backup"), "--config", str(daemon.config_path)
    )
    assert refused.returncode == 75
    assert "stop it first" in refused.stderr
    assert daemon.terminate() == 0

    restored = leadsync("restore", str(tmp_path / "backup"), "--config", str(daemon.config_path))

    assert restored.returncode == 0, restored.stderr
    assert "the files it replaced are in" in restored.stdout
    daemon.start()
    stored = {event["messageId"] for event in daemon.events()}
    assert set(before) <= stored
    assert not set(after) & stored  # the restore replaced the files
    assert post(daemon, [{"type": "identify", "userId": "new", "messageId": "after"}]) == 200
    assert "after" in {event["messageId"] for event in daemon.events()}


def test_a_forget_committing_between_the_two_copies_is_in_both_files_of_the_backup(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann: list[dict[str, Any]] = [
        {"type": "identify", "userId": "ann-1", "traits": {"email": "ann@initech.com"}},
        {"type": "track", "userId": "ann-1", "event": "Demo Requested"},
    ]
    assert post(daemon, ann) == 200
    wait_for(lambda: daemon.admin("/v1/profiles/user_id/ann-1")[0] == 200)
    config = ["--config", str(daemon.config_path)]
    forgot: list[Any] = []
    real_open = sqlite_connect.open_connection

    def forget_before_the_log_is_copied(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == log_path(daemon.database) and not forgot:
            forgot.append(leadsync("forget", "user_id:ann-1", *config))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sqlite_backup, "open_connection", forget_before_the_log_is_copied)
    assert cli.main(["backup", str(tmp_path / "backup"), *config]) == 0
    [forget] = forgot
    assert "forgot user_id:ann-1 in the running daemon" in forget.stdout, forget.stderr

    backup = tmp_path / "backup"
    with closing(sqlite3.connect(backup / "leadsync-events.db")) as events:
        bodies = [bytes(b) for (b,) in events.execute("SELECT body FROM events")]
    assert not [body for body in bodies if b"ann-1" in body]
    with closing(sqlite3.connect(backup / "leadsync.db")) as main:
        profile = main.execute("SELECT count(*) FROM identities WHERE value = 'ann-1'")
        assert profile.fetchone() == (0,)
        assert main.execute("SELECT count(*) FROM suppressions").fetchone() == (2,)


def test_restore_refuses_a_directory_without_both_files(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    assert daemon.terminate() == 0
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "leadsync.db").write_bytes(b"")
    result = leadsync_here("restore", str(tmp_path / "half"), "--config", str(daemon.config_path))
    assert result.returncode == 65
    assert "leadsync-events.db is missing" in result.stderr
    daemon.start()  # untouched


def test_restore_is_refused_while_another_process_holds_the_data_dir(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    made = leadsync_here("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert made.returncode == 0, made.stderr
    assert daemon.terminate() == 0
    # A daemon systemd is starting: the lock taken, no file open yet.
    lock = DataDirLock.take(str(daemon.database.parent))
    try:
        refused = leadsync("restore", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    finally:
        lock.release()
    assert refused.returncode == 75, refused.stderr
    assert f"(pid {os.getpid()}); stop it first" in refused.stderr
    assert not list(daemon.database.parent.glob("before-restore-*"))
    restored = leadsync_here(
        "restore", str(tmp_path / "backup"), "--config", str(daemon.config_path)
    )
    assert restored.returncode == 0, restored.stderr


def test_a_daemon_started_while_a_restore_runs_refuses_to_run(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = leadsync_here("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert made.returncode == 0, made.stderr
    assert daemon.terminate() == 0
    codes: list[int | None] = []
    real_restore = sqlite_backup.restore

    def restore_while_systemd_restarts_the_daemon(source: Path, database: Path) -> Path:
        daemon.start(wait=False)
        process = daemon.process
        assert process is not None
        wait_for(lambda: process.poll() is not None or ready(daemon), timeout=60)
        codes.append(process.poll())
        daemon.stop_quietly()
        return real_restore(source, database)

    monkeypatch.setattr(sqlite_backup, "restore", restore_while_systemd_restarts_the_daemon)
    code = cli.main(["restore", str(tmp_path / "backup"), "--config", str(daemon.config_path)])
    assert code == 0
    assert codes == [77], daemon.log()
    daemon.start()  # the lock is the restore's no longer


def ready(daemon: DaemonProcess) -> bool:
    try:
        return daemon.admin("/readyz")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    "command",
    [
        ["forget", "email:ann@example.com"],
        ["unforget", "email:ann@example.com"],
        ["identity", "rebuild"],
    ],
)
def test_offline_commands_are_refused_while_another_process_holds_the_data_dir(
    daemon: DaemonProcess, command: list[str]
) -> None:
    assert daemon.terminate() == 0  # nobody answers at the admin address
    lock = DataDirLock.take(str(daemon.database.parent))
    try:
        refused = leadsync(*command, "--config", str(daemon.config_path))
    finally:
        lock.release()
    assert refused.returncode == 75, refused.stdout + refused.stderr
    assert f"(pid {os.getpid()}) but does not answer at the admin address" in refused.stderr


class Crash(BaseException):
    """The machine losing power: nothing after it runs, no handler sees it."""


@pytest.mark.parametrize("placed", [0, 1])
def test_a_restore_cut_short_loses_no_file_and_nothing_starts_until_it_is_run_again(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placed: int
) -> None:
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "before"}]) == 200
    made = leadsync_here("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert made.returncode == 0, made.stderr
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "after"}]) == 200
    assert daemon.terminate() == 0
    moved: list[str] = []
    rename, replace = os.rename, os.replace

    def crash_after(real: Callable[..., None]) -> Callable[..., None]:
        def move(source: str | Path, target: str | Path) -> None:
            if str(source).endswith(".restoring"):
                if len(moved) == placed:
                    raise Crash
                moved.append(str(target))
            real(source, target)

        return move

    monkeypatch.setattr(os, "rename", crash_after(rename))
    monkeypatch.setattr(os, "replace", crash_after(replace))
    with pytest.raises(Crash):
        cli.main(["restore", str(tmp_path / "backup"), "--config", str(daemon.config_path)])
    monkeypatch.undo()

    data = daemon.database.parent
    assert (data / "leadsync.db").is_file()
    assert (data / "leadsync-events.db").is_file()
    [aside] = data.glob("before-restore-*")
    check_backup(aside, daemon.database)  # the files replaced, a whole pair
    assert (aside / "leadsync-events.db").read_bytes().count(b'"after"')
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 73
    [refusal] = [line for line in daemon.log_lines() if line["level"] == "critical"]
    assert "did not finish" in refusal["error"]

    again = leadsync_here("restore", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert again.returncode == 0, again.stderr
    daemon.start()
    stored = {event["messageId"] for event in daemon.events()}
    assert "before" in stored
    assert "after" not in stored


def test_a_rebuild_lock_the_daemon_cannot_open_is_a_clear_error_not_a_traceback(
    daemon: DaemonProcess,
) -> None:
    lock = daemon.database.with_name("leadsync.db.rebuild-lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()  # as unopenable for the daemon as a file root made for itself
    config = ["--config", str(daemon.config_path)]
    for command in (["forget", "email:ann@example.com"], ["identity", "rebuild"]):
        refused = leadsync_here(*command, *config)
        assert refused.returncode == 73, refused.stdout + refused.stderr
        assert f"cannot open {lock}" in refused.stderr
    assert "Traceback" not in daemon.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_root_forgetting_without_the_daemon_leaves_lock_files_the_service_user_owns(
    daemon: DaemonProcess,
) -> None:
    assert daemon.terminate() == 0
    service = 65534
    data = daemon.database.parent
    for path in (data, *data.iterdir()):
        os.chown(path, service, service)
    (data / "leadsync.lock").unlink()  # a data dir from before the lock
    (data / "leadsync.db.rebuild-lock").unlink(missing_ok=True)
    forgot = leadsync("forget", "email:ann@example.com", "--config", str(daemon.config_path))
    assert forgot.returncode == 0, forgot.stderr
    for name in ("leadsync.lock", "leadsync.db.rebuild-lock"):
        owner = (data / name).stat()
        assert (owner.st_uid, owner.st_gid) == (service, service), name


def test_an_offline_command_prints_its_result_alone_on_stdout(tmp_path: Path) -> None:
    from storage.migrations import MIGRATIONS

    (tmp_path / "var").mkdir()
    with closing(sqlite3.connect(tmp_path / "var" / "leadsync.db")) as db:
        for script in MIGRATIONS[:-1]:  # a leadsync upgraded, not yet started: migrations run
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
        db.commit()
    config = tmp_path / "daemon.toml"
    config.write_text(f"[daemon]\ndata_dir = '{tmp_path / 'var'}'\nlog_level = 'debug'\n")

    forgot = leadsync("forget", "email:ann@example.com", "--config", str(config))

    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.splitlines()[0] == (
        "no profile has email:ann@example.com in the database (no daemon running):"
    )
    assert "schema migrated" not in forgot.stdout + forgot.stderr
    made = leadsync("backup", str(tmp_path / "backup"), "--config", str(config))
    assert made.returncode == 0, made.stderr
    assert [line.split(" (")[0] for line in made.stdout.splitlines()[:2]] == [
        str(tmp_path / "backup" / "leadsync.db"),
        str(tmp_path / "backup" / "leadsync-events.db"),
    ]
    assert made.stdout.splitlines()[2].startswith("backed up in ")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_root_restoring_for_a_service_user_leaves_files_that_user_owns(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    backup = leadsync_here("backup", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert backup.returncode == 0, backup.stderr
    assert daemon.terminate() == 0
    service = 65534  # nobody: the daemon's own user under systemd, say
    data = daemon.database.parent
    for path in (data, *data.iterdir()):
        os.chown(path, service, service)
    restored = leadsync("restore", str(tmp_path / "backup"), "--config", str(daemon.config_path))
    assert restored.returncode == 0, restored.stderr
    for name in ("leadsync.db", "leadsync-events.db"):
        owner = (data / name).stat()
        assert (owner.st_uid, owner.st_gid) == (service, service), name


def test_retention_trims_old_events_every_consumer_applied_and_profiles_keep_counts(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon(
        # Short enough that the test waits little for events to age and be trimmed.
        '\n[storage]\nretain_events = "500ms"\ndedup_window = "500ms"\n'
        'checkpoint_interval = "250ms"\n'
    ).start()
    events = [{"type": "track", "userId": "ann", "event": f"Step {n}"} for n in range(5)]
    assert post(daemon, events) == 200

    wait_for(lambda: len(daemon.events()) == 1)

    # The newest event stays: the log's numbering goes on from it.
    assert daemon.events()[0]["event"] == "Step 4"
    status, profile = daemon.admin("/v1/profiles/user_id/ann")
    assert status == 200
    assert profile["events"] == 5
    assert any(line["event"] == "event log trimmed" for line in daemon.log_lines())


def record(n: int, received_at: str) -> EventRecord:
    body = f'{{"type":"track","userId":"u","event":"e{n}"}}'.encode()
    return EventRecord(f"m{n}", "track", received_at, body)


async def test_retention_keeps_what_a_consumer_has_not_applied(tmp_path: Path) -> None:
    database = tmp_path / "leadsync.db"
    storage = await SqliteStorage.open(database)
    old, new = "2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"
    records = [record(n, old) for n in range(1, 7)] + [record(7, new)]
    await storage.append([AppendRequest("web", old, records)])
    db = connect(database, 5)
    db.execute("INSERT INTO checkpoints VALUES ('identity', 7, ''), ('scorer', 3, '')")
    db.close()

    assert await storage.trim_events(86400) == 3  # the scorer has applied 1-3 only
    assert [e.seq for e in await storage.read_events(0, 100)] == [4, 5, 6, 7]
    await storage.close()


def test_a_command_at_work_on_the_files_is_named_to_whoever_finds_the_lock(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A restore holds the data dir: a forget with no daemon to ask says so, rather
    than blame a daemon that is not there, and so does a daemon started meanwhile."""
    assert daemon.terminate() == 0
    lock = DataDirLock.take(str(daemon.database.parent), "restore")
    try:
        forget = leadsync("forget", "user_id:ann-1", "--config", str(daemon.config_path))
        run = leadsync("run", "--config", str(daemon.config_path))
    finally:
        lock.release()
    assert forget.returncode == 75, forget.stderr
    assert f"`leadsync restore` (pid {os.getpid()}) is working on the data dir" in forget.stderr
    assert "a daemon holds" not in forget.stderr
    assert run.returncode == 77, run.stderr
    assert f"(pid {os.getpid()}, `leadsync restore`) holds" in run.stderr
