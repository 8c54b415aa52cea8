"""Destinations in real daemon processes: leadsync A sends its scores to leadsync B as
Segment identify calls; a webhook receiver survives A's kill -9 mid-delivery with
nothing lost; the dlq and sync commands work on a running daemon.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from segment.analytics.client import Client

from tests.support.admin_api import run_batch
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess, destination, wait_for
from tests.support.fake_receiver import receiver_thread
from tests.support.posting import post
from tests.support.scoring import CTO


def status_of(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    """Empty while a reload has the destination stopped and not yet started again."""
    found: dict[str, Any] = daemon.admin("/status")[1]["destinations"].get(name, {})
    return found


def test_leadsync_a_sends_its_scores_to_leadsync_b_as_segment_identifies(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    b = make_daemon(name="b").start()
    a = make_daemon(
        destination("b", "segment", mode="batch", host=b.url, write_key=WRITE_KEYS["backend"]),
        name="a",
    ).start()
    client = Client(WRITE_KEYS["web"], host=a.url, sync_mode=True)
    client.identify("ann", CTO, anonymous_id="aaa-aaa-aaa")
    client.track("ann", "Demo Requested")
    client.identify("bob", {"title": "Intern", "email": "bob@gmail.com"})
    client.flush()
    wait_for(lambda: a.admin("/status")[1]["consumers"]["scorer"]["lag_events"] == 0)
    wait_for(lambda: status_of(a, "b").get("held") == 2)
    assert b.events() == []  # batch mode: nothing before the batch run ends
    run_batch(a)

    def identifies() -> list[dict[str, Any]]:
        return [e for e in b.events() if e["type"] == "identify"]

    wait_for(lambda: len(identifies()) == 2)
    by_user = {e["userId"]: e for e in identifies()}
    ann = by_user["ann"]
    assert ann["anonymousId"] == "aaa-aaa-aaa"
    assert ann["source"] == "backend"
    assert ann["traits"]["mk_customer_fit_score"] == 100
    assert ann["traits"]["mk_likelihood_to_buy_score"] == 40
    assert ann["traits"]["mk_lead_grade"] == "A"
    assert ann["context"]["library"]["name"] == "leadsync"
    assert by_user["bob"]["traits"]["mk_customer_fit_segment"] != "very good"
    wait_for(lambda: status_of(a, "b").get("sent") == 2)
    # Held for the batch run, then sent: the lag runs from the score to the answer.
    assert status_of(a, "b")["lag"] > 0
    shown = leadsync_here("status", "--config", str(a.config_path))
    assert shown.returncode == 0, shown.stderr
    assert "destination b (segment, batch): " in shown.stdout
    assert "sent 2 " in shown.stdout
    # Only on change: another batch run with nothing new sends nothing more.
    run_batch(a)
    wait_for(lambda: status_of(a, "b").get("held") == 0)
    assert status_of(a, "b").get("sent") == 2
    assert len(identifies()) == 2
    # A full sync resends both, and B's deduplication by messageId keeps one of each.
    result = leadsync("sync", "b", "--full", "--config", str(a.config_path))
    assert result.returncode == 0, result.stderr
    assert "2 profiles of 2 queued" in result.stdout
    wait_for(lambda: status_of(a, "b").get("sent") == 4)
    wait_for(lambda: b.admin("/metrics")[1].count("leadsync_events_duplicate_total") > 0)
    assert len(identifies()) == 2


def test_kill_9_mid_delivery_loses_nothing_and_repeats_at_most_what_was_in_flight(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    with receiver_thread() as receiver:
        batch, concurrency = 10, 2
        a = make_daemon(
            destination(
                "hook",
                "webhook",
                mode="realtime",
                url=receiver.url + "/hook",
                secret="s",
                batch_size=batch,
                concurrency=concurrency,
                rate={"requests": 20, "per": 1},
            )
        ).start()
        people = [f"user-{n:03d}" for n in range(300)]
        for start in range(0, 300, 100):
            group = people[start : start + 100]
            sent = [{"type": "identify", "userId": u, "traits": CTO} for u in group]
            assert post(a, sent) == 200
        wait_for(lambda: len(receiver.records()) >= 60)
        a.kill()
        a.start()
        wait_for(lambda: {r["user_id"] for r in receiver.records()} == set(people), timeout=40)
        wait_for(lambda: status_of(a, "hook").get("queued") == 0, timeout=10)
    received = [r["user_id"] for r in receiver.records()]
    repeated = len(received) - len(set(received))
    # Only records in flight when the process died can come again, each once.
    assert repeated <= batch * concurrency
    assert max(received.count(u) for u in people) <= 2
    assert len(a.query("SELECT 1 FROM outbox")) == 0


def test_dead_letters_are_listed_and_replayed_from_the_command_line(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    with receiver_thread() as receiver:
        receiver.fail_when(lambda record: record["user_id"] == "bob", "bob is not welcome")
        a = make_daemon(
            destination("hook", "webhook", mode="realtime", url=receiver.url, secret="s")
        ).start()
        sent = [{"type": "identify", "userId": u, "traits": CTO} for u in ("ann", "bob")]
        assert post(a, sent) == 200
        wait_for(lambda: status_of(a, "hook").get("dead_letters") == 1, timeout=15)
        listed = leadsync("dlq", "list", "--config", str(a.config_path))
        assert listed.returncode == 0, listed.stderr
        assert "hook" in listed.stdout
        assert "bob is not welcome" in listed.stdout
        assert [r["user_id"] for r in receiver.records()] == ["ann"]
        receiver.clear_rules()
        replayed = leadsync(
            "dlq", "replay", "--destination", "hook", "--config", str(a.config_path)
        )
        assert replayed.returncode == 0, replayed.stderr
        assert "1 dead letter back in the outbox" in replayed.stdout
        wait_for(lambda: [r["user_id"] for r in receiver.records()] == ["ann", "bob"])
        empty = leadsync_here("dlq", "list", "--config", str(a.config_path))
        assert "no dead letters" in empty.stdout


def test_sighup_reloads_destinations_and_new_or_changed_ones_catch_up(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    with receiver_thread() as receiver:
        hook = destination("hook", "webhook", mode="realtime", url=receiver.url, secret="s")
        a = make_daemon(hook).start()
        sent = [{"type": "identify", "userId": u, "traits": CTO} for u in ("ann", "bob")]
        assert post(a, sent) == 200
        wait_for(lambda: len(receiver.records()) == 2)
        assert "mk_lead_grade" in receiver.records()[0]["traits"]

        # A broken file is refused whole: the running destinations stay.
        config = a.config_path.read_text()
        a.config_path.write_text(config + "\n[destinations.x]\ntype = 'carrier pigeon'\n")
        assert a.process is not None
        a.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("not reloaded" in line["event"] for line in a.log_lines()))
        assert set(a.admin("/status")[1]["destinations"]) == {"hook"}

        # The hook now sends the grade alone, under another name; a file destination
        # is added. Both catch up without a new score: the hook with every payload
        # that changed (all of them), the files with every profile.
        out = a.directory / "out"
        renamed = hook + "[destinations.hook.fields]\nmk_lead_grade = 'grade'\n"
        files = destination("files", "file", path=str(out), mode="batch", rotate_interval=0.2)
        a.config_path.write_text(config.replace(hook, renamed) + files)
        a.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(receiver.records()) == 4)
        assert [r["traits"] for r in receiver.records()[2:]] == [{"grade": "C"}] * 2
        wait_for(lambda: status_of(a, "files").get("sent") == 2)
        (done,) = wait_for(lambda: [p for p in out.iterdir() if p.suffix == ".jsonl"], timeout=20)
        lines = [json.loads(line) for line in done.read_text().splitlines()]
        assert sorted(line["user_id"] for line in lines) == ["ann", "bob"]
        assert a.admin("/status")[1]["destinations"]["hook"]["state"] != "stopped"

        # Batch mode holds a new profile's fit for the next batch run; made realtime,
        # the files destination sends what it held at once.
        assert post(a, [{"type": "identify", "userId": "cyd", "traits": CTO}]) == 200
        wait_for(lambda: status_of(a, "files").get("held") == 1)
        realtime = files.replace('mode = "batch"', 'mode = "realtime"')
        a.config_path.write_text(config.replace(hook, renamed) + realtime)
        a.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status_of(a, "files").get("mode") == "realtime")
        wait_for(lambda: status_of(a, "files").get("sent") == 1)

        # Removed: its actor stops and its queue goes. Added again: it starts afresh.
        a.config_path.write_text(config.replace(hook, renamed))
        a.process.send_signal(signal.SIGHUP)
        wait_for(lambda: set(a.admin("/status")[1]["destinations"]) == {"hook"})
        actors = {actor["name"] for actor in a.admin("/status")[1]["actors"]}
        assert "destination:files" not in actors
        assert "destination:hook" in actors
        wait_for(lambda: not a.query("SELECT 1 FROM destination_state WHERE destination = 'files'"))
        a.config_path.write_text(config.replace(hook, renamed) + realtime)
        a.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status_of(a, "files").get("sent") == 3)
