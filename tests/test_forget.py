"""`leadsync forget` and `unforget`, as an operator runs them: against a running daemon
(through its admin API) and on the files with the daemon stopped. What a person's
erasure must leave: no event of theirs in the log, no profile, identity, aggregate or
queued payload, a deletion request to the webhook that had received them, and their
later events acknowledged but not stored, until unforget. The commands a test runs to
look (profile) or runs again run in the test's process."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.support.admin_api import metrics, sample
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess, destination, free_port, wait_for
from tests.support.fake_receiver import receiver_thread
from tests.support.posting import post, send
from tests.support.scoring import CTO

ANN = ("ann-1", "anon-ann", "initech")
"""What of Ann's may appear in a body: her user id, anonymous id, email's domain."""


def ann_events() -> list[dict[str, Any]]:
    return [
        {"type": "identify", "userId": "ann-1", "anonymousId": "anon-ann", "traits": CTO},
        {"type": "track", "anonymousId": "anon-ann", "event": "Demo Requested"},
        # Her email in another case, in context.traits: the merger normalises it.
        {
            "type": "page",
            "userId": "ann-1",
            "name": "Pricing",
            "context": {"traits": {"email": "ANN@Initech.com"}},
        },
    ]


BOB: list[dict[str, Any]] = [
    {"type": "identify", "userId": "bob-1", "traits": {"email": "bob@example.com"}},
    {"type": "track", "userId": "bob-1", "event": "Demo Requested"},
]


def bodies_mentioning_ann(daemon: DaemonProcess) -> list[str]:
    found = []
    for (body,) in daemon.query("SELECT body FROM events UNION ALL SELECT body FROM quarantine"):
        text = bytes(body).decode().lower()
        if any(part in text for part in ANN):
            found.append(text)
    return found


def rows_of_ann(daemon: DaemonProcess) -> dict[str, int]:
    values = ("ann-1", "anon-ann", "ann@initech.com")
    marks = ", ".join("?" * len(values))
    return {
        table: daemon.query(f"SELECT count(*) FROM {table} WHERE value IN ({marks})", *values)[0][0]
        for table in ("identities", "intent")
    }


def applied(daemon: DaemonProcess) -> bool:
    consumers = daemon.admin("/status")[1]["consumers"]
    return all(consumers.get(c, {}).get("lag_events") == 0 for c in ("identity", "scorer"))


def admin_post(daemon: DaemonProcess, path: str, body: bytes, kind: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        daemon.admin_url + path, body, {"Content-Type": kind}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_forget_in_a_running_daemon_erases_the_person_and_drops_their_later_events(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    with receiver_thread() as receiver:
        hook = destination("hook", "webhook", mode="realtime", url=receiver.url, secret="s")
        daemon = make_daemon(hook).start()
        assert post(daemon, ann_events() + BOB) == 200
        wait_for(lambda: {r["user_id"] for r in receiver.records()} == {"ann-1", "bob-1"})
        wait_for(lambda: applied(daemon))
        assert rows_of_ann(daemon) == {"identities": 3, "intent": 2}
        config = ["--config", str(daemon.config_path)]

        done = leadsync("forget", "email:Ann@Initech.com", *config)

        assert done.returncode == 0, done.stderr
        assert "forgot email:ann@initech.com in the running daemon" in done.stdout
        assert "1 profile with 3 identifiers, 3 events from the log" in done.stdout
        assert "a deletion request is queued for destination hook" in done.stdout
        assert leadsync_here("profile", "user_id:ann-1", *config).returncode == 1
        assert leadsync_here("profile", "anonymous_id:anon-ann", *config).returncode == 1
        assert bodies_mentioning_ann(daemon) == []
        assert rows_of_ann(daemon) == {"identities": 0, "intent": 0}
        # What stays is a keyed hash per identifier, never the value.
        kept = daemon.query("SELECT hash, kind FROM suppressions ORDER BY kind")
        assert [kind for _, kind in kept] == ["anonymous_id", "email", "user_id"]
        assert all(b"ann" not in bytes(h) for h, _ in kept)
        # The webhook that had received her is told she is gone.
        wait_for(lambda: any(r.get("deleted") for r in receiver.records()))
        [deletion] = [r for r in receiver.records() if r.get("deleted")]
        assert deletion["user_id"] == "ann-1"
        assert deletion["email"] == "ann@initech.com"
        assert deletion["traits"] == {}
        wait_for(lambda: daemon.query("SELECT count(*) FROM outbox")[0][0] == 0)

        # Her later events are acknowledged (clients must not retry) and dropped.
        later = [
            {"type": "track", "userId": "ann-1", "event": "Demo Requested"},
            {"type": "track", "anonymousId": "anon-ann", "event": "Back"},
            {"type": "track", "userId": "bob-1", "event": "Back"},
        ]
        assert post(daemon, later) == 200
        assert bodies_mentioning_ann(daemon) == []
        assert sample(metrics(daemon), "leadsync_events_suppressed_total", source="web") == 2
        wait_for(lambda: applied(daemon))
        assert leadsync_here("profile", "user_id:ann-1", *config).returncode == 1
        assert leadsync_here("profile", "user_id:bob-1", *config).returncode == 0

        # unforget by any of her identifiers lifts all three.
        lifted = leadsync("unforget", "anonymous_id:anon-ann", *config)
        assert lifted.returncode == 0, lifted.stderr
        assert "3 identifiers no longer suppressed" in lifted.stdout
        assert daemon.query("SELECT count(*) FROM suppressions") == [(0,)]
        assert post(daemon, [{"type": "identify", "userId": "ann-1"}]) == 200
        wait_for(lambda: leadsync_here("profile", "user_id:ann-1", *config).returncode == 0)
        again = leadsync_here("unforget", "user_id:ann-1", *config)
        assert again.returncode == 1
        assert "nothing is suppressed for user_id:ann-1" in again.stdout


def test_a_deletion_request_stays_queued_while_the_destination_is_down(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Ann's payload is still queued for a webhook that does not answer when she is
    forgotten: the payload goes, and the deletion request that replaces it stays."""
    down = f"http://127.0.0.1:{free_port()}/in"
    daemon = make_daemon(destination("hook", "webhook", mode="realtime", url=down, secret="s"))
    daemon.start()
    assert post(daemon, ann_events()) == 200
    wait_for(lambda: daemon.query("SELECT count(*) FROM outbox")[0][0] == 1)

    done = leadsync("forget", "user_id:ann-1", "--config", str(daemon.config_path))

    assert done.returncode == 0, done.stderr
    assert "a deletion request is queued for destination hook" in done.stdout
    queued = [json.loads(bytes(p)) for (p,) in daemon.query("SELECT payload FROM outbox")]
    assert [(q.get("deleted"), q.get("user_id"), q["traits"]) for q in queued] == [
        (True, "ann-1", {})
    ]


