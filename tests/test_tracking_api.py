"""The tracking-API rules on their own: what a body becomes, what is refused and why.

These are the rules every source applies, so they are tested without a daemon: fast
enough for hypothesis to throw hundreds of bodies at them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import tracking_api
from actors.messages import EVENT_TYPES
from actors.tracking_api import RequestError, body_write_key, parse

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_ISO = "2026-03-01T12:00:00.000Z"
FAST = settings(max_examples=200, deadline=None)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def stored(parsed: tracking_api.ParsedRequest) -> list[dict[str, Any]]:
    """The events as the log will hold them."""
    return [msgspec.json.decode(e.body) for e in parsed.events]


def reasons(parsed: tracking_api.ParsedRequest) -> list[tuple[int | None, str]]:
    return [(r.batch_index, r.reason) for r in parsed.rejected]


# --- single calls -------------------------------------------------------------------


def test_a_track_call_becomes_one_normalized_event() -> None:
    parsed = parse(
        "track",
        body(
            {
                "userId": "u-1",
                "event": "Signed Up",
                "messageId": "m-1",
                "properties": {"plan": "pro"},
                "context": {"ip": "1.2.3.4"},
            }
        ),
        "web",
        NOW,
    )
    assert parsed.rejected == []
    assert [e.type for e in parsed.events] == ["track"]
    [record] = parsed.events
    assert (record.message_id, record.type, record.received_at) == ("m-1", "track", NOW_ISO)
    assert stored(parsed) == [
        {
            "type": "track",
            "messageId": "m-1",
            "source": "web",
            "receivedAt": NOW_ISO,
            "timestamp": NOW_ISO,
            "userId": "u-1",
            "event": "Signed Up",
            "properties": {"plan": "pro"},
            "context": {"ip": "1.2.3.4"},
        }
    ]


def test_the_endpoint_decides_the_type_of_a_single_call() -> None:
    parsed = parse("identify", body({"type": "track", "userId": "u"}), "web", NOW)
    assert [e.type for e in parsed.events] == ["identify"]


def test_numeric_ids_are_kept_as_strings_and_blank_ids_count_as_missing() -> None:
    parsed = parse("identify", body({"userId": 42, "anonymousId": " ", "messageId": 7}), "s", NOW)
    [event] = stored(parsed)
    assert (event["userId"], event["messageId"]) == ("42", "7")
    assert "anonymousId" not in event
    blank = parse("identify", body({"userId": "  ", "anonymousId": ""}), "s", NOW)
    assert reasons(blank) == [(None, "userId or anonymousId is required")]


def test_a_message_id_is_generated_when_absent_and_differs_per_message() -> None:
    parsed = parse("batch", body({"batch": [{"type": "identify", "userId": "u"}] * 3}), "web", NOW)
    ids = [e.message_id for e in parsed.events]
    assert len(set(ids)) == 3
    assert all(len(i) == 36 for i in ids)  # a UUID


@pytest.mark.parametrize(
    ("endpoint", "message", "reason"),
    [
        ("identify", {"traits": {"a": 1}}, "userId or anonymousId is required"),
        ("track", {"userId": "u"}, "event: a track call needs the event name"),
        ("track", {"userId": "u", "event": ""}, "event: a track call needs the event name"),
        ("page", {"name": "Home"}, "userId or anonymousId is required"),
        ("screen", {"name": "Home"}, "userId or anonymousId is required"),
        ("group", {"userId": "u"}, "groupId: a group call needs the group id"),
        ("alias", {"userId": "u"}, "previousId: an alias call needs the previous id"),
        (
            "alias",
            {"anonymousId": "a", "previousId": "p"},
            "userId: an alias call needs the new user id",
        ),
    ],
)
def test_missing_required_fields_are_named(
    endpoint: str, message: dict[str, Any], reason: str
) -> None:
    parsed = parse(endpoint, body(message), "web", NOW)
    assert parsed.events == []
    assert reasons(parsed) == [(None, reason)]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"userId": {"id": 1}}, "userId: expected `int | str | null`, got `object`"),
        ({"userId": "u", "traits": "pro"}, "traits: expected `object | null`, got `str`"),
        ({"userId": "u", "properties": [1]}, "properties: expected `object | null`, got `array`"),
        ({"userId": "u", "timestamp": "yesterday"}, "timestamp: invalid RFC3339 encoded datetime"),
        ({"userId": "u", "sentAt": 3}, "sentAt: expected `datetime | null`, got `int`"),
        ({"userId": True}, "userId: expected `int | str | null`, got `bool`"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(message: dict[str, Any], reason: str) -> None:
    parsed = parse("identify", body(message), "web", NOW)
    assert reasons(parsed) == [(None, reason)]


@pytest.mark.parametrize(
    ("endpoint", "raw", "start"),
    [
        ("track", b"{", "body is not valid JSON"),
        ("track", b"[]", "body is not a message: expected `object`, got `array`"),
        ("track", b"null", "body is not a message"),
        ("batch", b'{"batch": {}}', "body is not a batch: batch: expected `array`, got `object`"),
        ("batch", b"{}", "body is not a batch: object missing required field `batch`"),
        ("import", b"{oops", "body is not valid JSON"),
        ("nope", b"{}", "unknown endpoint /v1/nope"),
    ],
)
def test_unusable_bodies_are_refused_as_a_whole(endpoint: str, raw: bytes, start: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse(endpoint, raw, "web", NOW)
    assert str(refused.value).lower().startswith(start.lower())


def test_bodies_msgspec_cannot_read_are_a_request_error_not_a_crash() -> None:
    """Regression: invalid UTF-8 and deep nesting used to escape as UnicodeDecodeError and
    RecursionError (an HTTP 500) instead of a 400 the client can act on."""
    deep = b'{"userId": "u", "traits": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    for raw in (b'{"userId": "\xff"}', b'{"userId": "u", "traits": {"\xe9t\xe9": 1}}', deep):
        with pytest.raises(RequestError, match="body is not valid JSON"):
            parse("identify", raw, "web", NOW)
    with pytest.raises(RequestError, match="body is not valid JSON"):
        parse("batch", b'{"batch": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "web", NOW)
    in_batch = parse("batch", b'{"batch": [{"type": "identify", "userId": "\xff"}]}', "w", NOW)
    assert [i for i, _ in reasons(in_batch)] == [0]
    assert reasons(in_batch)[0][1].startswith("not valid JSON")
    assert body_write_key(deep) is None


@pytest.mark.parametrize(
    "message",
    [
        {"timestamp": "0001-01-01T00:00:00+01:00"},
        {"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
        {"timestamp": "9999-12-31T23:00:00Z", "sentAt": "0001-01-01T00:00:00Z"},
        {"sentAt": "0001-01-01T00:00:00+05:00"},
    ],
)
def test_dates_that_leave_the_calendar_are_rejected_not_a_crash(message: dict[str, Any]) -> None:
    """Regression: an out-of-range date after UTC conversion or skew correction raised
    OverflowError (an HTTP 500)."""
    parsed = parse("identify", body({"userId": "u", **message}), "web", NOW)
    assert reasons(parsed) == [
        (None, "timestamp: out of range once in UTC and corrected with sentAt")
    ]


def test_a_batch_sent_at_that_leaves_the_calendar_rejects_each_message_using_it() -> None:
    """The batch's own sentAt is converted once for all its messages; out of range, it
    refuses each message that relies on it, as a message's own sentAt would."""
    envelope = {
        "sentAt": "0001-01-01T00:00:00+05:00",
        "batch": [
            {"type": "identify", "userId": "u"},
            {"type": "identify", "userId": "v", "sentAt": "2026-03-01T12:00:00Z"},
        ],
    }
    parsed = parse("batch", msgspec.json.encode(envelope), "web", NOW)
    assert reasons(parsed) == [(0, "timestamp: out of range once in UTC and corrected with sentAt")]
    assert len(parsed.events) == 1


