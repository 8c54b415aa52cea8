"""A restore cut short whose backup is gone: `leadsync restore --finish` completes it
from the parts it copied in, `--abandon` puts the old files back; and a restore that
fails before it starts replacing leaves nothing behind. Through the command line and
a real daemon: the restores in a process of their own, the commands that set the scene
or are run again in the test's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from daemon import cli
from storage import sqlite_backup
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess
from tests.support.posting import post


class Crash(BaseException):
    """The machine losing power: nothing after it runs, no handler sees it."""


def _crashed_between_the_renames(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A daemon with events "before" (in the backup) and "after" (not), stopped; a
    restore of the backup cut short after its first rename; the backup then deleted.
    The aside directory, returned."""
    config = str(daemon.config_path)
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "before"}]) == 200
    made = leadsync_here("backup", str(tmp_path / "backup"), "--config", config)
    assert made.returncode == 0, made.stderr
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "after"}]) == 200
    assert daemon.terminate() == 0
    replace = os.replace
    moved: list[str] = []

    def crash_after_one(source: str | Path, target: str | Path) -> None:
        if str(source).endswith(".restoring"):
            if moved:
                raise Crash
            moved.append(str(target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", crash_after_one)
    with pytest.raises(Crash):
        cli.main(["restore", str(tmp_path / "backup"), "--config", config])
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "backup")

    data = daemon.database.parent
    [aside] = data.glob("before-restore-*")
    marker = json.loads((data / "leadsync.db.restore-unfinished").read_text())
    assert marker == {"source": str(tmp_path / "backup"), "aside": aside.name}

    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 73
    [refusal] = [line for line in daemon.log_lines() if line["level"] == "critical"]
    for said in ("did not finish", str(aside), "restore --finish", "restore --abandon"):
        assert said in refusal["error"], said
    refused = leadsync_here("forget", "email:ann@example.com", "--config", config)
    assert refused.returncode == 73
    assert "restore --finish" in refused.stderr
    assert "restore --abandon" in refused.stderr
    return aside


@pytest.mark.parametrize("finish", [["--finish"], []])
def test_a_restore_cut_short_finishes_without_its_backup(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: list[str]
) -> None:
    aside = _crashed_between_the_renames(daemon, tmp_path, monkeypatch)

    done = leadsync("restore", *finish, "--config", str(daemon.config_path))

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the files it replaced are in {aside}" in done.stdout
    assert "`leadsync forget` does not reach them" in done.stdout
    data = daemon.database.parent
    assert not list(data.glob("*.restoring"))
    assert not (data / "leadsync.db.restore-unfinished").exists()
    daemon.start()
    stored = {event["messageId"] for event in daemon.events()}
    assert "before" in stored
    assert "after" not in stored


def test_a_restore_cut_short_is_abandoned_and_the_old_files_come_back(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aside = _crashed_between_the_renames(daemon, tmp_path, monkeypatch)

    undone = leadsync("restore", "--abandon", "--config", str(daemon.config_path))

    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "back as they were" in undone.stdout
    data = daemon.database.parent
    assert not list(data.glob("*.restoring"))
    assert not (data / "leadsync.db.restore-unfinished").exists()
    assert not aside.exists()
    daemon.start()
    stored = {event["messageId"] for event in daemon.events()}
    assert {"before", "after"} <= stored
    again = leadsync_here("restore", "--abandon", "--config", str(daemon.config_path))
    assert again.returncode == 1
    assert "no restore" in again.stderr


def test_a_restore_failing_before_it_replaces_anything_leaves_nothing_behind(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(daemon.config_path)
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "before"}]) == 200
    made = leadsync_here("backup", str(tmp_path / "backup"), "--config", config)
    assert made.returncode == 0, made.stderr
    assert post(daemon, [{"type": "identify", "userId": "u", "messageId": "after"}]) == 200
    assert daemon.terminate() == 0
    checkpoint = sqlite_backup._checkpoint
    calls: list[Path] = []

    def fail_on_the_log(path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        checkpoint(path)

    monkeypatch.setattr(sqlite_backup, "_checkpoint", fail_on_the_log)
    assert cli.main(["restore", str(tmp_path / "backup"), "--config", config]) == 73
    monkeypatch.undo()

    data = daemon.database.parent
    assert not list(data.glob("*.restoring"))
    assert not list(data.glob("before-restore-*"))
    assert not (data / "leadsync.db.restore-unfinished").exists()
    daemon.start()
    assert {"before", "after"} <= {event["messageId"] for event in daemon.events()}


def test_restore_without_path_or_unfinished_restore_is_a_usage_error(
    daemon: DaemonProcess,
) -> None:
    assert daemon.terminate() == 0
    plain = leadsync("restore", "--config", str(daemon.config_path))
    assert plain.returncode == 64
    assert "no restore" in plain.stderr
    both = leadsync_here("restore", "somewhere", "--finish", "--config", str(daemon.config_path))
    assert both.returncode == 64
