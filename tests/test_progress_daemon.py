"""A batch run and an identity rebuild inside the daemon show how far they are in
/status while they run (what `leadsync scoring run` and `identity rebuild` show
beside their spinner), and nothing once they are done."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.posting import post

PEOPLE = 20_000


def watch(daemon: DaemonProcess, path: str, where: tuple[str, ...]) -> list[dict[str, Any]]:
    """POST `path` and, until it answers, every value /status has at `where`."""
    seen: list[dict[str, Any]] = []
    answered = threading.Event()

    def call() -> None:
        request = urllib.request.Request(
            daemon.admin_url + path,
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())
        answered.set()

    caller = threading.Thread(target=call)
    caller.start()
    while not answered.is_set():
        found: Any = daemon.admin("/status")[1]
        for key in where:
            found = found[key]
        if found is not None:
            seen.append(found)
    caller.join()
    return seen


def test_a_batch_run_and_a_rebuild_show_their_progress_while_they_run(
    daemon: DaemonProcess,
) -> None:
    for start in range(0, PEOPLE, 500):
        people = [{"type": "identify", "userId": f"p{n}"} for n in range(start, start + 500)]
        assert post(daemon, people) == 200

    def caught_up() -> bool:
        status = daemon.admin("/status")[1]
        return all(c["applied"] >= status["events_stored"] for c in status["consumers"].values())

    wait_for(caught_up, timeout=60)

    seen = watch(daemon, "/v1/scoring/run", ("scoring", "running"))
    assert seen, "no batch run seen under way"
    assert {s["of"] for s in seen} == {PEOPLE}
    assert all(0 <= s["profiles"] <= PEOPLE for s in seen)
    assert daemon.admin("/status")[1]["scoring"]["running"] is None

    seen = watch(daemon, "/v1/identity/rebuild", ("identity_rebuild",))
    assert seen, "no rebuild seen under way"
    assert all(0 <= s["events"] <= s["of"] for s in seen)
    assert max(s["of"] for s in seen) >= PEOPLE
    assert daemon.admin("/status")[1]["identity_rebuild"] is None
