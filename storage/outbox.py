"""Delivery's interface and its rows: the outbox, settlements, dead letters.

Staging (run by the scorer) and each destination actor work through it,
synchronously, each on a connection of its own. SQLite's is storage/sqlite_outbox.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec


class OutboxRow(msgspec.Struct, frozen=True):
    """One profile's newest payload for one destination, not yet acknowledged."""

    id: int
    uid: str
    payload: bytes
    hash: int
    staged_at: float
    attempts: int


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    destination: str
    uid: str
    payload: bytes
    staged_at: float
    attempts: int
    error: str
    dead_at: float


class Settlement(msgspec.Struct):
    """What became of one round of sends: written in one transaction. Each row is
    named by (outbox id, hash): if the profile's payload changed while it was in
    flight, the row holds the newer one and is left for its own send."""

    delivered: list[tuple[int, str, int]] = []
    """(id, uid, hash)"""
    retry: list[tuple[int, int, float, str, bool]] = []
    """(id, hash, due_at, error, counts as an attempt)"""
    dead: list[tuple[int, int, str]] = []
    """(id, hash, error)"""
    requests: int = 0
    """Calls made, for the daily cap."""
    sender_state: str | None = None
    """What the sender must find again after a crash (Sender.state), if anything."""


class StagingDecision(msgspec.Struct):
    """What staging decided for one destination's profiles, each named by its row,
    written in one go (OutboxStore.apply_staging). Only-on-change decides it
    (actors/delivery/only_on_change.py); storage only writes it."""

    dropped: list[int] = []
    """Profiles whose queued row is deleted, unsent (one in flight still arrives)."""
    queued: list[tuple[int, str, bytes, int]] = []
    """(profile row, profile id, payload, hash): each replaces the profile's queued row,
    if any (same row, attempts and last error reset), or is queued anew."""
    staged: list[tuple[int, int]] = []
    """(profile row, hash): the staged hash recorded, for the next comparison."""


class DestinationCounts(msgspec.Struct, frozen=True):
    queued: int
    """Due now or waiting for a retry."""
    held: int
    """Waiting for the batch run to end."""
    dead: int


class OutboxStore(Protocol):
    """Synchronous, on the scorer's or a destination actor's own connection; the
    caller holds the transaction (see ScoreStore.begin)."""

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def subjects(
        self, rows: Sequence[int], with_traits: bool
    ) -> dict[int, tuple[str, dict[str, str], dict[str, Any]]]:
        """Per profile row: its id, its addresses (user_id, email, anonymous_id: the
        oldest of each) and, if asked, its traits."""
        ...

    def delivery_states(
        self, destination: str, profiles: Sequence[int]
    ) -> dict[int, tuple[int | None, int]]:
        """Per profile row of `profiles` the destination has a state for: (acked,
        staged), the hash it last acknowledged (None before the first) and the one
        staging recorded last (StagingDecision.staged)."""
        ...

    def queued(self, destination: str, profiles: Sequence[int]) -> set[int]:
        """Those of `profiles` with a row in the destination's outbox: due, held, being
        retried or in flight."""
        ...

    def apply_staging(
        self,
        destination: str,
        decision: StagingDecision,
        staged_at: float,
        due_at: float | None,
    ) -> None:
        """Writes what staging decided: the dropped rows deleted, the queued ones
        upserted, due at `due_at` (None: held until the batch run under way ends, or
        the next if none is), the staged hashes recorded."""
        ...

    def end_run(self, destinations: Sequence[str], now: float) -> int:
        """Everything held for the end of the batch run becomes due; returns how many
        rows of `destinations` that was."""
        ...

    def release(self, destinations: Sequence[str], due_at: float, limit: int) -> int:
        """Up to `limit` held rows per destination become due at `due_at` (for a
        destination made realtime); returns how many."""
        ...

    def due(self, destination: str, now: float, limit: int) -> list[OutboxRow]: ...

    def next_due(self, destination: str) -> float | None: ...

    def settle(self, destination: str, settlement: Settlement, now: float) -> None: ...

    def usage(self, destination: str, now: float) -> int:
        """Requests made in the UTC day of `now`."""
        ...

    def sender_state(self, destination: str) -> str | None:
        """The sender state saved by the last settlement that had one."""
        ...

    def counts(self, destination: str) -> DestinationCounts: ...

    def dead_letters(self, destination: str | None, limit: int) -> list[DeadLetter]: ...

    def replay(
        self, destination: str | None, ids: Sequence[int] | None, now: float
    ) -> tuple[int, int]:
        """Dead letters back into the outbox; returns (replayed, superseded): a dead
        letter whose profile has a newer payload since is dropped, not sent."""
        ...

    def gone(self) -> list[tuple[str, int]]:
        """(destination, profile row) of delivery states whose profile no longer exists
        (merged away): read outside any write transaction, it is a scan."""
        ...

    def forget(self, states: Sequence[tuple[str, int]]) -> None: ...

    def destinations(self) -> set[str]:
        """Every destination the database holds a queue, state or fingerprint for."""
        ...

    def fingerprints(self) -> dict[str, str]:
        """Per destination, the fingerprint of the config last synced for."""
        ...

    def set_fingerprint(self, destination: str, fingerprint: str | None) -> None: ...

    def drop_some(self, destination: str, limit: int) -> int:
        """Up to `limit` outbox rows and delivery states of a destination no longer
        configured; returns how many went. When none are left, the rest of what is
        kept for it goes too, but its dead letters."""
        ...
