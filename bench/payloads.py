"""Batch bodies for the HTTP benches, made before the clock starts.

A client shares two cores with the daemon it measures: encoding 100 messages for each
request would take CPU from the server. So bodies are encoded once, as templates, and
each send only stamps a fresh number into one (`Payloads.take`): messageIds unique for
free, and in no order, as the UUIDs real clients send are (ordered ids flatter
storage: an index on them is appended to, not written all over). bench/ingest.py
uses `ingest_templates` (a new anonymous id on every message); bench/sustained.py
its own mix over a population of people (bench/steady/traffic.py).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec

TEMPLATES = 64
"""Distinct batch bodies bench/ingest.py cycles through."""
PLACEHOLDER = "@" * 20
"""Twenty characters in every messageId (and in any id that must be new on every
send), replaced by a random prefix and the send's number."""
_PLACEHOLDER = PLACEHOLDER.encode()
LIBRARY = {"name": "analytics-python", "version": "2.3.2"}

_PLANS = ("free", "starter", "pro", "enterprise")
_EVENTS = (
    "Signed Up",
    "Product Viewed",
    "Order Completed",
    "Trial Started",
    "Invite Sent",
    "Report Exported",
)
PAGES = ("Pricing", "Docs", "Home", "Blog", "Integrations", "Careers")
AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
)


def message(rng: random.Random, index: int, now: datetime) -> dict[str, object]:
    """One Segment message as real clients send it: ids, context, a few fields, 300-600 B;
    a new anonymous id every time."""
    user = f"user-{rng.randrange(1_000_000):06d}"
    message: dict[str, object] = {
        "messageId": f"{PLACEHOLDER}-{index:03d}-{rng.getrandbits(48):012x}",
        "userId": user,
        "anonymousId": f"{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}",
        "timestamp": (now - timedelta(seconds=rng.randrange(60))).isoformat(),
        "context": {"library": LIBRARY, "ip": f"203.0.113.{rng.randrange(1, 255)}"},
    }
    roll = rng.random()
    if roll < 0.6:
        message["type"] = "track"
        message["event"] = rng.choice(_EVENTS)
        message["properties"] = {
            "plan": rng.choice(_PLANS),
            "revenue": round(rng.uniform(5, 500), 2),
            "currency": "EUR",
            "sku": f"SKU-{rng.randrange(10_000):05d}",
        }
    elif roll < 0.8:
        message["type"] = "identify"
        message["traits"] = {
            "email": f"{user}@example.com",
            "name": f"Person {rng.randrange(10_000)}",
            "plan": rng.choice(_PLANS),
            "company": {
                "name": f"Company {rng.randrange(5_000)}",
                "employees": rng.randrange(5000),
            },
            "title": rng.choice(("CTO", "Engineer", "Head of Growth", "Founder")),
        }
    else:
        page = rng.choice(PAGES)
        message["type"] = "page"
        message["name"] = page
        message["properties"] = page_properties(page)
        context = message["context"]
        assert isinstance(context, dict)
        context["userAgent"] = rng.choice(AGENTS)
    return message


def page_properties(page: str) -> dict[str, str]:
    return {
        "path": f"/{page.lower()}",
        "url": f"https://example.com/{page.lower()}",
        "referrer": "https://www.google.com/",
        "title": f"{page} - Example",
    }


def batch_body(messages: list[dict[str, object]], now: datetime) -> bytes:
    """A /v1/batch body as analytics-python sends it."""
    return msgspec.json.encode(
        {"batch": messages, "sentAt": now.isoformat(), "context": {"library": LIBRARY}}
    )


def ingest_templates(batch_size: int, seed: int = 1) -> list[bytes]:
    """bench/ingest.py's bodies: TEMPLATES batches of `message`s."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [
        batch_body([message(rng, i, now) for i in range(batch_size)], now) for _ in range(TEMPLATES)
    ]


class Payloads:
    """Batch bodies with unique messageIds, made without per-send JSON encoding."""

    def __init__(
        self, batch_size: int, seed: int = 1, templates: list[bytes] | None = None
    ) -> None:
        self._rng = random.Random(seed + 1)
        self.templates = templates if templates is not None else ingest_templates(batch_size, seed)
        self.batch_size = batch_size
        self.mean_event_bytes = sum(map(len, self.templates)) / len(self.templates) / batch_size
        self._next = 0

    def take(self) -> bytes:
        number = self._next
        self._next += 1
        template = self.templates[number % len(self.templates)]
        return template.replace(_PLACEHOLDER, b"%08x%012d" % (self._rng.getrandbits(32), number))
