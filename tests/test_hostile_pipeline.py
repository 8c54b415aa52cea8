"""Hostile but valid Segment messages through the whole pipeline of a real daemon:
huge and tiny numbers, deep objects, odd Unicode, every field with values of every
type. Each request is answered (never a 5xx); afterwards no actor has stopped or
restarted, every consumer has applied the whole log, and whatever was set aside is
held with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.messages import EVENT_TYPES
from tests.support.admin_api import run_batch
from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.posting import post

EDGE_INTEGERS = [0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**308, -(10**308)]
EDGE_FLOATS = [5e-324, -5e-324, 1.7976931348623157e308, -0.0, 1e-300, 2.5]
ODD_TEXT = [
    "",
    " ",
    "\u0000",
    "null",
    "undefined",
    "0",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "e\u0301\u0301\u0301",
    "\U0001f600" * 50,
    "\ufeff",
    "a" * 2000,
    "x@y",
    "@",
    "ANN@X.IO ",
]

texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=30))
numbers = st.one_of(
    st.sampled_from(EDGE_INTEGERS),
    st.integers(),
    st.sampled_from(EDGE_FLOATS),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """An object nested far deeper than any real one."""
    value: Any = draw(leaves)
    for _ in range(draw(st.integers(1, 120))):
        value = {"k": value} if draw(st.booleans()) else [value]
    return value


anything = st.one_of(values, deep())
timestamps = st.one_of(
    st.sampled_from(
        [
            "2026-12-05T10:00:00Z",
            "2026-12-05T10:00:00.123456+05:30",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-02-30T00:00:00Z",
            "yesterday",
        ]
    ),
    anything,
)
TRAIT_NAMES = ["email", "employees", "company_size", "revenue", "title", "industry", "country"]


TRAIT_VALUES = st.one_of(st.sampled_from(["CTO", "US", "DE", 50, 11, "ann@initech.com"]), anything)
traits = st.dictionaries(st.one_of(st.sampled_from(TRAIT_NAMES), texts), TRAIT_VALUES, max_size=6)
valid_ids = st.one_of(texts.filter(str.strip), st.integers())


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid in shape, hostile in content; sometimes a field of another type."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    message: dict[str, Any] = {"type": kind, "userId": draw(valid_ids)}
    if draw(st.booleans()):
        message["anonymousId"] = draw(valid_ids)
    if kind == "track":
        message["event"] = draw(st.one_of(st.sampled_from(["Demo Requested"]), texts))
    if kind == "group":
        message["groupId"] = draw(valid_ids)
    if kind == "alias":
        message["previousId"] = draw(valid_ids)
    optional = {
        "messageId": valid_ids,
        "name": texts,
        "traits": traits,
        "properties": traits,
        "context": st.fixed_dictionaries({"traits": traits}),
        "integrations": anything,
        "timestamp": timestamps,
        "sentAt": timestamps,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=6)):
        message[key] = draw(optional[key])
    if draw(st.integers(0, 9)) == 0:  # one field of a type it should not have
        message[draw(st.sampled_from(["userId", "traits", "context", "event"]))] = draw(anything)
    return message


def test_hostile_messages_leave_every_actor_running_and_every_event_applied_or_held(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    crm = f"""
[destinations.crm]
type = "file"
path = "{tmp_path / "out"}"
mode = "both"
filter = 'employees > 10 or title == "CTO" or country in ["US", "DE"]'
"""
    daemon = make_daemon(crm).start()
    answers: list[int] = []

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.lists(messages(), min_size=1, max_size=10))
    def send(batch: list[dict[str, Any]]) -> None:
        answers.append(post(daemon, batch, ascii_only=False))

    send()
    assert set(answers) <= {200, 400}, answers
    assert 200 in answers

    def caught_up() -> bool:
        status = daemon.admin("/status")[1]
        return all(c["applied"] >= status["events_stored"] for c in status["consumers"].values())

    wait_for(caught_up, timeout=60)
    run_batch(daemon)
    wait_for(lambda: daemon.admin("/status")[1]["destinations"]["crm"]["queued"] == 0, 60)

    status = daemon.admin("/status")[1]
    assert status["events_stored"] > 0
    actors = {a["name"]: (a["state"], a["restarts"]) for a in status["actors"]}
    assert all(found == ("running", 0) for found in actors.values()), actors
    assert daemon.admin("/readyz")[0] == 200
    held = daemon.admin("/held?limit=1000")[1]
    assert held["total"] == sum(status["held"].values())
    for item in held["items"]:
        assert item["error"], item
    crashes = [line for line in daemon.log_lines() if line.get("event") == "actor crashed"]
    assert crashes == []
