"""A session: one connection's worth of synchronous stores that share its transactions.

The merger, the scorer, the destinations, the rebuild and the offline commands each
open sessions of their own from the backend (storage/backend.py) and work through
the stores on them in worker threads. `begin`/`commit`/`rollback` (or
storage/transaction.py's `transaction`) bracket the work of every store of the
session at once: a consumer's state and its checkpoint commit together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from storage.graph import GraphStore
from storage.held import HeldStore
from storage.log import StoredEvent
from storage.outbox import OutboxStore
from storage.rebuild import GraphSwap
from storage.scores import ScoreStore


class LogReader(Protocol):
    """Reads of the event log, in order, for a consumer that applies it."""

    def head(self) -> int:
        """The newest event's sequence number (0: none yet)."""
        ...

    def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events after `after`, oldest first."""
        ...

    def batches(
        self, after: int, size: int, until: float = math.inf
    ) -> Iterator[list[StoredEvent]]:
        """The log after `after`, `size` events a batch, to its head as it is when each
        batch is read, or until the clock (time.perf_counter) passes `until`."""
        ...


class Session(Protocol):
    """Stores on one connection. Raises storage/errors.py's errors, nothing else."""

    @property
    def graph(self) -> GraphStore: ...

    @property
    def held(self) -> HeldStore: ...

    @property
    def scores(self) -> ScoreStore: ...

    @property
    def outbox(self) -> OutboxStore: ...

    @property
    def log(self) -> LogReader:
        """The event log as this session's snapshot sees it."""
        ...

    def meta(self, key: str) -> str | None:
        """A small durable fact the daemon keeps about itself (storage.Storage.get_meta)."""
        ...

    def begin(self) -> None:
        """Start a write transaction, waiting (up to the busy timeout) for the lock."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back the transaction if one is open; nothing otherwise."""
        ...

    def graph_swap(self, rebuilt: Session) -> AbstractContextManager[GraphSwap]:
        """The steps that put the identity graph `rebuilt` (a backend's `scratch`,
        closed here) holds in place of this session's (storage/rebuild.py), for
        actors/identity/swap.py to run between this session's `begin` and `commit`,
        inside the context."""
        ...

    def close(self) -> None: ...