# --- time -----------------------------------------------------------------------------


def test_timestamp_is_corrected_for_clock_skew_with_sent_at() -> None:
    """A device an hour slow sends both times an hour behind: the event happened now."""
    hour_ago = NOW - timedelta(hours=1)
    parsed = parse(
        "track",
        body(
            {
                "userId": "u",
                "event": "e",
                "timestamp": (hour_ago - timedelta(seconds=5)).isoformat(),
                "sentAt": hour_ago.isoformat(),
            }
        ),
        "web",
        NOW,
    )
    [event] = stored(parsed)
    assert event["timestamp"] == "2026-03-01T11:59:55.000Z"
    assert event["originalTimestamp"] == "2026-03-01T10:59:55.000Z"
    assert event["sentAt"] == "2026-03-01T11:00:00.000Z"
    assert event["receivedAt"] == NOW_ISO


def test_a_batch_sent_at_applies_to_its_messages_unless_they_carry_their_own() -> None:
    parsed = parse(
        "batch",
        body(
            {
                "sentAt": "2026-03-01T13:00:00Z",
                "batch": [
                    {"type": "identify", "userId": "u", "timestamp": "2026-03-01T12:59:00Z"},
                    {
                        "type": "identify",
                        "userId": "u",
                        "timestamp": "2026-03-01T12:59:00Z",
                        "sentAt": "2026-03-01T12:59:30Z",
                    },
                ],
            }
        ),
        "web",
        NOW,
    )
    assert [e["timestamp"] for e in stored(parsed)] == [
        "2026-03-01T11:59:00.000Z",
        "2026-03-01T11:59:30.000Z",
    ]


