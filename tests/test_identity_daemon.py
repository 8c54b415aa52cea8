"""The identity graph in the running daemon: Segment's client in, profiles out.

One daemon serves every example of the property test; each example uses its own ids,
so examples cannot see each other's people.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment.analytics.client import Client

from tests.support.cli import leadsync_here
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess, wait_for
from tests.support.identity_journey import (
    DESKTOP,
    EMAIL,
    MOBILE,
    USER,
    as_schema_5,
    journey,
    profiles,
)


def send(client: Client, message: dict[str, Any]) -> None:
    """One journey step through Segment's Python client, with its messageId and time."""
    common = {
        "message_id": message["messageId"],
        "timestamp": _time(message["timestamp"]),
        "anonymous_id": message.get("anonymousId"),
    }
    user = message.get("userId")
    kind = message["type"]
    if kind == "page":
        client.page(user, name=message["name"], **common)
    elif kind == "identify":
        client.identify(user, message.get("traits", {}), **common)
    elif kind == "track":
        client.track(user, message["event"], message.get("properties", {}), **common)
    else:
        raise AssertionError(kind)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def settle(daemon: DaemonProcess, timeout: float = 20.0) -> None:
    """Wait until the identity actor has applied everything logged so far. (Not the
    whole backlog: that waits for the scorer too, which folds the log once a second.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.admin("/status")[1]
        if status["consumers"]["identity"]["lag_events"] == 0:
            return
        time.sleep(0.02)
    raise TimeoutError(f"identity still behind: {status}")


def lookup(daemon: DaemonProcess, kind: str, value: str, events: int = 20) -> tuple[int, Any]:
    return daemon.admin(f"/v1/profiles/{kind}/{urllib.parse.quote(value, safe='')}?events={events}")


def metric(daemon: DaemonProcess, name: str) -> float:
    text = daemon.admin("/metrics")[1]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("identity"))
    daemon.start()
    yield daemon
    daemon.stop_quietly()


def client(daemon: DaemonProcess, source: str = "web") -> Client:
    errors: list[Exception] = []
    made = Client(
        WRITE_KEYS[source],
        host=daemon.url,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )
    made.errors = errors
    return made


_example = iter(range(10**6))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(6)),
    repeats=st.lists(st.integers(0, 5), max_size=3),
)
def test_the_journey_through_segments_client_in_any_order_is_one_profile(
    shared_daemon: DaemonProcess, order: Sequence[int], repeats: list[int]
) -> None:
    suffix = f"-{next(_example)}"
    steps = journey(suffix)
    web, backend = client(shared_daemon, "web"), client(shared_daemon, "backend")
    for index in [*order, *repeats]:
        # The backend sends the purchase; the browsers and the app send the rest.
        step = steps[index]
        send(backend if step.get("event") == "transaction_succeeded" else web, step)
    assert web.errors == []
    assert backend.errors == []
    settle(shared_daemon)

    status, profile = lookup(shared_daemon, "user_id", USER + suffix)
    assert status == 200, profile
    assert {(i["kind"], i["value"]) for i in profile["identities"]} == {
        ("anonymous_id", DESKTOP + suffix),
        ("anonymous_id", MOBILE + suffix),
        ("user_id", USER + suffix),
        ("email", EMAIL.replace("@", f"{suffix}@")),
    }
    assert profile["traits"]["plan"] == "pro"
    assert profile["traits"]["name"] == "Peter Gibbons"
    assert profile["events"] == 6
    assert profile["sources"] == {"web": 5, "backend": 1}
    # Every identifier finds the same profile, and so does its id.
    for kind, value in [
        ("anonymous_id", DESKTOP + suffix),
        ("email", EMAIL.replace("@", f"{suffix}@").upper()),
        ("profile", profile["profile_id"]),
    ]:
        assert lookup(shared_daemon, kind, value)[1]["profile_id"] == profile["profile_id"]


def test_two_users_on_one_device_stay_two_and_the_conflict_is_counted(
    daemon: DaemonProcess,
) -> None:
    web = client(daemon)
    web.page(anonymous_id="family-laptop", name="Home", timestamp=_time("2026-04-01T09:00:00Z"))
    web.identify("alice", {"email": "alice@example.org"}, anonymous_id="family-laptop",
                 timestamp=_time("2026-04-01T09:05:00Z"))  # fmt: skip
    web.identify("bob", {"email": "bob@example.org"}, anonymous_id="family-laptop",
                 timestamp=_time("2026-04-02T20:00:00Z"))  # fmt: skip
    web.page(anonymous_id="family-laptop", name="Pricing", timestamp=_time("2026-04-03T09:00:00Z"))
    settle(daemon)

    alice, bob = lookup(daemon, "user_id", "alice")[1], lookup(daemon, "user_id", "bob")[1]
    assert alice["profile_id"] != bob["profile_id"]
    assert lookup(daemon, "anonymous_id", "family-laptop")[1]["profile_id"] == alice["profile_id"]
    assert alice["events"] == 3  # both anonymous pages and her sign-in
    assert bob["events"] == 1
    assert [i["value"] for i in bob["identities"]] == ["bob@example.org", "bob"]
    assert metric(daemon, 'leadsync_identity_links_dropped_total{kind="user_id"}') == 1


def test_profile_cli_shows_the_profile_and_says_when_there_is_none(
    daemon: DaemonProcess,
) -> None:
    web = client(daemon)
    web.identify("carol", {"email": "Carol@Initech.com", "title": "CTO"}, anonymous_id="c-1")
    web.group("carol", "initech", {"name": "Initech", "employees": 200})
    web.track("carol", "Signed Up", {"plan": "pro"})
    settle(daemon)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon", "profile", *args, "--admin", daemon.admin_url],
            capture_output=True,
            text=True,
            timeout=30,
        )

    shown = cli("email:carol@initech.com", "--json")
    assert shown.returncode == 0, shown.stderr
    profile = json.loads(shown.stdout)
    assert profile["user_id"] == "carol"
    assert profile["traits"]["title"] == "CTO"
    assert profile["account"]["group_id"] == "initech"
    assert profile["account"]["traits"] == {"name": "Initech", "employees": 200}
    assert [e["type"] for e in profile["last_events"]] == ["track", "group", "identify"]

    # The admin API finds it by its id alone, as the README shows, and by kind "profile".
    for path in (profile["profile_id"], f"profile/{profile['profile_id']}"):
        status, by_id = daemon.admin(f"/v1/profiles/{path}")
        assert (status, by_id["user_id"]) == (200, "carol")

    table = cli(profile["profile_id"])
    assert table.returncode == 0, table.stderr
    for text in ("carol@initech.com", "CTO", "initech", "Signed Up"):
        assert text in table.stdout

    missing = cli("user_id:nobody")
    assert missing.returncode == 1
    assert "no profile has user_id 'nobody'" in missing.stderr
    for malformed in ("nobody", "user_id:", "shoe_size:9"):
        refused = leadsync_here("profile", malformed, "--admin", daemon.admin_url)
        assert refused.returncode == 64, malformed


def test_sigkill_mid_stream_builds_the_same_graph_as_without_the_crash(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """The graph's batch and its checkpoint commit together, so a crash between
    batches, or inside one, replays exactly: nothing applied twice or skipped."""
    messages = [
        {
            "type": "identify" if i % 3 else "track",
            "event": "Viewed",
            "userId": f"user-{i % 40}" if i % 2 else None,
            "anonymousId": f"device-{i % 70}",
            "traits": {"visits": i, "email": f"person{i % 55}@initech.com"},
            "messageId": f"k{i}",
            "timestamp": f"2026-06-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
        }
        for i in range(3000)
    ]
    batches = [messages[i : i + 100] for i in range(0, len(messages), 100)]

    def post(daemon: DaemonProcess, batch: list[dict[str, Any]]) -> None:
        body = json.dumps({"batch": [{k: v for k, v in m.items() if v is not None}
                                     for m in batch]}).encode()  # fmt: skip
        auth = base64.b64encode(f"{WRITE_KEYS['web']}:".encode()).decode()
        request = urllib.request.Request(
            daemon.url + "/v1/batch",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    calm = make_daemon(name="calm").start()
    for batch in batches:
        post(calm, batch)
    settle(calm)
    expected = profiles(calm.database)

    crashed = make_daemon(name="crashed", extra_config="[identity]\nbatch_size = 50\n").start()
    for number, batch in enumerate(batches):
        post(crashed, batch)
        if number in (10, 20):
            crashed.kill()  # the identity actor is mid-way through the backlog
            crashed.start()
    settle(crashed)
    assert profiles(crashed.database) == expected
    assert len(expected) < 150  # the ids really did merge


def test_rebuild_applies_changed_rules_to_the_whole_log_online_and_offline(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    web = client(daemon)
    for n in range(4):
        web.identify(anonymous_id="kiosk", traits={"email": f"visitor{n}@initech.com"})
    settle(daemon)
    assert len(profiles(daemon.database)) == 1  # the default cap is 5 emails a profile

    def rebuild() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon", "identity", "rebuild", "--config", "daemon.toml"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=daemon.directory,
        )

    loose = daemon.config_path.read_text()
    assert daemon.terminate() == 0
    daemon.config_path.write_text(loose + "\n[identity.limits]\nemail = 1\n")
    daemon.start()
    online = rebuild()
    assert online.returncode == 0, online.stderr
    assert "(the running daemon)" in online.stdout
    assert "1 profile before, 4 after" in online.stdout
    # The merger reads on from the rebuilt graph: nothing is applied twice.
    web = client(daemon)
    web.track(anonymous_id="kiosk", event="Tapped")
    settle(daemon)
    found = profiles(daemon.database)
    assert len(found) == 4
    assert sum(p["events"] for p in found.values()) == 5

    assert daemon.terminate() == 0
    daemon.config_path.write_text(loose)
    as_schema_5(daemon.database)  # upgraded since, and not yet started: migrated first
    offline = rebuild()
    assert offline.returncode == 0, offline.stderr
    assert "no daemon answering" in offline.stdout
    assert "4 profiles before, 1 after" in offline.stdout
    assert len(profiles(daemon.database)) == 1


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_merger_process_ends_with_the_daemon_even_when_it_is_killed(
    daemon: DaemonProcess,
) -> None:
    """A leftover merger would hold the database open and keep writing to it."""
    assert daemon.process is not None
    workers = [pid for pid in _children(daemon.process.pid) if "spawn_main" in _cmdline(pid)]
    assert len(workers) == 1
    daemon.kill()
    deadline = time.monotonic() + 10
    while _alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers[0])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_an_event_the_merger_cannot_apply_is_held_and_the_rest_goes_on(
    daemon: DaemonProcess,
) -> None:
    """A damaged graph row (or a merger bug) fails every batch with the event that
    touches it. Crashing would escalate and take ingestion down, and waiting on the
    batch would hold up everyone else's: the merger holds that event with its reason
    and applies the rest."""
    web = client(daemon)
    web.identify("u1", {"plan": "trial"})
    settle(daemon)
    with sqlite3.connect(daemon.database) as db:
        (sound,) = db.execute("SELECT activity FROM profiles WHERE user_id = 'u1'").fetchone()
        db.execute("UPDATE profiles SET activity = 'not json' WHERE user_id = 'u1'")
    web.track("u1", "Upgraded")
    web.track("u2", "Signed Up")
    settle(daemon)
    assert web.errors == []
    status = daemon.admin("/status")[1]
    assert status["events_stored"] == 3
    assert status["held"] == {"identity": 1}
    (item,) = daemon.admin("/held")[1]["items"]
    assert (item["kind"], item["key"]) == ("event", "2")
    assert "DecodeError" in item["error"]
    assert '"event":"Upgraded"' in item["body"]
    assert metric(daemon, 'leadsync_poison_total{component="identity"}') == 1
    assert daemon.admin("/v1/profiles/user_id/u2")[0] == 200

    # The row is repaired (a restore, say); the held event is retried, and applied.
    with sqlite3.connect(daemon.database) as db:
        db.execute("UPDATE profiles SET activity = ? WHERE user_id = 'u1'", (sound,))
    assert daemon.admin("/v1/profiles/user_id/u1")[1]["events"] == 1
    retried = leadsync_here("held", "retry", "--all", "--config", str(daemon.config_path))
    assert "1 event to be applied again" in retried.stdout, retried.stderr
    wait_for(lambda: daemon.admin("/status")[1]["held"] == {})
    u1 = daemon.admin("/v1/profiles/user_id/u1")[1]
    assert u1["events"] == 2
    assert u1["last_events"][0]["event"] == "Upgraded"
    assert daemon.terminate() == 0
