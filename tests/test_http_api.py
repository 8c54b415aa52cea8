"""Segment's HTTP tracking API as a client meets it, over a socket.

Each test checks what a user of the API would see: the status code and the JSON error
body, what ended up in the event log, what the operator sees in the quarantine, and
what Prometheus scrapes. How a request is answered is asked of the API served in
process (tests/support/ingestion.py: the daemon's own wiring of the HTTP source and the
log writer, on a real file); what the quarantine command, /metrics and /status show of
that traffic is asked of a real daemon.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from actors import http_source
from daemon import __version__
from tests.support.admin_api import metrics, quarantine, sample
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess
from tests.support.ingestion import IngestionApi
from tests.support.posting import WEB_KEY, basic_auth, refused, send

KB = 1024


def track(user: str = "u-1", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "Signed Up", **fields}


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    """`body` as a streaming client sends it: in chunks, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# --- refusals of the whole request ---------------------------------------------------


async def test_malformed_json_is_a_400_that_says_so_and_stores_nothing(api: IngestionApi) -> None:
    for path in ("/v1/track", "/v1/batch"):
        answer = await api.call(path, b'{"userId": "u-1", "event": ')
        assert answer.status == 400
        assert answer.body["code"] == "invalid_request"
        assert answer.body["message"].startswith("body is not valid JSON: ")
    assert api.events() == []
    assert await api.quarantined() == 0


async def test_wrong_types_are_a_400_naming_the_message_and_the_field(api: IngestionApi) -> None:
    refused(
        await api.send("/v1/identify", {"userId": {"id": 1}}),
        400,
        "userId: expected `int | str | null`, got `object`",
    )
    refused(
        await api.send("/v1/batch", {"batch": {"type": "track"}}),
        400,
        "body is not a batch: batch: expected `array`, got `object`",
    )
    refused(
        await api.send("/v1/track", track(properties="pro")),
        400,
        "properties: expected `object | null`, got `str`",
    )
    answer = await api.send(
        "/v1/batch", {"batch": [track(timestamp="last tuesday"), track(userId=[1])]}
    )
    refused(answer, 400, "batch[0]: timestamp: invalid RFC3339 encoded datetime")
    assert answer.body["rejected"] == [
        {"index": 0, "message": "timestamp: invalid RFC3339 encoded datetime"},
        {"index": 1, "message": "userId: expected `int | str | null`, got `array`"},
    ]
    assert api.events() == []


async def test_bodies_the_decoder_cannot_read_are_a_400_not_a_500(api: IngestionApi) -> None:
    """Regression: these were answered 500 (an exception escaped the parser), which
    Segment's clients retry forever."""
    deep = b'{"userId": "u-1", "traits": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001
    for body in (b'{"userId": "caf\xe9"}', deep):
        answer = await api.call("/v1/identify", body)
        assert answer.status == 400
        assert answer.body["message"].startswith("body is not valid JSON")
    early = await api.send(
        "/v1/identify",
        {"userId": "u-1", "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"},
    )
    refused(early, 400, "timestamp: out of range once in UTC and corrected with sentAt")
    assert api.events() == []


async def test_missing_required_fields_are_a_400_for_every_call_type(api: IngestionApi) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "identify": ({"traits": {"plan": "pro"}}, "userId or anonymousId is required"),
        "track": ({"userId": "u-1"}, "event: a track call needs the event name"),
        "page": ({"name": "Home"}, "userId or anonymousId is required"),
        "screen": ({"name": "Home"}, "userId or anonymousId is required"),
        "group": ({"userId": "u-1"}, "groupId: a group call needs the group id"),
        "alias": ({"userId": "u-1"}, "previousId: an alias call needs the previous id"),
    }
    for kind, (message, reason) in cases.items():
        answer = await api.send(f"/v1/{kind}", message)
        refused(answer, 400, reason)
        assert answer.body["rejected"] == [{"index": None, "message": reason}]

    batch = [{"type": kind, **message} for kind, (message, _) in cases.items()]
    batch.append({"type": "alias", "previousId": "anon-1", "anonymousId": "anon-2"})
    answer = await api.send("/v1/batch", {"batch": batch})
    refused(answer, 400, "batch[0]: userId or anonymousId is required")
    assert answer.body["rejected"] == [
        *({"index": i, "message": reason} for i, (_, reason) in enumerate(cases.values())),
        {"index": 6, "message": "userId: an alias call needs the new user id"},
    ]
    assert api.events() == []
    # Refused messages are kept for the operator, single calls included.
    assert await api.quarantined() == len(cases) + len(batch)


