"""The storage interface every backend implements, and the rows that cross it.

It is deliberately narrow — append to the log, read it back, checkpoints, quarantine,
health — so that a PostgreSQL backend is one new module. Each method that writes is
one transaction: callers never hold a transaction open across an await of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class EventRecord(msgspec.Struct, frozen=True):
    """One validated message ready for the log; `body` is the normalized event as JSON."""

    message_id: str
    type: str
    received_at: str
    body: bytes


class Rejected(msgspec.Struct, frozen=True):
    """A message refused at the door, kept so the operator can see what the client sent."""

    batch_index: int | None
    reason: str
    body: bytes


class AppendRequest(msgspec.Struct, frozen=True):
    """What one HTTP request (or one file chunk) adds: its events and its rejects."""

    source: str
    received_at: str
    events: Sequence[EventRecord]
    rejected: Sequence[Rejected] = ()


class AppendResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int


class StoredEvent(msgspec.Struct, frozen=True):
    seq: int
    source: str
    body: bytes


class QuarantinedMessage(msgspec.Struct, frozen=True):
    id: int
    source: str
    received_at: str
    batch_index: int | None
    reason: str
    body: str


class Storage(Protocol):
    async def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        """Commit every request in one transaction (group commit).

        Returns one result per request and the log head after the commit. A message
        whose (source, message_id) is already in the log is counted as a duplicate and
        not stored again. Raises on failure, in which case nothing was stored.
        """
        ...

    async def log_head(self) -> int: ...

    async def read_events(self, after: int, limit: int) -> list[StoredEvent]: ...

    async def checkpoints(self) -> dict[str, int]: ...

    async def quarantined(self, limit: int) -> tuple[int, list[QuarantinedMessage]]:
        """How many messages are in quarantine, and the newest `limit` of them."""
        ...

    async def probe_writable(self) -> None:
        """Raise unless a write can be committed right now (for /readyz)."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """Small durable facts the daemon keeps about itself (a generated write key)."""
        ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def maintain(self) -> None:
        """Periodic upkeep: checkpoint the WAL, trim the quarantine."""
        ...

    async def close(self) -> None: ...