def test_without_sent_at_the_timestamp_is_kept_and_without_timestamp_it_is_received_at() -> None:
    parsed = parse(
        "batch",
        body(
            {
                "batch": [
                    {"type": "identify", "userId": "u", "timestamp": "2020-01-01T01:00:00+01:00"},
                    {"type": "identify", "userId": "u"},
                ]
            }
        ),
        "web",
        NOW,
    )
    first, second = stored(parsed)
    assert first["timestamp"] == first["originalTimestamp"] == "2020-01-01T00:00:00.000Z"
    assert second["timestamp"] == NOW_ISO
    assert "originalTimestamp" not in second


# --- batches --------------------------------------------------------------------------


def test_a_batch_keeps_the_good_messages_and_names_each_bad_one_by_index() -> None:
    big = {"type": "track", "userId": "u", "event": "e", "properties": {"x": "y" * 40_000}}
    parsed = parse(
        "batch",
        body(
            {
                "batch": [
                    {"type": "identify", "userId": "u", "messageId": "a"},
                    {"type": "track", "userId": "u"},
                    big,
                    {"type": "launch", "userId": "u"},
                    {"userId": "u"},
                    "not a message",
                    {"type": "group", "userId": "u", "groupId": "g", "messageId": "b"},
                ]
            }
        ),
        "web",
        NOW,
    )
    assert [e.message_id for e in parsed.events] == ["a", "b"]
    rejected = reasons(parsed)
    assert [i for i, _ in rejected] == [1, 2, 3, 4, 5]
    assert rejected[0][1] == "event: a track call needs the event name"
    assert rejected[1][1].startswith("message is 400")
    assert rejected[1][1].endswith("bytes; the limit is 32768 (32 KB)")
    assert rejected[2][1].startswith("type: 'launch' is not one of identify, track")
    assert rejected[3][1].startswith("type: missing")
    assert rejected[4][1] == "Expected `object`, got `str`"
    # What the client sent is what the quarantine keeps.
    assert json.loads(parsed.rejected[3].body) == {"userId": "u"}


def test_a_batch_context_and_integrations_apply_to_every_message() -> None:
    parsed = parse(
        "import",
        body(
            {
                "context": {"library": {"name": "x"}, "ip": "1.1.1.1"},
                "integrations": {"All": False},
                "batch": [
                    {"type": "identify", "userId": "u", "context": {"ip": "2.2.2.2"}},
                    {"type": "identify", "userId": "v"},
                ],
            }
        ),
        "web",
        NOW,
    )
    first, second = stored(parsed)
    assert first["context"] == {"library": {"name": "x"}, "ip": "2.2.2.2"}
    assert second["context"] == {"library": {"name": "x"}, "ip": "1.1.1.1"}
    assert first["integrations"] == second["integrations"] == {"All": False}


