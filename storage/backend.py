"""The storage interface every backend implements: the daemon's one handle on storage.

It is deliberately narrow — append to the log, read it back, checkpoints, quarantine,
health, profile lookup — so that a PostgreSQL backend is one new module (SQLite's is
storage/sqlite.py). Each method that writes is one transaction: callers never hold a
transaction open across an await of their own. The synchronous stores that consumers
work through have interfaces of their own (storage/graph.py, scores.py, outbox.py,
held.py, lifecycle.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import msgspec

from storage.held import Held
from storage.log import AppendRequest, AppendResult, QuarantinedMessage, StoredEvent


class IdentityView(msgspec.Struct):
    kind: str
    value: str
    first_seen: str


class ScoreView(msgspec.Struct):
    traits: dict[str, Any]
    fit_model: str | None
    fit_at: str | None
    likelihood_model: str | None
    likelihood_at: str | None


class AccountView(msgspec.Struct):
    group_id: str
    first_seen: str
    last_seen: str
    traits: dict[str, Any]
    scores: ScoreView | None = None


class ProfileView(msgspec.Struct):
    """A profile as `leadsync profile` and GET /v1/profiles show it."""

    profile_id: str
    user_id: str | None
    first_seen: str
    last_seen: str
    events: int
    sources: dict[str, int]
    identities: list[IdentityView]
    traits: dict[str, Any]
    account: AccountView | None
    merged_ids: list[str]
    """Earlier profile ids that now mean this profile (merged or renamed)."""
    last_events: list[msgspec.Raw]
    scores: ScoreView | None = None


class Storage(Protocol):
    write_gate: anyio.Semaphore
    """Held by whoever writes the main file (the scorer, deploys, destinations, the
    rebuild's swap), so in-process writers queue on it in order rather than in
    SQLite's busy handler, which sleeps in steps of up to 100 ms. The event log has a
    file and a gate of its own (storage/sqlite_log.py)."""

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

    async def held(self, limit: int) -> tuple[dict[str, int], list[Held]]:
        """Held items per component (storage/held.py), and the newest `limit` of them."""
        ...

    async def profile(self, kind: str, value: str, last_events: int) -> ProfileView | None:
        """The profile an identifier (or a current or retired profile id, kind
        "profile") belongs to, with its newest `last_events` events."""
        ...

    async def probe_writable(self) -> None:
        """Raise unless a write can be committed right now (for /readyz)."""
        ...

    async def cursor(self, source: str) -> str | None:
        """The position `source` committed last with its events (AppendRequest.cursor)."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """Small durable facts the daemon keeps about itself (a generated write key)."""
        ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def maintain(self) -> None:
        """Periodic upkeep: checkpoint the WAL, trim the quarantine."""
        ...

    async def close(self) -> None: ...
