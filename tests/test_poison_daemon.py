"""Poison through a real daemon: the request that used to stop it for good is refused
with its reason; such an event already stored by an older version is scored; and a
profile a destination's filter fails on is held, shown by `leadsync held list`,
counted, and applied again after the filter is fixed, while everything else flows.
"""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from storage.sqlite_connect import log_path
from tests.support.admin_api import scores
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess, destination, wait_for
from tests.support.posting import post
from tests.support.scoring import CTO

HUGE = "1" * 310
"""An integer beyond a float's range: valid JSON, and a float() of it raises."""


def send(daemon: DaemonProcess, endpoint: str, body: bytes) -> tuple[int, dict[str, Any]]:
    auth = base64.b64encode(f"{WRITE_KEYS['backend']}:".encode()).decode()
    request = urllib.request.Request(
        f"{daemon.url}/v1/{endpoint}",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def caught_up(daemon: DaemonProcess) -> bool:
    status = daemon.admin("/status")[1]
    head = status["events_stored"]
    return all(c["applied"] >= head for c in status["consumers"].values())


def no_restarts(daemon: DaemonProcess) -> None:
    actors = daemon.admin("/status")[1]["actors"]
    assert [(a["name"], a["restarts"]) for a in actors if a["restarts"]] == []
    assert {a["state"] for a in actors} == {"running"}
    assert daemon.admin("/readyz")[0] == 200


def metric(daemon: DaemonProcess, name: str) -> float:
    text = daemon.admin("/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_the_poison_request_is_refused_with_its_reason_and_the_daemon_serves(
    daemon: DaemonProcess,
) -> None:
    poison = f'{{"userId":"poison","traits":{{"employees":{HUGE}}}}}'
    status, body = send(daemon, "identify", poison.encode())
    assert status == 400
    assert "traits.employees: an integer of 310 digits" in body["message"]
    batch = f'{{"batch":[{poison[:-1]},"type":"identify"}},'
    batch += '{"type":"identify","userId":"ann","traits":{"employees":250}}]}'
    status, body = send(daemon, "batch", batch.encode())
    assert status == 200
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [0]
    wait_for(lambda: scores(daemon, "ann"))
    assert daemon.admin("/quarantine")[1]["total"] == 2  # both refusals, with their reason
    no_restarts(daemon)


def test_a_poison_event_an_older_version_stored_no_longer_stops_the_daemon(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    assert post(daemon, [{"type": "identify", "userId": "poison", "traits": CTO}]) == 200
    wait_for(lambda: caught_up(daemon))
    assert daemon.terminate() == 0
    # As leadsync before this fix accepted it: the same event again, with the huge trait.
    with closing(sqlite3.connect(log_path(daemon.database))) as db, db:
        source, kind, received, body = db.execute(
            "SELECT source, type, received_at, body FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        event = json.loads(body)
        event["messageId"], event["traits"]["company_size"] = "stored-before", 0
        text = json.dumps(event).replace('"company_size": 0', f'"company_size": {HUGE}')
        db.execute(
            "INSERT INTO events (source, message_id, type, received_at, body) "
            "VALUES (?, 'stored-before', ?, ?, ?)",
            (source, kind, received, text.encode()),
        )
    daemon.start()
    wait_for(lambda: caught_up(daemon))
    # Scored with what it holds: a size no range rule matches (it was 200 before).
    wait_for(lambda: (scores(daemon, "poison") or {})["traits"]["mk_company_size"] == int(HUGE))
    assert "Mid-sized company (50-999 people)" not in str(scores(daemon, "poison"))
    no_restarts(daemon)


def test_a_profile_a_filter_fails_on_is_held_and_applied_after_the_fix(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    filtered = destination(
        "crm", "file", path=str(out), mode="realtime", filter="revenue / employees >= 1000"
    )
    daemon = make_daemon(filtered).start()
    people = [
        {"type": "identify", "userId": "big", "traits": {**CTO, "employees": 10, "revenue": 10**6}},
        {"type": "identify", "userId": "zero", "traits": {**CTO, "employees": 0, "revenue": 5}},
    ]
    assert post(daemon, people) == 200
    wait_for(lambda: daemon.admin("/status")[1]["held"].get("scorer") == 1)
    wait_for(lambda: daemon.admin("/status")[1]["destinations"]["crm"]["sent"] == 1)
    listed = leadsync("held", "list", "--config", str(daemon.config_path))
    assert listed.returncode == 0, listed.stderr
    assert "scorer" in listed.stdout
    assert "destination crm: ZeroDivisionError: division by zero" in listed.stdout
    (item,) = [json.loads(line) for line in _held_json(daemon)]
    assert (item["kind"], item["attempts"]) == ("profile", 3)
    assert metric(daemon, 'leadsync_poison_total{component="scorer"}') == 1
    no_restarts(daemon)

    # The operator fixes the filter, reloads, and asks for a retry.
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(
        config.replace("revenue / employees >= 1000", "employees > 0 and revenue >= 0")
    )
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: any(
            line.get("event", "").startswith("destination new or changed")
            for line in daemon.log_lines()[-50:]
        )
    )
    scored_at = (scores(daemon, "zero") or {})["fit_at"]
    unnamed = leadsync_here("held", "retry", "--config", str(daemon.config_path))
    assert unnamed.returncode == 64
    assert "name items by id, or say --all" in unnamed.stderr
    retried = leadsync("held", "retry", "--all", "--config", str(daemon.config_path))
    assert retried.returncode == 0, retried.stderr
    assert "1 profile or account back on the scorer's to-do list" in retried.stdout
    # The daemon rescored it (the CLI only put it back on the to-do list), and staged
    # it with the fixed filter without holding it again.
    wait_for(lambda: (scores(daemon, "zero") or {})["fit_at"] != scored_at)
    assert daemon.admin("/status")[1]["held"] == {}
    assert (
        leadsync_here("held", "list", "--config", str(daemon.config_path)).stdout
        == "nothing held\n"
    )
    assert metric(daemon, 'leadsync_poison_total{component="scorer"}') == 1
    no_restarts(daemon)


def _held_json(daemon: DaemonProcess) -> list[str]:
    result = leadsync_here("held", "list", "--json", "--config", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()
