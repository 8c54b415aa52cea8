"""Held items: what a consumer could not process, set aside so the rest goes on.

A consumer of the log that fails on one event (the merger, the scorer's fold) or on
one profile or account (the scorer's fit, a batch run, staging for a destination)
tries it a few times, then holds it here with the error, and carries on. Held items
are listed, retried after an upgrade, or dropped with `leadsync held`.

Kinds and what a retry does:
- `event` (key: the log sequence number): its component applies it again (the merger
  and the scorer look for such items every round), and releases it on success.
- `profile` (key: the profile id): it goes back on the scorer's to-do list.
- `account` (key: the group id): a member goes back on the scorer's to-do list, which
  rescores the account.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

HeldKind = Literal["event", "profile", "account"]


class Withdrawn(Exception):
    """A held item whose retry was being applied changed or went meanwhile (a rebuild
    swapped in, someone dropped it): the work is rolled back, nothing applied."""


class HeldItem(msgspec.Struct, frozen=True):
    """One item to set aside, as a consumer reports it."""

    component: str
    """Who failed on it: "identity", "scorer"."""
    kind: HeldKind
    key: str
    error: str
    attempts: int
    body: bytes | None = None
    """The event as logged, for events: shown by `held list`, applied again on retry."""


class Held(msgspec.Struct, frozen=True):
    """A held item as stored."""

    id: int
    component: str
    kind: str
    key: str
    error: str
    attempts: int
    held_at: float
    retry: bool
    """A retry was asked for and its component has not taken it yet."""
    body: bytes | None = None


class HeldStore(Protocol):
    """Synchronous, on the connection of the consumer that holds: `hold` and `release`
    run inside that consumer's transaction, beside its checkpoint or its to-do list."""

    def hold(self, items: Sequence[HeldItem], now: float) -> None:
        """Set aside; an item held before gets the new error and more attempts."""

    def release(self, retried: Sequence[Held]) -> None:
        """Forget items whose retry was applied, in the transaction that applied them;
        raises Withdrawn (so that it rolls back) if any is no longer as it was read."""

    def release_keys(self, component: str, kind: HeldKind, keys: Sequence[str]) -> None:
        """Forget what a component just processed after all (a profile held by a batch
        run that its next change scored)."""

    def holds(self, component: str, kind: HeldKind) -> bool:
        """Whether any such item is held (a cheap look before release_keys)."""

    def to_retry(self, component: str, kind: HeldKind, limit: int) -> list[Held]:
        """Items of `component` whose retry was asked for."""

    def listed(self, component: str | None, limit: int) -> tuple[int, list[Held]]:
        """(how many are held, the newest `limit`), of one component or all."""

    def counts(self) -> dict[str, int]:
        """Held items per component."""

    def retry(self, ids: Sequence[int] | None, component: str | None) -> tuple[int, int]:
        """Ask for a retry of the items named (None: every one, or every one of a
        component). Profiles and accounts go back on the scorer's to-do list at once;
        events are flagged for their component. Returns (requeued, flagged)."""

    def drop(
        self, ids: Sequence[int] | None, component: str | None, kind: HeldKind | None = None
    ) -> int:
        """Forget held items; their events stay in the log, unapplied (until a rebuild
        or a scorer replay reads the whole log again)."""