async def test_an_oversized_message_is_rejected_by_index_and_its_neighbours_kept(
    api: IngestionApi,
) -> None:
    big = track(messageId="big", properties={"blob": "x" * 33 * KB})
    size = len(json.dumps(big, separators=(",", ":")))
    answer = await api.call(
        "/v1/batch",
        json.dumps(
            {"batch": [track(messageId="a"), big, track(messageId="b")]}, separators=(",", ":")
        ).encode(),
    )
    assert answer.status == 200
    assert answer.body == {
        "success": True,
        "accepted": 2,
        "rejected": [
            {"index": 1, "message": f"message is {size} bytes; the limit is 32768 (32 KB)"}
        ],
    }
    assert [e["messageId"] for e in api.events()] == ["a", "b"]


async def test_an_oversized_request_is_a_400_with_or_without_content_length(
    api: IngestionApi,
) -> None:
    body = json.dumps({"batch": [track(properties={"n": "x" * 20 * KB})] * 26}).encode()
    assert len(body) > 500 * KB
    whole = await api.call("/v1/batch", body)
    refused(whole, 400, "request body over 512000 bytes (500 KB)")
    chunked = await api.call("/v1/batch", pieces(body, 64 * KB))
    refused(chunked, 400, "request body over 512000 bytes (500 KB)")
    assert api.events() == []
    assert await api.quarantined() == 0


# --- content encoding ----------------------------------------------------------------


async def test_a_gzip_body_is_accepted(api: IngestionApi) -> None:
    body = gzip.compress(json.dumps({"batch": [track(messageId="zipped")]}).encode())
    answer = await api.call("/v1/batch", body, headers={"Content-Encoding": "gzip"})
    assert (answer.status, answer.body) == (200, {"success": True})
    assert [e["messageId"] for e in api.events()] == ["zipped"]


async def test_a_gzip_body_of_several_members_is_read_whole(api: IngestionApi) -> None:
    """Concatenated gzip files are one valid gzip stream; reading only the first
    member would cut the JSON short."""
    text = json.dumps({"batch": [track(messageId="one"), track(messageId="two")]}).encode()
    body = gzip.compress(text[:40]) + gzip.compress(text[40:])
    answer = await api.call("/v1/batch", body, headers={"Content-Encoding": "gzip"})
    assert (answer.status, answer.body) == (200, {"success": True})
    assert [e["messageId"] for e in api.events()] == ["one", "two"]


