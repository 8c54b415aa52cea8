"""Messages that travel between actors and into the event log. All msgspec Structs."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import msgspec

from actors.delivery.kinds import DestinationSettings

EventType = Literal["identify", "track", "page", "screen", "group", "alias"]
EVENT_TYPES: tuple[str, ...] = ("identify", "track", "page", "screen", "group", "alias")


class Event(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    """A Segment-spec message as the log stores it: validated and normalized.

    `timestamp` is corrected for client clock skew; the client's own value is kept in
    `original_timestamp`. Times are ISO 8601 strings in UTC, as Segment sends them on.
    """

    type: EventType
    message_id: str
    source: str
    received_at: str
    timestamp: str
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    traits: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    original_timestamp: str | None = None
    sent_at: str | None = None


class ProfileChanged(msgspec.Struct, frozen=True):
    """A hint to the scorer that a profile needs scoring again.

    The durable record is the `profile_changes` table, written in the identity
    actor's transaction; this message only saves the scorer a poll, so it may be
    dropped when the scorer's inbox is full.
    """

    profile_id: str
    reasons: list[str]
    seq: int


class RunBatch(msgspec.Struct):
    """Ask the scorer for a batch run now (`leadsync scoring run`); `done` is set
    when it has finished, with its figures in `result`."""

    done: anyio.Event = msgspec.field(default_factory=anyio.Event)
    result: dict[str, float] = {}


class SyncDestination(msgspec.Struct):
    """Ask the scorer to stage every profile's payload for one destination
    (`leadsync sync NAME [--full]`); `done` is set when staged, with counts in `result`."""

    destination: str
    full: bool
    """Resend even what the destination already acknowledged."""
    done: anyio.Event = msgspec.field(default_factory=anyio.Event)
    result: dict[str, float] = {}
    fingerprint: str | None = None
    """Kept once the sync is complete, for a sync the scorer started itself because a
    destination is new or changed (see actors/delivery/staging.py: fingerprint)."""


class UseDestinations(msgspec.Struct, frozen=True):
    """The destinations after a reload (SIGHUP): the scorer stages for these from now on."""

    destinations: dict[str, DestinationSettings]


ScorerMessage = ProfileChanged | RunBatch | SyncDestination | UseDestinations
