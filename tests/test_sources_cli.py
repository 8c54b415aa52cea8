"""First run and write keys: a new database says so, a generated key is logged once,
when generated, and `leadsync sources` shows it again from the database."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import Callable

from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess

MOBILE = '\n[sources.mobile]\ntype = "http"\nkind = "ios"\n'


def identify(daemon: DaemonProcess, key: str) -> int:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(
        daemon.url + "/v1/identify",
        data=json.dumps({"userId": "u-1", "traits": {"plan": "pro"}}).encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_generated_key_is_logged_once_and_leadsync_sources_shows_it(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon(extra_config=MOBILE)
    before = leadsync_here("sources", "--config", str(daemon.config_path)).stdout.splitlines()
    assert re.split(r" {3,}", before[3]) == [
        "mobile",
        "ios",
        "(none yet: generated at the daemon's first start)",
        "generated at first start",
    ]
    daemon.start()
    [generated] = [line for line in daemon.log_lines() if "write_key" in line]
    key = generated["write_key"]
    assert generated["source"] == "mobile"
    assert identify(daemon, key) == 200
    assert daemon.terminate() == 0
    daemon.start()
    assert daemon.terminate() == 0

    log = daemon.log()
    assert log.count(key) == 1  # two starts, one mention
    created = f"created a new database at {daemon.database}"
    assert [line["event"] for line in daemon.log_lines()].count(created) == 1
    assert "`leadsync sources` shows it" in log

    shown = leadsync("sources", "--config", str(daemon.config_path))
    assert shown.returncode == 0, shown.stderr
    assert [re.split(r" {3,}", line) for line in shown.stdout.splitlines()] == [
        ["source", "kind", "write key", "origin"],
        ["web", "web", WRITE_KEYS["web"], "daemon.toml"],
        ["backend", "server", WRITE_KEYS["backend"], "daemon.toml"],
        ["mobile", "ios", key, "generated at first start"],
    ]
    listed = leadsync_here("sources", "--json", "--config", str(daemon.config_path))
    assert json.loads(listed.stdout)[2] == {
        "source": "mobile",
        "kind": "ios",
        "write_key": key,
        "origin": "generated at first start",
    }