def test_body_write_key_reads_write_key_and_ignores_what_it_cannot_read() -> None:
    assert body_write_key(body({"writeKey": "k", "batch": []})) == "k"
    assert body_write_key(body({"userId": "u"})) is None
    assert body_write_key(body({"writeKey": 5})) is None
    assert body_write_key(b"[1, 2]") is None
    assert body_write_key(b"{") is None


# --- properties -----------------------------------------------------------------------

FIELDS = (
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "category",
    "traits",
    "properties",
    "context",
    "integrations",
    "timestamp",
    "sentAt",
    "writeKey",
    "batch",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=3),
    ),
    max_leaves=6,
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
edges = st.sampled_from([datetime.min, datetime.max])
"""The calendar's ends: where UTC conversion and skew correction can fall off it."""
moments = st.datetimes(timezones=st.none() | offsets) | st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone), edges, st.none() | offsets
)
dates = moments.map(datetime.isoformat)
ids = st.one_of(
    st.uuids().map(str),
    st.integers(min_value=0, max_value=2**63),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24),
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
flat_objects = st.dictionaries(st.text(max_size=8), scalars, max_size=3)
"""Cheaper to draw than `objects`; what valid messages carry matters less than their ids."""


@st.composite
def messageish(draw: st.DrawFn) -> dict[str, Any]:
    """Objects shaped like messages, with every field sometimes of the wrong type, so the
    rules past decoding (required ids, skew correction, merging) are reached too."""
    chosen = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    message: dict[str, Any] = {}
    for name in chosen:
        if name in ("timestamp", "sentAt"):
            message[name] = draw(dates | json_values)
        elif name == "type":
            message[name] = draw(st.sampled_from(EVENT_TYPES) | json_values)
        elif name.endswith("Id") or name in ("event", "name"):
            message[name] = draw(ids | json_values)
        elif name == "batch":
            message[name] = draw(st.lists(messageish() | json_values, max_size=3) | json_values)
        else:
            message[name] = draw(objects | json_values)
    return message


@st.composite
def valid_message(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    message: dict[str, Any] = {"type": kind, "messageId": draw(ids)}
    who = draw(st.sampled_from(["userId", "anonymousId", "both"]))
    if who != "anonymousId" or kind == "alias":
        message["userId"] = draw(ids)
    if who != "userId":
        message["anonymousId"] = draw(ids)
    if kind == "track":
        message["event"] = draw(st.text(min_size=1, max_size=30))
    if kind == "group":
        message["groupId"] = draw(ids)
    if kind == "alias":
        message["previousId"] = draw(ids)
    if kind in ("page", "screen"):
        message["name"] = draw(st.none() | st.text(max_size=20))
    field = "properties" if kind in ("track", "page", "screen") else "traits"
    message[field] = draw(st.none() | flat_objects)
    message["context"] = draw(st.none() | flat_objects)
    if draw(st.booleans()):
        sent = draw(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=offsets))
        message["sentAt"] = sent.isoformat()
        message["timestamp"] = (
            sent - draw(st.timedeltas(timedelta(0), timedelta(days=9)))
        ).isoformat()
    return message


@FAST
@given(batch=st.lists(valid_message(), max_size=8), endpoint=st.sampled_from(["batch", "import"]))
def test_every_valid_message_is_accepted_with_its_message_id(
    batch: list[dict[str, Any]], endpoint: str
) -> None:
    parsed = parse(endpoint, body({"batch": batch}), "web", NOW)
    assert parsed.rejected == []
    assert [e.message_id for e in parsed.events] == [str(m["messageId"]) for m in batch]
    assert [e.type for e in parsed.events] == [m["type"] for m in batch]
    for message, event in zip(batch, stored(parsed), strict=True):
        assert event["messageId"] == str(message["messageId"])
        assert event["type"] == message["type"]
        assert event["receivedAt"] == NOW_ISO


