"""The webhook sender against a real HTTP server on loopback (tests/fake_receiver.py):
what a receiver gets and how it checks the signature, and what each kind of answer
means for the records (delivered, one record refused, the call retried or refused).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from actors.delivery.payload import Payload, encode
from actors.delivery.sender import RecordError, Refused, Unavailable, delivery_id
from actors.destinations.webhook import WebhookDestination
from actors.destinations.webhook.sender import WebhookSender, verify
from actors.settings import Duration
from daemon import __version__
from storage.outbox import OutboxRow
from tests.support.fake_receiver import (
    FakeReceiver,
    Received,
    Rejection,
    drop,
    hang,
    refuse,
    respond,
    server_error,
    throttle,
    webhook_rejected,
)

SECRET = "s3cr3t"
NOW = 1_700_000_000.5
"""The sender's clock: 2023-11-14T22:13:20.500Z."""

MakeSender = Callable[..., Awaitable[WebhookSender]]


def row(
    uid: str, email: str | None = None, score: int = 50, staged_at: float = NOW - 60
) -> OutboxRow:
    payload, digest = encode(
        Payload(profile=uid, traits={"mk_customer_fit_score": score}, email=email)
    )
    return OutboxRow(id=1, uid=uid, payload=payload, hash=digest, staged_at=staged_at, attempts=0)


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as receiver:
        yield receiver


@pytest.fixture
async def make_sender(receiver: FakeReceiver) -> AsyncIterator[MakeSender]:
    opened: list[WebhookSender] = []

    async def make(url: str | None = None, request_timeout: float = 5.0) -> WebhookSender:
        config = WebhookDestination(
            url=url or receiver.url + "/hook", secret=SECRET, timeout=Duration(request_timeout)
        )
        sender = WebhookSender(config, clock=lambda: NOW)
        await sender.open(None)
        opened.append(sender)
        return sender

    yield make
    for sender in opened:
        await sender.close()


