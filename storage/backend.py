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
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio
import msgspec

from storage.held import Held
from storage.lifecycle import LifecycleStore
from storage.log import AppendRequest, AppendResult, QuarantinedMessage, StoredEvent
from storage.session import LogReader, Session


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


class Backend(Protocol):
    """Where leadsync keeps its data, and the one way in: daemon/app.py builds one and
    hands each component what it opens from it; the offline commands build their own.
    Picklable: the merger's worker process opens its sessions from the one it is given.
    Everything opened here raises storage/errors.py's errors."""

    def describe(self) -> str:
        """Where the data is, for messages (a path, a DSN without its password)."""
        ...

    def exists(self) -> bool:
        """Whether there is a database yet (`open` creates one)."""
        ...

    async def open(self) -> Storage:
        """Create or migrate the database, and open the daemon's handle on it."""
        ...

    def session(self, *, cache_kib: int | None = None, durable: bool = False) -> Session:
        """Stores on a connection of the caller's own (`cache_kib`: its page cache,
        for a reader that wants more or less than the default; `durable`: each commit
        survives power loss, not only a crash of the process)."""
        ...

    def log_reader(self) -> ClosingLogReader:
        """The event log on a read-only connection of its own, which reads while the
        caller's session commits."""
        ...

    def lifecycle(self) -> ClosingLifecycleStore:
        """What forget, unforget and the suppression set work through."""
        ...

    def checkpointer(self) -> Checkpointer:
        """For a thread that now and then moves what was committed into the main file
        (SQLite's WAL checkpoint), on a connection of its own."""
        ...

    def scratch(self) -> AbstractContextManager[Session]:
        """An empty database of the same schema, its `log` reading this one's, for a
        rebuild to replay into (then `Session.graph_swap`); gone on exit."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """One rebuild or forget of this database at a time: raises RebuildRunning
        while another holds it."""
        ...


class Checkpointer(Protocol):
    def checkpoint(self) -> None:
        """Do it now, waiting for nobody; raises StorageError if it failed."""
        ...

    def close(self) -> None: ...


class ClosingLogReader(LogReader, Protocol):
    def close(self) -> None: ...


class ClosingLifecycleStore(LifecycleStore, Protocol):
    def close(self) -> None: ...