@st.composite
def any_times(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message but for its times, which may be anywhere in the calendar: only
    there do timezone conversion and skew correction see the calendar's ends."""
    message = {**draw(valid_message()), "timestamp": draw(dates)}
    if draw(st.booleans()):
        message["sentAt"] = draw(dates)
    return message


@FAST
@given(
    endpoint=st.sampled_from(sorted(tracking_api.SINGLE_ENDPOINTS | tracking_api.BATCH_ENDPOINTS)),
    value=st.one_of(
        json_values,
        messageish(),
        st.builds(dict, batch=st.lists(messageish(), max_size=4)),
        any_times(),
        st.builds(dict, batch=st.lists(any_times(), max_size=4), sentAt=dates),
    ),
)
def test_any_json_body_is_parsed_or_refused_never_a_crash(endpoint: str, value: Any) -> None:
    """Anything else escaping `parse` is an HTTP 500 for the client."""
    raw = json.dumps(value).encode()
    try:
        parsed = parse(endpoint, raw, "web", NOW)
    except RequestError:
        return
    for record in parsed.events:
        msgspec.json.decode(record.body)  # what the log stores is JSON


INVALID = st.one_of(
    st.builds(dict, type=st.just("identify")),
    st.builds(dict, type=st.just("track"), userId=ids),
    st.builds(dict, type=st.just("group"), anonymousId=ids),
    st.builds(dict, type=st.just("alias"), userId=ids),
    st.builds(dict, type=st.sampled_from(["", "Track", "launch", "purchase"])),
    st.builds(dict, type=st.just("identify"), userId=ids, traits=st.text()),
    st.builds(dict, type=st.just("identify"), userId=ids, timestamp=st.text(max_size=8)),
    st.builds(
        dict,
        type=st.just("identify"),
        userId=st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | flat_objects,
    ),
    scalars,
    st.lists(scalars, max_size=3),
)


@FAST
@given(st.lists(st.tuples(st.booleans(), valid_message(), INVALID), max_size=8))
def test_accepted_and_rejected_partition_a_mixed_batch(
    draws: list[tuple[bool, dict[str, Any], Any]],
) -> None:
    """Every message is either stored or rejected by its own index: none lost, none twice."""
    batch: list[Any] = []
    for index, (good, valid, invalid) in enumerate(draws):
        batch.append({**valid, "messageId": f"m{index}"} if good else invalid)
    parsed = parse("batch", body({"batch": batch}), "web", NOW)
    accepted = [int(e.message_id[1:]) for e in parsed.events]
    rejected = [r.batch_index for r in parsed.rejected]
    assert accepted == [i for i, (good, _, _) in enumerate(draws) if good]
    assert rejected == [i for i, (good, _, _) in enumerate(draws) if not good]
    assert all(r.reason for r in parsed.rejected)


def test_an_integer_beyond_a_floats_range_is_refused_with_its_path_and_nothing_else_is() -> None:
    huge, edge = "9" * 309, str(10**308)  # 9.9e308 is past a float's 1.8e308; 1e308 is not
    messages = [
        f'{{"type":"track","event":"e","userId":"a","properties":{{"n":[1,{{"x":{huge}}}]}}}}',
        f'{{"type":"track","event":"e","userId":"b","properties":{{"n":{edge}}}}}',
        f'{{"type":"identify","userId":"c","traits":{{"id":"{huge}","f":1.{"0" * 400}}}}}',
        f'{{"type":"identify","userId":"d","context":{{"traits":{{"n":-{huge}}}}}}}',
    ]
    parsed = parse("batch", f'{{"batch":[{",".join(messages)}]}}'.encode(), "web", NOW)
    assert [r.batch_index for r in parsed.rejected] == [0, 3]
    assert parsed.rejected[0].reason.startswith("properties.n[1].x: an integer of 309 digits")
    assert parsed.rejected[1].reason.startswith("context.traits.n: an integer")
    assert [json.loads(e.body)["userId"] for e in parsed.events] == ["b", "c"]