async def test_a_batch_arrives_signed_with_every_field(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    sender = await make_sender()
    rows = [row("p1", "ann@example.com", 80), row("p2", score=10, staged_at=1_600_000_000)]

    assert await sender.send(rows) == [None, None]

    [received] = receiver.requests
    assert (received.method, received.path) == ("POST", "/hook")
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["User-Agent"] == f"leadsync/{__version__}"
    assert received.headers["X-Leadsync-Timestamp"] == "1700000000"
    assert received.json == {
        "sent_at": "2023-11-14T22:13:20.500Z",
        "profiles": [
            {
                "id": delivery_id(rows[0]),
                "staged_at": "2023-11-14T22:12:20.500Z",
                "profile": "p1",
                "traits": {"mk_customer_fit_score": 80},
                "email": "ann@example.com",
            },
            {
                "id": delivery_id(rows[1]),
                "staged_at": "2020-09-13T12:26:40.000Z",
                "profile": "p2",
                "traits": {"mk_customer_fit_score": 10},
            },
        ],
    }
    assert receiver.records() == received.json["profiles"]


def _check(received: Received, body: bytes, now: float, secret: str = SECRET) -> bool:
    headers = received.headers
    return verify(
        secret, headers["X-Leadsync-Timestamp"], body, headers["X-Leadsync-Signature"], now
    )


async def test_only_the_signed_body_within_five_minutes_verifies(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    await (await make_sender()).send([row("p1", "ann@example.com")])
    [received] = receiver.requests
    body = received.body

    assert _check(received, body, NOW)
    assert _check(received, body, NOW + 299)
    assert _check(received, body, NOW - 299)
    # A replay later on, or a clock far off.
    assert not _check(received, body, NOW + 301)
    assert not _check(received, body, NOW - 301)
    # A changed body, another key, or the same signature with a fresh timestamp.
    tampered = json.loads(body)
    tampered["profiles"][0]["email"] = "eve@example.com"
    assert not _check(received, json.dumps(tampered).encode(), NOW)
    assert not _check(received, body + b" ", NOW)
    assert not _check(received, body, NOW, secret="guess")
    signature = received.headers["X-Leadsync-Signature"]
    assert not verify(SECRET, "1700000100", body, signature, NOW + 100)
    # Garbage in the headers is a refusal, not an exception.
    assert not verify(SECRET, "soon", body, signature, NOW)
    assert not verify(SECRET, "1700000000", body, "v1=é", NOW)


async def test_a_payload_keeps_its_delivery_id_and_a_new_one_gets_another(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    sender = await make_sender()
    await sender.send([row("p1", score=50)])
    await sender.send([row("p1", score=50)])
    await sender.send([row("p1", score=51)])

    ids = [r.json["profiles"][0]["id"] for r in receiver.requests]
    assert ids[0] == ids[1] != ids[2]
    assert all(i.startswith("p1:") for i in ids)


@pytest.mark.parametrize(
    ("header", "wait"),
    [(7, 7.0), (formatdate(NOW + 30, usegmt=True), 29.5), (None, None)],
    ids=["seconds", "http-date", "absent"],
)
async def test_429_is_throttled_with_retry_after(
    receiver: FakeReceiver, make_sender: MakeSender, header: int | str | None, wait: float | None
) -> None:
    receiver.script(throttle(header))

    with pytest.raises(Unavailable) as caught:
        await (await make_sender()).send([row("p1")])

    assert caught.value.throttled
    assert caught.value.retry_after == wait
    assert "429" in caught.value.reason


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_server_errors_are_unavailable(
    receiver: FakeReceiver, make_sender: MakeSender, status: int
) -> None:
    receiver.script(server_error(status))

    with pytest.raises(Unavailable) as caught:
        await (await make_sender()).send([row("p1")])

    assert not caught.value.throttled
    assert caught.value.retry_after is None
    assert str(status) in caught.value.reason
    assert (
        "address and credentials" not in caught.value.reason
    )  # passing trouble, not misconfigured


async def test_503_retry_after_is_kept(receiver: FakeReceiver, make_sender: MakeSender) -> None:
    receiver.script(respond(503, "maintenance", {"Retry-After": "120"}))

    with pytest.raises(Unavailable) as caught:
        await (await make_sender()).send([row("p1")])

    assert caught.value.retry_after == 120
    assert not caught.value.throttled
    assert "maintenance" in caught.value.reason


async def test_no_answer_within_the_timeout_is_unavailable(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    receiver.script(hang())

    with pytest.raises(Unavailable) as caught:
        await (await make_sender(request_timeout=0.2)).send([row("p1")])

    assert "0.2" in caught.value.reason
    assert receiver.requests[0].answer == "hang"


async def test_a_dropped_connection_is_unavailable(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    receiver.script(drop())
    sender = await make_sender()

    with pytest.raises(Unavailable):
        await sender.send([row("p1")])

    assert receiver.requests[0].status is None
    assert receiver.records() == []
    # The session recovers: the next call gets a fresh connection.
    assert await sender.send([row("p1")]) == [None]


async def test_a_receiver_that_is_not_there_is_unavailable(make_sender: MakeSender) -> None:
    async with FakeReceiver() as gone:
        url = gone.url
    sender = await make_sender(url=url)

    with pytest.raises(Unavailable):
        await sender.send([row("p1")])


async def test_rejected_records_get_their_own_errors(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    receiver.script(
        webhook_rejected(Rejection(1, "no such list"), Rejection(3, "busy", retryable=True))
    )
    rows = [row(f"p{i}") for i in range(4)]

    outcome = await (await make_sender()).send(rows)

    assert outcome == [
        None,
        RecordError("no such list", retryable=False),
        None,
        RecordError("busy", retryable=True),
    ]
    assert [r["profile"] for r in receiver.records()] == ["p0", "p2"]


async def test_a_rule_on_the_records_rejects_the_matching_ones(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    receiver.fail_when(lambda record: record.get("email") == "bad@example.com", "bounced")
    rows = [row("p1", "ok@example.com"), row("p2", "bad@example.com"), row("p3")]

    outcome = await (await make_sender()).send(rows)

    assert outcome == [None, RecordError("bounced", retryable=False), None]


async def test_a_bare_rejection_is_final(receiver: FakeReceiver, make_sender: MakeSender) -> None:
    receiver.script(respond(202, {"rejected": [{"index": 0}]}))

    [error] = await (await make_sender()).send([row("p1")])

    assert error is not None
    assert not error.retryable
    assert error.reason


@pytest.mark.parametrize(
    "body",
    [{"rejected": [{"index": 5}]}, {"rejected": "everything"}, {"rejected": [{"index": "0"}]}],
    ids=["out-of-range", "not-a-list", "index-not-int"],
)
async def test_an_unreadable_rejection_list_is_retried_not_taken_as_delivered(
    receiver: FakeReceiver, make_sender: MakeSender, body: object
) -> None:
    receiver.script(respond(200, body))

    with pytest.raises(Unavailable, match="reject"):
        await (await make_sender()).send([row("p1"), row("p2")])


@pytest.mark.parametrize("text", ["OK", "", "[]", '{"received": 2}'])
async def test_a_2xx_without_rejections_delivers_everything(
    receiver: FakeReceiver, make_sender: MakeSender, text: str
) -> None:
    receiver.script(respond(200, text))

    assert await (await make_sender()).send([row("p1"), row("p2")]) == [None, None]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_an_invalid_request_is_refused_with_the_receivers_words(
    receiver: FakeReceiver, make_sender: MakeSender, status: int
) -> None:
    receiver.script(respond(status, "field traits.mk_x: unknown " + "x" * 1000))

    with pytest.raises(Refused) as caught:
        await (await make_sender()).send([row("p1"), row("p2")])

    assert str(status) in caught.value.reason
    assert "traits.mk_x: unknown" in caught.value.reason
    assert len(caught.value.reason) < 250


async def test_400_naming_no_record_is_refused(
    receiver: FakeReceiver, make_sender: MakeSender
) -> None:
    receiver.script(refuse("schema mismatch"))

    with pytest.raises(Refused, match="schema mismatch"):
        await (await make_sender()).send([row("p1")])


@pytest.mark.parametrize("status", [401, 403, 404, 405, 302])
async def test_a_configuration_problem_is_unavailable_and_says_so(
    receiver: FakeReceiver, make_sender: MakeSender, status: int
) -> None:
    receiver.script(respond(status, "nope", {"Location": receiver.url + "/elsewhere"}))

    with pytest.raises(Unavailable) as caught:
        await (await make_sender()).send([row("p1")])

    assert str(status) in caught.value.reason
    assert "address and credentials" in caught.value.reason
    assert not caught.value.throttled
    # A redirect is not followed: as a GET without the body, its 200 would be a lie.
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_the_fake_receiver_counts_requests_per_window(receiver: FakeReceiver) -> None:
    for at in [0.0, 0.5, 0.9, 1.0, 1.95, 2.5]:
        receiver.requests.append(Received(at, "POST", "/hook", CIMultiDict(), b"", None))

    assert receiver.max_in_window(1.0) == 3  # 0.0, 0.5, 0.9 (1.0 starts the next window)
    assert receiver.max_in_window(1.1) == 4
    assert receiver.max_in_window(0.05) == 1
    assert receiver.max_in_window(1.0, path="/other") == 0
