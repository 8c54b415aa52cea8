"""The segment sender against a receiver on loopback: what it sends to /v1/batch, and
what each of Segment's (and leadsync's own) answers means for each record.
tests/test_destinations_daemon.py has it end to end between two real daemons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.delivery.payload import Payload, encode
from actors.delivery.sender import RecordError, Refused, Unavailable
from actors.destinations.segment import SegmentDestination
from actors.destinations.segment.sender import SegmentSender
from storage.outbox import OutboxRow
from tests.support.fake_receiver import (
    FakeReceiver,
    Rejection,
    leadsync_invalid,
    leadsync_partial,
    refuse,
    throttle,
)

STAGED = 1_700_000_000.0


def row(n: int, **ids: Any) -> OutboxRow:
    payload, digest = encode(Payload(f"prf_{n}", {"mk_lead_grade": "A", "n": n}, **ids))
    return OutboxRow(n, f"prf_{n}", payload, digest, STAGED + n, 0)


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as running:
        yield running


@pytest.fixture
async def sender(receiver: FakeReceiver) -> AsyncIterator[SegmentSender]:
    config = SegmentDestination(write_key="wk-1", host=receiver.url + "/")
    segment = SegmentSender(config, clock=lambda: STAGED + 60)
    await segment.open(None)
    yield segment
    await segment.close()


async def test_identifies_carry_the_traits_ids_and_a_stable_message_id(
    receiver: FakeReceiver, sender: SegmentSender
) -> None:
    rows = [row(1, user_id="ann", anonymous_id="aaa"), row(2, anonymous_id="bbb")]
    assert await sender.send(rows) == [None, None]
    (request,) = receiver.requests
    assert request.path == "/v1/batch"
    assert request.basic_auth is not None
    assert request.basic_auth[0] == "wk-1"
    assert request.json["sentAt"] == "2023-11-14T22:14:20.000Z"
    first, second = request.records
    assert first["type"] == "identify"
    assert (first["userId"], first["anonymousId"]) == ("ann", "aaa")
    assert first["traits"] == {"mk_lead_grade": "A", "n": 1}
    assert first["timestamp"] == "2023-11-14T22:13:21.000Z"
    assert "userId" not in second
    assert second["anonymousId"] == "bbb"
    # The same payload sent again has the same messageId, so the receiver drops it.
    await sender.send(rows[:1])
    assert receiver.requests[1].records[0]["messageId"] == first["messageId"]


async def test_a_profile_with_nothing_to_identify_it_by_fails_alone(
    receiver: FakeReceiver, sender: SegmentSender
) -> None:
    outcome = await sender.send([row(1, email="only@mail.io"), row(2, user_id="bob")])
    assert isinstance(outcome[0], RecordError)
    assert not outcome[0].retryable
    assert outcome[1] is None
    assert [r["userId"] for r in receiver.records()] == ["bob"]


async def test_a_message_over_32_kb_fails_alone(sender: SegmentSender) -> None:
    payload, digest = encode(Payload("prf_9", {"mk_notes": "x" * 40_000}, user_id="u"))
    huge = OutboxRow(9, "prf_9", payload, digest, STAGED, 0)
    outcome = await sender.send([huge, row(1, user_id="ann")])
    assert isinstance(outcome[0], RecordError)
    assert "32 KB" in outcome[0].reason
    assert outcome[1] is None


async def test_leadsyncs_answers_name_the_refused_messages(
    receiver: FakeReceiver, sender: SegmentSender
) -> None:
    rows = [row(n, user_id=f"u{n}") for n in range(3)]
    receiver.script(
        leadsync_partial(Rejection(1, "traits must be an object")),
        leadsync_invalid(Rejection(0, "bad"), Rejection(1, "bad"), Rejection(2, "bad")),
    )
    partial = await sender.send(rows)
    assert partial[0] is None
    assert partial[2] is None
    assert partial[1] == RecordError("refused: traits must be an object", retryable=False)
    every = await sender.send(rows)
    assert all(isinstance(outcome, RecordError) for outcome in every)


async def test_a_400_naming_no_message_refuses_the_call_and_429_throttles(
    receiver: FakeReceiver, sender: SegmentSender
) -> None:
    receiver.script(refuse("Bad Request"), throttle(7))
    with pytest.raises(Refused):
        await sender.send([row(1, user_id="ann")])
    with pytest.raises(Unavailable) as caught:
        await sender.send([row(1, user_id="ann")])
    assert caught.value.throttled
    assert caught.value.retry_after == 7
