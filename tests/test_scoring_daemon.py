"""Scoring in the running daemon: identifies in over HTTP, scores out on the admin API,
models deployed by file and SIGHUP, and a kill -9 that loses nothing."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.identity.extract import Extractor
from actors.identity.settings import IdentitySection
from actors.scoring.model import example
from actors.scoring.scorer import Scorer
from storage.sqlite_connect import connect, log_path
from storage.sqlite_scores import SqliteScoreStore
from tests.support.admin_api import run_batch, scores
from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.posting import post
from tests.support.scoring import CTO


def model_in_use(daemon: DaemonProcess) -> str:
    with urllib.request.urlopen(daemon.admin_url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("leadsync_scoring_model_info{"):
                return str(line.split('version="')[1].split('"')[0])
    return ""


def test_an_identify_is_scored_within_seconds_and_a_batch_run_adds_likelihood(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    assert post(daemon, [{"type": "identify", "userId": "ann", "traits": CTO}]) == 200
    found = wait_for(lambda: scores(daemon, "ann"))
    assert found["traits"]["mk_customer_fit_score"] == 100
    assert found["traits"]["mk_customer_fit_segment"] == "very good"
    assert found["traits"]["mk_job_title"] == "CTO"
    assert found["fit_model"] == "example-1"

    assert post(daemon, [{"type": "track", "userId": "ann", "event": "Demo Requested"}]) == 200
    wait_for(lambda: daemon.admin("/status")[1]["consumers"]["scorer"]["lag_events"] == 0)
    figures = run_batch(daemon)
    assert figures["profiles"] == 1
    scoring = daemon.admin("/status")[1]["scoring"]
    assert scoring["model"] == "example-1"
    assert scoring["last_batch"] == figures
    assert scoring["next_batch_at"] > scoring["last_batch_at"]
    found = scores(daemon, "ann")
    assert found is not None
    assert found["traits"]["mk_likelihood_to_buy_score"] == 40
    assert found["traits"]["mk_lead_grade"] == "A"
    assert found["likelihood_model"] == "example-1"


def test_sighup_deploys_a_new_model_version_and_refuses_a_broken_file(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    model_file = tmp_path / "model.toml"
    model_file.write_text(example().text.replace('"example-1"', '"ours-1"'))
    daemon = make_daemon(f'[scoring]\nmodel = "{model_file}"\n').start()
    assert model_in_use(daemon) == "ours-1"
    assert post(daemon, [{"type": "identify", "userId": "ann", "traits": CTO}]) == 200
    assert wait_for(lambda: scores(daemon, "ann"))["fit_model"] == "ours-1"

    model_file.write_text(
        example().text.replace('"example-1"', '"ours-2"').replace("points = 35", "points = 5")
    )
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: model_in_use(daemon) == "ours-2")
    run_batch(daemon)
    assert scores(daemon, "ann")["traits"]["mk_customer_fit_score"] == 70  # type: ignore[index]

    model_file.write_text(example().text.replace("[fit.segments]", "[fit.segments"))
    daemon.process.send_signal(signal.SIGHUP)
    refused = wait_for(
        lambda: [e for e in daemon.log_lines() if e["event"].startswith("model file refused")]
    )
    assert "not valid TOML" in refused[0]["error"]
    assert daemon.admin("/readyz")[0] == 200
    assert model_in_use(daemon) == "ours-2"


def test_a_broken_model_with_none_deployed_stops_the_start_with_the_reason(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    model_file = tmp_path / "model.toml"
    model_file.write_text(example().text.replace("min = 50", "min = 5000"))
    daemon = make_daemon(f'[scoring]\nmodel = "{model_file}"\n').start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(20) == 2
    assert f"{model_file}:" in daemon.log()
    assert "fit.rules[2].max: must be more than min" in daemon.log()


def test_a_new_visitors_demo_request_counts_in_its_likelihood_at_once(
    daemon: DaemonProcess,
) -> None:
    """No identify, no batch run: a new profile's likelihood counts what it did."""
    # A fresh daemon runs its first batch at once; the visitor comes after it.
    ran = wait_for(lambda: daemon.admin("/status")[1]["scoring"]["last_batch_at"])
    demo = {"type": "track", "anonymousId": "visitor-1", "event": "Demo Requested"}
    assert post(daemon, [demo]) == 200

    def likelihood() -> Any:
        status, body = daemon.admin("/v1/profiles/anonymous_id/visitor-1")
        return status == 200 and body.get("scores") and body["scores"]["traits"]

    found = wait_for(lambda: (t := likelihood()) and t["mk_likelihood_to_buy_score"] == 40 and t)
    assert found["mk_likelihood_to_buy_signals"] == ["Requested a demo"]
    assert daemon.admin("/status")[1]["scoring"]["last_batch_at"] == ran  # no batch run since


def test_a_model_named_in_daemon_toml_after_start_is_deployed_on_sighup(
    daemon: DaemonProcess,
) -> None:
    model = daemon.directory / "model.toml"
    model.write_text(example().text.replace('version = "example-1"', 'version = "added-2"'))
    with daemon.config_path.open("a") as config:
        config.write(f'\n[scoring]\nmodel = "{model}"\n')
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.admin("/status")[1]["scoring"]["model"] == "added-2")
    warned = [line for line in daemon.log_lines() if "takes a restart" in line["event"]]
    assert warned == []


def test_after_kill_9_every_logged_event_is_counted_once_in_the_likelihood(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    stop = threading.Event()

    def send() -> None:
        n = 0
        while not stop.is_set():
            batch = [
                {
                    "type": "track",
                    "userId": f"u{(n + i) % 50}",
                    "event": "Demo Requested" if i % 2 else "Signed Up",
                    "messageId": f"m{n + i}",
                }
                for i in range(20)
            ]
            try:
                if post(daemon, batch) == 200:
                    n += 20
            except OSError:
                pass  # the daemon is down for a moment; the client retries

    def logged() -> int:
        return int(daemon.query("SELECT count(*) FROM events")[0][0])

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: logged() > 2000, 30)
        daemon.kill()
        at_kill = logged()
        daemon.start()
        wait_for(lambda: logged() > at_kill + 200, 30)  # the client goes on after the restart
    finally:
        stop.set()
        sender.join()
    wait_for(lambda: daemon.admin("/status")[1]["consumers"]["scorer"]["lag_events"] == 0, 30)
    assert daemon.terminate() == 0

    after_crash = tmp_path / "after-crash.db"
    shutil.copy(daemon.database, after_crash)
    shutil.copy(log_path(daemon.database), log_path(after_crash))
    with sqlite3.connect(after_crash) as db:
        crashed = db.execute("SELECT kind, value, state FROM intent ORDER BY 1, 2").fetchall()
    # The same log read once from the start, by a scorer that never crashed.
    store = SqliteScoreStore(connect(after_crash, 5))
    scorer = Scorer(store, example(), Extractor(IdentitySection()), {"web": "web"})
    store.begin()
    store.reset_intents()
    store.commit()
    while scorer.fold_events(10**9):
        pass
    with sqlite3.connect(after_crash) as db:
        straight = db.execute("SELECT kind, value, state FROM intent ORDER BY 1, 2").fetchall()
    assert len(crashed) == 50
    assert crashed == straight
