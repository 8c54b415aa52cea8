"""Segment's own Python client, pointed at leadsync, works unchanged.

The client is the real library over a real socket; the API it calls is served in
process (tests/support/ingestion.py), and the client, which blocks, runs in a thread."""

from __future__ import annotations

import anyio.to_thread
from segment.analytics.client import Client

from tests.support.daemon_process import WRITE_KEYS
from tests.support.ingestion import IngestionApi


async def test_every_call_type_from_segments_client_is_stored(api: IngestionApi) -> None:
    errors: list[Exception] = []
    client = Client(
        WRITE_KEYS["backend"],
        host=api.url,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )

    def calls() -> None:
        client.identify("97980cfea0067", {"email": "ada@example.com", "plan": "pro"})
        client.track("97980cfea0067", "Signed Up", {"source": "ads"})
        client.page("97980cfea0067", "Docs", "Quickstart", {"url": "https://example.com/docs"})
        client.screen("97980cfea0067", "App", "Home")
        client.group("97980cfea0067", "acme", {"name": "Acme", "employees": 200})
        client.alias("aaa-aaa-aaa", "97980cfea0067")
        client.track(anonymous_id="bbb-bbb-bbb", event="Viewed Pricing", properties={"n": 1})
        client.flush()

    await anyio.to_thread.run_sync(calls)

    assert errors == []
    events = api.events()
    assert [e["type"] for e in events] == [
        "identify",
        "track",
        "page",
        "screen",
        "group",
        "alias",
        "track",
    ]
    assert all(e["source"] == "backend" for e in events)
    identify, track, page, screen, group, alias, anonymous = events
    assert identify["userId"] == "97980cfea0067"
    assert identify["traits"] == {"email": "ada@example.com", "plan": "pro"}
    assert track["event"] == "Signed Up"
    assert track["properties"] == {"source": "ads"}
    assert page["name"] == "Quickstart"
    assert page["category"] == "Docs"
    assert screen["name"] == "Home"
    assert group["groupId"] == "acme"
    assert group["traits"]["employees"] == 200
    assert alias["previousId"] == "aaa-aaa-aaa"
    assert alias["userId"] == "97980cfea0067"
    assert anonymous["anonymousId"] == "bbb-bbb-bbb"
    assert "userId" not in anonymous
    assert identify["context"]["library"]["name"] == "analytics-python"
    # The client's messageIds are kept, so its retries are recognised as duplicates.
    assert len({e["messageId"] for e in events}) == 7


async def test_gzip_bodies_from_segments_client(api: IngestionApi) -> None:
    client = Client(WRITE_KEYS["web"], host=api.url, sync_mode=True, gzip=True)

    def calls() -> None:
        client.track("u-1", "Compressed", {"payload": "x" * 2000})
        client.flush()

    await anyio.to_thread.run_sync(calls)
    [event] = api.events()
    assert event["event"] == "Compressed"
    assert event["source"] == "web"
