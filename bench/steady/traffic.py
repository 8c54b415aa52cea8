"""What a busy site sends, as /v1/batch bodies made before the clock starts.

A population of returning people, each with one to three devices (anonymous ids); a
share of them known (a user id, an email and the traits the example model reads:
title, company size, industry, country). Their events: page views and track calls
(among them the ones the example model weighs: Pricing, Signed Up, Demo Requested,
email opens and clicks), logged in or not, and now and then an identify. Beside them,
first-time visitors whose ids are new on every send (the send's number is stamped into
them, as into the messageIds): a few anonymous page views, and for half of them a
sign-up, an identify that joins the device to a new user id and email. So the merger
creates and merges profiles all the time, the scorer folds weighted events and rescores
fits, and the realtime destination has new fits to send, as in production, while the
client only copies bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.leads import COUNTRIES, INDUSTRIES, PERSONAL_DOMAINS, TITLES, weighted
from bench.payloads import AGENTS, PAGES, PLACEHOLDER, batch_body, page_properties

JOURNEY_EVENTS = 4
"""Events of a first-time visitor's journey on average: three page views, and for half
of them a sign-up (an identify and a "Signed Up" track)."""
_TRACKS = (
    ("Product Viewed", 30),
    ("Report Exported", 15),
    ("Invite Sent", 8),
    ("Email Opened", 25),
    ("Email Clicked", 10),
    ("Trial Started", 4),
    ("Demo Requested", 2),
    ("Order Completed", 6),
)
_PAGE_WEIGHTS = (30, 25, 20, 15, 6, 4)
"""Of PAGES, in order: Pricing is the one the example model weighs most."""


@dataclass(frozen=True)
class Person:
    devices: tuple[str, ...]
    """Anonymous ids, one a device."""
    user_id: str | None
    traits: dict[str, object] | None


@dataclass(frozen=True)
class Mix:
    """What the templates hold, for the report."""

    events: int
    by_type: dict[str, int]
    new_people: int
    """First-time visitors a batch brings, on average."""


def population(count: int, known_share: float, rng: random.Random) -> list[Person]:
    """`count` returning people; `known_share` of them identified (user id and traits)."""
    titles, industries, countries = weighted(TITLES), weighted(INDUSTRIES), weighted(COUNTRIES)
    people = []
    for n in range(count):
        devices = tuple(f"anon-{n}-{d}-{rng.getrandbits(32):08x}" for d in range(rng.randint(1, 3)))
        if rng.random() < known_share:
            people.append(
                Person(devices, f"user-{n}", _traits(rng, n, titles, industries, countries))
            )
        else:
            people.append(Person(devices, None, None))
    return people


def _traits(
    rng: random.Random,
    n: int | str,
    titles: tuple[list[str], list[int]],
    industries: tuple[list[str], list[int]],
    countries: tuple[list[str], list[int]],
) -> dict[str, object]:
    personal = rng.random() < 0.35
    domain = rng.choice(PERSONAL_DOMAINS) if personal else f"firm{rng.randrange(20_000)}.com"
    return {
        "email": f"person{n}@{domain}",
        "name": f"Person {n}",
        "title": rng.choices(*titles)[0],
        "company_size": int(rng.lognormvariate(4.5, 1.6)) + 1,
        "industry": rng.choices(*industries)[0],
        "country": rng.choices(*countries)[0],
    }


class Traffic:
    """Batch templates over one population (`templates`), and what they hold (`mix`)."""

    def __init__(
        self,
        batch_size: int,
        templates: int,
        people: int,
        new_share: float,
        known_share: float = 0.5,
        seed: int = 7,
    ) -> None:
        rng = random.Random(seed)
        self._rng = rng
        self._people = population(people, known_share, rng)
        self._now = datetime.now(UTC)
        self._tables = weighted(TITLES), weighted(INDUSTRIES), weighted(COUNTRIES)
        self._tracks = weighted(_TRACKS)
        self._journeys = batch_size * new_share / JOURNEY_EVENTS
        by_type: dict[str, int] = {}
        new_people = 0
        self.templates: list[bytes] = []
        for _ in range(templates):
            messages, journeys = self._batch(batch_size)
            new_people += journeys
            for m in messages:
                by_type[str(m["type"])] = by_type.get(str(m["type"]), 0) + 1
            self.templates.append(batch_body(messages, self._now))
        self.mix = Mix(batch_size * templates, by_type, round(new_people / max(templates, 1)))

    def warmup(self, size: int) -> list[bytes]:
        """Batches that introduce every returning person once a device: an identify
        (user id, device, traits) for the known, a page view for the others. A daemon
        that has taken them knows the population, as a site's daemon does after its
        first days; the runs then see only what a day brings."""
        messages = []
        for person in self._people:
            for device in person.devices:
                if person.traits is not None:
                    message = self._base("identify", device, person.user_id)
                    message["traits"] = person.traits
                else:
                    message = self._page(device, None)
                messages.append(message)
        bodies = []
        for start in range(0, len(messages), size):
            batch = messages[start : start + size]
            for index, message in enumerate(batch):
                message["messageId"] = f"{PLACEHOLDER}-{index:03d}-warm"
            bodies.append(batch_body(batch, self._now))
        return bodies

    def _batch(self, size: int) -> tuple[list[dict[str, object]], int]:
        rng = self._rng
        journeys = int(self._journeys) + (rng.random() < self._journeys % 1)
        messages: list[dict[str, object]] = []
        for j in range(journeys):
            messages += self._journey(j)
        while len(messages) < size:
            messages.append(self._returning(rng.choice(self._people)))
        messages = messages[:size]
        rng.shuffle(messages)
        for index, message in enumerate(messages):
            message["messageId"] = f"{PLACEHOLDER}-{index:03d}-{rng.getrandbits(32):08x}"
        return messages, journeys

    def _base(self, kind: str, anonymous_id: str, user_id: str | None) -> dict[str, object]:
        rng = self._rng
        message: dict[str, object] = {
            "type": kind,
            "anonymousId": anonymous_id,
            "timestamp": (self._now - timedelta(seconds=rng.randrange(60))).isoformat(),
            "context": {
                "ip": f"203.0.113.{rng.randrange(1, 255)}",
                "userAgent": rng.choice(AGENTS),
            },
        }
        if user_id is not None:
            message["userId"] = user_id
        return message

    def _page(self, anonymous_id: str, user_id: str | None) -> dict[str, object]:
        page = self._rng.choices(PAGES, _PAGE_WEIGHTS)[0]
        message = self._base("page", anonymous_id, user_id)
        message["name"] = page
        message["properties"] = page_properties(page)
        return message

    def _track(self, anonymous_id: str, user_id: str | None, event: str) -> dict[str, object]:
        rng = self._rng
        message = self._base("track", anonymous_id, user_id)
        message["event"] = event
        message["properties"] = {"plan": rng.choice(("free", "pro")), "value": rng.randrange(100)}
        return message

    def _returning(self, person: Person) -> dict[str, object]:
        rng = self._rng
        device = rng.choice(person.devices)
        roll = rng.random()
        if person.traits is not None and roll < 0.08:
            message = self._base("identify", device, person.user_id)
            message["traits"] = person.traits
            return message
        if roll < 0.5:
            return self._track(device, person.user_id, rng.choices(*self._tracks)[0])
        return self._page(device, person.user_id)

    def _journey(self, j: int) -> list[dict[str, object]]:
        """A first-time visitor: ids new on every send (the placeholder)."""
        device = f"new-{PLACEHOLDER}-{j}"
        steps = [self._page(device, None) for _ in range(JOURNEY_EVENTS - 1)]
        if self._rng.random() < 0.5:
            user = f"new-{PLACEHOLDER}-{j}"
            identify = self._base("identify", device, user)
            identify["traits"] = _traits(self._rng, f"{PLACEHOLDER}{j}", *self._tables)
            steps += [identify, self._track(device, user, "Signed Up")]
        return steps