def test_the_admin_api_forgets_from_a_json_body_and_refuses_anything_else(
    daemon: DaemonProcess,
) -> None:
    assert post(daemon, ann_events()) == 200
    wait_for(lambda: applied(daemon))
    form = b"identifier=user_id%3Aann-1"
    assert admin_post(daemon, "/v1/forget", form, "application/x-www-form-urlencoded")[0] == 415
    status, answer = admin_post(
        daemon, "/v1/forget", b'{"identifier": "phone:1"}', "application/json"
    )
    assert status == 400
    assert "KIND one of user_id, email, anonymous_id" in answer["error"]
    assert (
        leadsync_here("profile", "user_id:ann-1", "--config", str(daemon.config_path)).returncode
        == 0
    )

    status, answer = admin_post(
        daemon, "/v1/forget", b'{"identifier": "user_id:ann-1"}', "application/json"
    )

    assert status == 200, answer
    assert answer["profiles"] == 1
    assert answer["events"] == 3
    assert answer["suppressed"] == 3
    assert bodies_mentioning_ann(daemon) == []


def test_forget_with_the_daemon_stopped_works_on_the_files_and_the_next_start_drops_them(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    assert post(daemon, ann_events() + BOB) == 200
    wait_for(lambda: applied(daemon))
    assert daemon.terminate() == 0
    config = ["--config", str(daemon.config_path)]

    done = leadsync("forget", "user_id:ann-1", *config)

    assert done.returncode == 0, done.stderr
    assert "forgot user_id:ann-1 in the database (no daemon running)" in done.stdout
    assert bodies_mentioning_ann(daemon) == []
    assert rows_of_ann(daemon) == {"identities": 0, "intent": 0}
    nobody = leadsync_here("forget", "email:nobody@example.com", *config)
    assert nobody.returncode == 0, nobody.stderr
    assert "no profile has email:nobody@example.com" in nobody.stdout

    daemon.start()
    assert post(daemon, [{"type": "identify", "userId": "ann-1", "traits": CTO}]) == 200
    assert (
        post(
            daemon,
            [{"type": "identify", "traits": {"email": "nobody@example.com"}, "anonymousId": "z"}],
        )
        == 200
    )
    assert bodies_mentioning_ann(daemon) == []
    assert sample(metrics(daemon), "leadsync_events_suppressed_total", source="web") == 2
    assert leadsync_here("profile", "user_id:bob-1", *config).returncode == 0


def test_forget_while_the_persons_events_stream_in_leaves_nothing_of_them(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon().start()
    answers: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        """Her devices are new to the forget while it searches, each first seen in a
        batch of its own, and more than the 100 anonymous ids a profile keeps before it
        starts: each further one is a profile of its own, which forget must take too."""
        n = 0
        while not stop.is_set():
            batch = [
                {"type": "identify", "userId": "ann-1", "anonymousId": f"anon-ann-{n}"},
                {"type": "track", "userId": "ann-1", "event": "Demo Requested"},
                {"type": "track", "userId": f"bob-{n}", "event": "Demo Requested"},
            ]
            answers.append(post(daemon, batch))
            n += 1

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        # Generous: on a loaded two-core machine the sender shares the cores with the
        # daemon, and requests wait while the forget holds ingestion.
        wait_for(lambda: len(answers) >= 150, timeout=60)
        done = leadsync("forget", "user_id:ann-1", "--config", str(daemon.config_path))
        assert done.returncode == 0, done.stderr
        count = len(answers)
        wait_for(lambda: len(answers) >= count + 20, timeout=30)
    finally:
        stop.set()
        sender.join(30)
    assert set(answers) == {200}
    wait_for(lambda: applied(daemon))
    assert bodies_mentioning_ann(daemon) == []
    for table in ("identities", "intent"):
        assert daemon.query(f"SELECT count(*) FROM {table} WHERE value LIKE '%ann-%'") == [(0,)]
    assert daemon.query("SELECT count(*) FROM identities WHERE value LIKE 'bob-%'")[0][0] >= 40
    assert sample(metrics(daemon), "leadsync_events_suppressed_total", source="web") >= 40


def test_forget_on_a_shared_device_leaves_the_other_people_who_used_it(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Ann used device dev-a first, then Bob signed in on it, then Carol (known by
    email only; a cap of one email a profile keeps her apart from Ann). The device is
    Ann's (first user by event time), but Bob's and Carol's events, which carry it,
    are theirs, and so are their profiles."""
    daemon = make_daemon("[identity.limits]\nemail = 1\n").start()
    t = "2026-03-01T10:0{}:00Z".format
    assert (
        post(
            daemon,
            [
                {
                    "type": "identify",
                    "userId": "ann-1",
                    "anonymousId": "dev-a",
                    "traits": CTO,
                    "timestamp": t(1),
                },
                {"type": "track", "anonymousId": "dev-a", "event": "Pricing", "timestamp": t(2)},
                {"type": "identify", "userId": "bob-1", "anonymousId": "dev-a", "timestamp": t(3)},
                {
                    "type": "track",
                    "userId": "bob-1",
                    "anonymousId": "dev-a",
                    "event": "Demo Requested",
                    "timestamp": t(4),
                },
                {
                    "type": "identify",
                    "anonymousId": "dev-a",
                    "traits": {"email": "carol@example.com"},
                    "timestamp": t(5),
                },
            ],
        )
        == 200
    )
    wait_for(lambda: applied(daemon))
    config = ["--config", str(daemon.config_path)]
    before = {
        who: daemon.query("SELECT profile FROM identities WHERE value = ?", who)[0][0]
        for who in ("ann-1", "dev-a", "bob-1", "carol@example.com")
    }
    assert before["dev-a"] == before["ann-1"]
    assert len({before["ann-1"], before["bob-1"], before["carol@example.com"]}) == 3

    done = leadsync("forget", "user_id:ann-1", *config)

    assert done.returncode == 0, done.stderr
    assert "1 profile with 3 identifiers, 2 events from the log" in done.stdout
    assert bodies_mentioning_ann(daemon) == []

    def logged(text: str) -> int:
        return int(
            daemon.query("SELECT count(*) FROM events WHERE CAST(body AS TEXT) LIKE ?", text)[0][0]
        )

    assert logged("%bob-1%") == 2
    assert logged("%carol@example.com%") == 1
    assert daemon.query("SELECT value, profile FROM identities ORDER BY value") == [
        ("bob-1", before["bob-1"]),
        ("carol@example.com", before["carol@example.com"]),
    ]
    assert leadsync_here("profile", "user_id:bob-1", *config).returncode == 0
    assert leadsync_here("profile", "email:carol@example.com", *config).returncode == 0

    # Bob, signed in on the device, is still Bob; the device alone may be Ann: dropped.
    later = [
        {"type": "track", "userId": "bob-1", "anonymousId": "dev-a", "event": "Pricing"},
        {"type": "track", "anonymousId": "dev-a", "event": "Pricing"},
    ]
    assert post(daemon, later) == 200
    wait_for(lambda: logged("%bob-1%") == 3)
    assert logged("%dev-a%") == 4  # Bob's three and Carol's one
    assert sample(metrics(daemon), "leadsync_events_suppressed_total", source="web") == 1


def test_after_forget_the_persons_malformed_messages_are_not_quarantined(
    daemon: DaemonProcess,
) -> None:
    assert post(daemon, ann_events()) == 200
    wait_for(lambda: applied(daemon))
    assert (
        admin_post(daemon, "/v1/forget", b'{"identifier": "user_id:ann-1"}', "application/json")[0]
        == 200
    )
    batch = [
        {"type": "track", "userId": "bob-1", "event": "Demo Requested"},
        {"type": "track", "userId": "ann-1"},  # no event name: rejected
        {"type": "identify", "userId": ["x"], "traits": {"email": "Ann@Initech.com"}},
        {"type": "track", "userId": "bob-1"},  # rejected too, and Bob's: kept
    ]

    answer = send(daemon, "/v1/batch", {"batch": batch})

    # Answered as the batch says: its rejects named, its good message stored.
    assert answer.status == 200
    assert [r["index"] for r in answer.body["rejected"]] == [1, 2, 3]
    assert bodies_mentioning_ann(daemon) == []
    kept = daemon.query("SELECT batch_index FROM quarantine")
    assert kept == [(3,)]
    assert daemon.query("SELECT count(*) FROM events WHERE CAST(body AS TEXT) LIKE '%bob-1%'") == [
        (1,)
    ]


def test_after_forget_a_message_of_any_shape_is_judged_and_nobody_elses_commit_fails(
    daemon: DaemonProcess,
) -> None:
    """The suppression filter reads refused messages leniently, in the log writer's
    group commit: a type that is a list or an object must not fail that commit."""
    assert post(daemon, ann_events()) == 200
    wait_for(lambda: applied(daemon))
    forgot = admin_post(
        daemon, "/v1/forget", b'{"identifier": "user_id:ann-1"}', "application/json"
    )
    assert forgot[0] == 200
    batch = [
        {"type": [], "userId": "x-1"},
        {"type": {"a": 1}, "userId": "ann-1"},
        {"type": "track", "userId": "bob-1", "event": "Signed Up"},
    ]
    answer = send(daemon, "/v1/batch", {"batch": batch})
    assert answer.status == 200
    assert [r["index"] for r in answer.body["rejected"]] == [0, 1]
    stored = daemon.query("SELECT count(*) FROM events WHERE CAST(body AS TEXT) LIKE '%bob-1%'")
    assert stored == [(1,)]
    assert [line for line in daemon.log_lines() if line.get("event") == "actor crashed"] == []
    assert daemon.query("SELECT batch_index FROM quarantine") == [(0,)]  # ann's is not kept


def test_forget_removes_only_the_persons_quarantined_messages(daemon: DaemonProcess) -> None:
    """A short value is found in many bodies; only those it is an identifier of go."""
    batch = [
        {"type": "identify", "userId": "1", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "1"},  # no event name: quarantined, theirs
        {"type": "track", "userId": "u-10"},  # quarantined, someone else's
        {"type": "track", "anonymousId": "a-2", "properties": {"ref": "1"}},  # a mention
    ]
    assert send(daemon, "/v1/batch", {"batch": batch}).status == 200
    wait_for(lambda: applied(daemon))
    assert daemon.query("SELECT count(*) FROM quarantine") == [(3,)]

    status, answer = admin_post(
        daemon, "/v1/forget", b'{"identifier": "user_id:1"}', "application/json"
    )

    assert status == 200, answer
    assert answer["quarantined"] == 1
    assert daemon.query("SELECT batch_index FROM quarantine ORDER BY batch_index") == [(2,), (3,)]