async def test_a_gzip_bomb_is_refused_without_inflating_it(api: IngestionApi) -> None:
    inflated = 128 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_RLE)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(inflated >> 20)) + packer.flush()
    assert len(bomb) < 500 * KB
    # Every allocation the request makes is traced, from the socket read to the answer.
    tracemalloc.start()
    try:
        answer = await api.call("/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refused(answer, 400, "request body over 512000 bytes (500 KB) once decompressed")
    # The 128 MB never existed: at its peak the request held a few MB at most.
    assert peak < 32 << 20


async def test_bad_gzip_and_unknown_encodings_are_a_400(api: IngestionApi) -> None:
    zipped = gzip.compress(json.dumps(track()).encode())
    garbage = await api.call("/v1/track", b"not gzip", headers={"Content-Encoding": "gzip"})
    assert garbage.status == 400
    assert garbage.body["message"].startswith("body is not valid gzip: ")
    cut = await api.call("/v1/track", zipped[:-12], headers={"Content-Encoding": "gzip"})
    refused(cut, 400, "body is not valid gzip: truncated")
    junk = await api.call("/v1/track", zipped + b"junk", headers={"Content-Encoding": "gzip"})
    assert junk.status == 400
    assert junk.body["message"].startswith("body is not valid gzip: ")
    brotli = await api.call("/v1/track", zipped, headers={"Content-Encoding": "br"})
    refused(brotli, 400, "Content-Encoding 'br': only gzip is accepted")
    assert api.events() == []


# --- authentication ------------------------------------------------------------------


async def test_requests_without_a_known_write_key_are_a_401(api: IngestionApi) -> None:
    refused(await api.send("/v1/track", track(), key="guess"), 401, "unknown write key")
    refused(
        await api.send("/v1/track", track(), key=None),
        401,
        "no write key: send it as the Basic auth user name or as writeKey in the body",
    )
    refused(
        await api.send(
            "/v1/track", track(), key=None, headers={"Authorization": f"Bearer {WEB_KEY}"}
        ),
        401,
        "use HTTP Basic auth with the write key as user name",
    )
    refused(
        await api.send("/v1/track", {**track(), "writeKey": "guess"}, key=None),
        401,
        "unknown write key",
    )
    assert api.events() == []


async def test_write_key_in_the_body_works_and_names_the_source(api: IngestionApi) -> None:
    single = await api.send("/v1/track", {**track(), "writeKey": WRITE_KEYS["backend"]}, key=None)
    batch = await api.send(
        "/v1/batch", {"batch": [track()], "writeKey": WRITE_KEYS["backend"]}, key=None
    )
    assert (single.status, batch.status) == (200, 200)
    assert [e["source"] for e in api.events()] == ["backend", "backend"]


# --- a batch is judged message by message --------------------------------------------


def test_one_bad_message_in_a_batch_is_quarantined_and_the_rest_stored_once(
    daemon: DaemonProcess,
) -> None:
    bad = {"type": "identify", "userId": "u-2", "traits": "pro", "messageId": "bad"}
    batch = [track(messageId="m-0"), bad, {"type": "identify", "userId": "u-3", "messageId": "m-2"}]
    answer = send(daemon, "/v1/batch", {"batch": batch})
    reason = "traits: expected `object | null`, got `str`"
    assert answer.status == 200
    assert answer.body == {
        "success": True,
        "accepted": 2,
        "rejected": [{"index": 1, "message": reason}],
    }
    assert [e["messageId"] for e in daemon.events()] == ["m-0", "m-2"]
    assert daemon.query("SELECT count(*) FROM events WHERE message_id = 'bad'") == [(0,)]

    seen = quarantine(daemon)
    assert seen["total"] == 1
    [row] = seen["messages"]
    assert (row["source"], row["batch_index"], row["reason"]) == ("web", 1, reason)
    assert json.loads(row["body"]) == bad

    cli = leadsync("quarantine", "--admin", daemon.admin_url, "--json", cwd=daemon.directory)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == seen
    # A wide terminal, so rich does not wrap the table.
    table = leadsync_here("quarantine", "--admin", daemon.admin_url, env={"COLUMNS": "300"})
    assert table.returncode == 0, table.stderr
    assert "1 quarantined message (newest 1)" in table.stdout
    assert reason in table.stdout
    assert '"messageId": "bad"' in table.stdout


async def test_import_is_judged_like_batch(api: IngestionApi) -> None:
    answer = await api.send(
        "/v1/import", {"batch": [track(messageId="i-0"), {"type": "track", "userId": "u"}]}
    )
    assert answer.status == 200
    assert answer.body["accepted"] == 1
    assert answer.body["rejected"] == [
        {"index": 1, "message": "event: a track call needs the event name"}
    ]
    assert [e["messageId"] for e in api.events()] == ["i-0"]


async def test_a_retried_batch_is_acknowledged_and_stored_once(api: IngestionApi) -> None:
    batch = {"batch": [track(messageId="r-0"), track(messageId="r-1")]}
    first = await api.send("/v1/batch", batch)
    again = await api.send("/v1/batch", batch)
    assert (first.status, first.body) == (again.status, again.body) == (200, {"success": True})
    assert [e["messageId"] for e in api.events()] == ["r-0", "r-1"]
    assert api.sample("leadsync_events_duplicate_total", source="web") == 2
    # Deduplication is per source: the same messageId from another source is its own event.
    await api.send("/v1/batch", batch, key=WRITE_KEYS["backend"])
    assert [e["source"] for e in api.events()] == ["web", "web", "backend", "backend"]


async def test_message_ids_are_generated_when_absent(api: IngestionApi) -> None:
    message = {"type": "identify", "userId": "u-1"}
    assert (await api.send("/v1/batch", {"batch": [message, message]})).status == 200
    ids = [e["messageId"] for e in api.events()]
    assert len(ids) == 2
    assert ids[0] != ids[1]
    assert all(len(i) == 36 for i in ids)


# --- time ----------------------------------------------------------------------------


async def test_received_at_is_the_servers_and_timestamp_is_corrected_for_clock_skew(
    api: IngestionApi,
) -> None:
    """A device whose clock is an hour slow sends both times an hour in the past: the
    event happened five seconds before the request, by the server's clock."""
    device_now = datetime.now(UTC) - timedelta(hours=1)
    happened = device_now - timedelta(seconds=5)
    before = datetime.now(UTC).replace(microsecond=0)
    answer = await api.send(
        "/v1/track",
        track(timestamp=happened.isoformat(), sentAt=device_now.isoformat()),
    )
    after = datetime.now(UTC)
    assert answer.status == 200
    [event] = api.events()
    received = datetime.fromisoformat(event["receivedAt"])
    assert before <= received <= after
    assert datetime.fromisoformat(event["timestamp"]) == received - timedelta(seconds=5)
    assert datetime.fromisoformat(event["originalTimestamp"]) == happened.replace(
        microsecond=happened.microsecond // 1000 * 1000
    )


# --- browsers and strays -------------------------------------------------------------


async def test_cors_preflight_and_answers_carry_the_cors_headers(api: IngestionApi) -> None:
    preflight = await api.call(
        "/v1/batch",
        key=None,
        method="OPTIONS",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"Authorization", "Content-Type", "Content-Encoding"} <= allowed
    # A browser can read the answers too, refusals included.
    for answer in (await api.send("/v1/track", track()), await api.send("/v1/track", {})):
        assert answer.headers["access-control-allow-origin"] == "*"


async def test_unknown_paths_are_a_404(api: IngestionApi) -> None:
    refused(await api.send("/v1/purchase", track()), 404, "unknown endpoint /v1/purchase")
    assert (await api.send("/v1/purchase", track())).body["code"] == "not_found"
    # aiohttp's own refusals come in the same JSON shape clients parse.
    refused(await api.send("/track", track()), 404, "POST /track: Not Found")
    refused(
        await api.send("/v1/track", track(), method="GET"), 405, "GET /v1/track: Method Not Allowed"
    )
    assert api.events() == []


# --- what the operator sees ----------------------------------------------------------


def test_metrics_move_with_the_traffic(daemon: DaemonProcess) -> None:
    at_rest = metrics(daemon)
    assert sample(at_rest, "leadsync_events_ingested_total", source="web", type="track") == 0
    assert sample(at_rest, "leadsync_log_head_sequence") == 0

    send(daemon, "/v1/batch", {"batch": [track(), track(), {"type": "identify", "userId": "u"}]})
    send(daemon, "/v1/batch", {"batch": [track(), {"type": "track", "userId": "u"}]})
    send(daemon, "/v1/page", {"userId": "u", "name": "Home"}, key=WRITE_KEYS["backend"])
    send(daemon, "/v1/track", {"userId": "u"})
    send(daemon, "/v1/batch", {"batch": [track(), {"userId": "no type"}]})

    now = metrics(daemon)
    ingested = "leadsync_events_ingested_total"
    assert sample(now, ingested, source="web", type="track") == 4
    assert sample(now, ingested, source="web", type="identify") == 1
    assert sample(now, ingested, source="backend", type="page") == 1
    rejected = "leadsync_events_rejected_total"
    assert sample(now, rejected, source="web", type="track") == 2
    assert sample(now, rejected, source="web", type="unknown") == 1
    assert sample(now, "leadsync_http_requests_total", endpoint="batch", code="200") == 3
    assert sample(now, "leadsync_http_requests_total", endpoint="track", code="400") == 1
    latency = "leadsync_http_request_duration_seconds"
    assert sample(now, f"{latency}_count", endpoint="batch") == 3
    assert sample(now, f"{latency}_bucket", endpoint="batch", le="+Inf") == 3
    assert sample(now, f"{latency}_sum", endpoint="batch") > 0
    assert sample(now, "leadsync_log_head_sequence") == 6
    assert sample(now, "leadsync_log_commit_duration_seconds_count") >= 1
    for actor in ("admin", "log_writer", "http"):
        assert sample(now, "leadsync_actor_up", actor=actor) == 1
    assert ("leadsync_actor_queue_depth", frozenset({("actor", "log_writer")})) in now
    assert sample(now, "leadsync_actor_queue_capacity", actor="log_writer") > 0
    assert ("leadsync_log_backlog_events", frozenset()) in now
    assert ("leadsync_log_pending_events", frozenset()) in now
    # Restarts are a labelled counter: declared from the start, a series per crashed actor.
    _, text = daemon.admin("/metrics")
    assert "# TYPE leadsync_actor_restarts_total counter" in text


def test_status_reports_version_uptime_counts_and_actors(daemon: DaemonProcess) -> None:
    send(daemon, "/v1/batch", {"batch": [track(), track(), {"type": "track", "userId": "u"}]})
    status, body = daemon.admin("/status")
    assert status == 200
    assert body["version"] == __version__
    assert body["uptime_seconds"] > 0
    assert body["events_stored"] == 2
    assert body["quarantined"] == 1
    actors = {a["name"]: a for a in body["actors"]}
    assert {"admin", "log_writer", "http"} <= set(actors)
    for actor in actors.values():
        assert actor["state"] == "running"
        assert actor["restarts"] == 0
    assert actors["log_writer"]["queue_depth"] == 0
    assert actors["log_writer"]["queue_capacity"] > 0


async def test_a_non_ascii_authorization_header_is_a_401(api: IngestionApi) -> None:
    answer = await api.call("/v1/track", b"{}", key=None, headers={"Authorization": "Basic é"})
    refused(answer, 401, "Authorization header is not valid Basic auth")


async def test_a_body_that_trickles_in_is_cut_off(
    api: IngestionApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise one slow client holds a request, and at shutdown the drain, for ever.
    The bound is cut from 10 s to a fraction so the test does not wait it out."""
    monkeypatch.setattr(http_source, "BODY_READ_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {basic_auth(WEB_KEY)}\r\nContent-Length: 50\r\n\r\n{{".encode()
        )
        await writer.drain()
        with anyio.fail_after(30):  # far beyond the bound: a hang, not a slow machine
            answer = (await reader.read(4096)).decode()
    finally:
        writer.close()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"code":"request_timeout"' in answer
    assert '"message":"body not received within 0.5s"' in answer
