"""The leadsync command as an operator runs it."""

from __future__ import annotations

import fcntl
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from storage.migrations import MIGRATIONS
from tests.support.cli import leadsync
from tests.support.daemon_process import DaemonProcess, free_port


def test_check_config_accepts_a_good_file_and_says_what_it_sets_up(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text("[sources.web]\ntype = 'http'\nkind = 'web'\nwrite_key = 'k'\n")
    result = leadsync("check-config", "--config", str(path))
    assert result.returncode == 0
    assert f"{path}: OK" in result.stdout
    assert "source     web (type http, kind web, write key set)" in result.stdout


def test_check_config_refuses_a_bad_file_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text("[http]\nmax_backlog = 'lots'\n")
    result = leadsync("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"leadsync: {path}:2: http.max_backlog: Expected `int`, got `str`"
    )


def test_run_refuses_a_bad_config_before_touching_anything(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(f"[daemon]\ndata_dir = '{tmp_path / 'var'}'\nwat = 1\n")
    result = leadsync("run", "--config", str(path))
    assert result.returncode == 2
    assert "daemon.wat: unknown key" in result.stderr
    assert not (tmp_path / "var").exists()


def test_run_exits_73_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = tmp_path / "daemon.toml"
    path.write_text(f"[daemon]\ndata_dir = '{blocker}'\nlog_format = 'json'\n")
    result = leadsync("run", "--config", str(path))
    assert result.returncode == 73
    assert "cannot open storage" in result.stderr
    assert str(blocker) in result.stderr


def test_run_refuses_a_database_from_a_newer_leadsync(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    with sqlite3.connect(tmp_path / "var" / "leadsync.db") as db:
        db.execute("PRAGMA user_version = 999")
    path = tmp_path / "daemon.toml"
    path.write_text(f"[daemon]\ndata_dir = '{tmp_path / 'var'}'\nlog_format = 'json'\n")
    result = leadsync("run", "--config", str(path))
    assert result.returncode == 73
    assert "schema version 999, newer than this leadsync knows" in result.stderr


def test_run_refuses_an_event_log_older_than_the_database(tmp_path: Path) -> None:
    """The log deleted (or restored from an older backup than leadsync.db): new events
    would reuse sequence numbers the merger has applied, so the daemon does not start."""
    var = tmp_path / "var"
    path = tmp_path / "daemon.toml"
    path.write_text(f"[daemon]\ndata_dir = '{var}'\nlog_format = 'json'\n")
    assert leadsync("check-config", "--config", str(path)).returncode == 0
    var.mkdir()
    with closing(sqlite3.connect(var / "leadsync.db")) as db:
        for script in MIGRATIONS:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.execute("INSERT INTO checkpoints VALUES ('identity', 42, 't')")
        db.commit()
    result = leadsync("run", "--config", str(path))
    assert result.returncode == 73
    assert "leadsync-events.db ends at event 0, but identity has applied up to 42" in result.stderr


def test_status_prints_a_table_and_json(daemon: DaemonProcess) -> None:
    table = leadsync("status", "--config", str(daemon.config_path))
    assert table.returncode == 0, table.stderr
    for word in ("ready", "log_writer", "http", "admin", "running", "events stored 0"):
        assert word in table.stdout
    raw = leadsync("status", "--config", str(daemon.config_path), "--json")
    status = json.loads(raw.stdout)
    assert status["ready"] is True
    assert {a["name"] for a in status["actors"]} == {
        "admin",
        "log_writer",
        "identity",
        "scorer",
        "http",
    }
    assert status["consumers"] == {
        "identity": {"applied": 0, "lag_events": 0},
        "scorer": {"applied": 0, "lag_events": 0},
    }
    assert "identity: applied up to event 0, 0 behind" in table.stdout
    assert "scoring model example-1" in table.stdout


def test_status_says_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    port = free_port()
    result = leadsync("status", "--admin", f"http://127.0.0.1:{port}")
    assert result.returncode == 69
    assert f"cannot reach the admin API at http://127.0.0.1:{port}/status" in result.stderr


@pytest.fixture
def default_ports() -> Iterator[None]:
    """The embedded default's ports (8320, 8321) for this test alone on this machine: two
    runs of the suite at once (two checkouts, two sessions) both found them free, and
    one daemon then stopped with exit 71. A lock on a file every run names the same
    makes the second wait; the kernel drops it with its holder, however that ends."""
    with (Path(tempfile.gettempdir()) / "leadsync-test-default-ports.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.mark.usefixtures("default_ports")
def test_run_with_no_config_uses_the_embedded_default_and_keeps_its_write_key(
    tmp_path: Path,
) -> None:
    """`leadsync run` in an empty directory just works. It listens on the default
    ports, so this test skips where something other than this test already does."""
    for port in (8320, 8321):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use on this machine")
    daemon = DaemonProcess(tmp_path)
    daemon.config_path.unlink()  # no daemon.toml: the embedded default applies
    daemon.http_port, daemon.admin_port = 8321, 8320
    keys: list[list[str]] = []
    try:
        for _ in range(2):  # the second start reuses the database and so the key
            with daemon.log_path.open("wb") as log:
                daemon.process = subprocess.Popen(
                    [sys.executable, "-m", "daemon", "run"], cwd=tmp_path, stderr=log
                )
            daemon.wait_ready()
            keys.append([line["write_key"] for line in daemon.log_lines() if "write_key" in line])
            assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    assert (tmp_path / "var" / "leadsync.db").exists()
    [generated], again = keys  # logged when generated, not at the next start
    assert again == []
    [source] = json.loads(leadsync("sources", "--json", cwd=tmp_path).stdout)
    assert (source["source"], source["write_key"]) == ("default", generated)


def test_operator_commands_do_not_need_the_services_secrets(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Under systemd the secrets live in a file only the service reads; `status` from an
    operator's shell must still work, while `check-config` still insists on them."""
    daemon = make_daemon(extra_config='[sources.crm]\ntype = "http"\nwrite_key = "env:CRM_KEY"\n')
    daemon.start(env={"CRM_KEY": "crm-secret"})
    status = leadsync("status", "--config", str(daemon.config_path))
    assert status.returncode == 0, status.stderr
    check = leadsync("check-config", "--config", str(daemon.config_path))
    assert check.returncode == 2
    assert "sources.crm.write_key: environment variable CRM_KEY is not set" in check.stderr
