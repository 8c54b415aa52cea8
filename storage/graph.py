"""The identity graph's interface and the rows the identity actor keeps.

It works a batch at a time in memory and hands the store whole rows, so a backend
needs no knowledge of the merge rules (actors/identity/). SQLite's is
storage/sqlite_graph.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec

IDENTITY_CONSUMER = "identity"
"""The merger's name in the checkpoints table and in LogProgress."""


class Stamped(msgspec.Struct, array_like=True):
    """A value and the event that set it; the newest (timestamp, messageId, source)
    wins. The source settles ties the log allows: one messageId from two sources."""

    value: Any
    ts: str
    message_id: str
    source: str = ""


class Activity(msgspec.Struct, omit_defaults=True):
    """What events said about an identifier or a profile; folds are order-free."""

    first_seen: str = ""
    last_seen: str = ""
    events: int = 0
    sources: dict[str, int] = {}
    traits: dict[str, Stamped] = {}
    account: Stamped | None = None
    links_until: str = ""
    """The latest event time of any link touching these identifiers, followed or
    not: a refused link later than it cannot change an event-time-order decision."""


class Node(msgspec.Struct):
    """One identifier (kind, value) and the profile it belongs to.

    `first_ts` is the earliest event that carried it, whatever the order of arrival.
    The events whose home it is (see actors/identity/extract.py) are in the log,
    listed by `GraphStore.add_profile_events`.
    """

    id: int
    kind: str
    value: str
    profile: int
    first_ts: str


Anchor = tuple[str, str, str]
"""(first_ts, kind, value) of a profile's oldest identifier: what names the profile."""


class Profile(msgspec.Struct):
    id: int
    uid: str
    anchor: Anchor
    kinds: dict[str, int]
    activity: Activity
    user_id: str | None = None


class Link(msgspec.Struct, frozen=True):
    """Two identifiers seen on one event: the earliest such event decides its order."""

    a: int
    b: int
    ts: str


class Account(msgspec.Struct):
    group_id: str
    first_seen: str
    last_seen: str
    traits: dict[str, Stamped]


class Merge(msgspec.Struct, frozen=True):
    """The audit trail: which profiles became one (or were re-split), why, on which event."""

    survivor: str
    merged: str
    reason: str
    seq: int
    message_id: str


class Change(enum.IntFlag):
    """Why a profile needs scoring again; stored as an integer, and OR-ed over a
    profile's waiting rows when the scorer takes them."""

    IDENTITY = 1
    MERGE = 2
    TRAITS = 4
    ACTIVITY = 8
    """Events happened. Recorded only beside another reason: alone, it asks nothing of
    the scorer (likelihood comes from the log)."""
    ACCOUNT = 16
    MERGED_AWAY = 32
    """The profile no longer exists: its identifiers joined another (see redirects)."""
    RECOMPUTED = 64


class GraphStore(Protocol):
    """The identity graph's persistence, used from one worker thread by one actor.

    Synchronous on purpose: the merger makes many small reads and writes per batch,
    and one thread hop per batch (not per statement) is what keeps it fast. Reads
    need no transaction, since only the merger writes these tables; every write
    happens between `begin()` and `commit()`, with the batch's checkpoint.
    """

    def begin(self) -> None:
        """Open the write transaction (the caller holds Storage.write_gate)."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def checkpoint(self) -> int: ...

    def generation(self) -> int:
        """Bumped by every rebuild swap: a batch computed on the graph before a swap
        must not be written into the one after, even at the same checkpoint."""
        ...

    def set_checkpoint(self, seq: int) -> None: ...

    def nodes_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Node]: ...

    def nodes_by_id(self, ids: Sequence[int]) -> list[Node]: ...

    def node_ids_of_profiles(self, profiles: Sequence[int]) -> list[int]: ...

    def profiles(self, ids: Sequence[int]) -> list[Profile]: ...

    def next_ids(self) -> tuple[int, int]:
        """(next identifier id, next profile id): a batch hands out ids in memory and
        writes its rows once, at the end."""
        ...

    def insert(self, nodes: Sequence[Node], profiles: Sequence[Profile]) -> None:
        """Rows new to the store (ids from `next_ids`)."""
        ...

    def update(
        self,
        nodes: Sequence[Node],
        moved: Sequence[Node],
        profiles: Sequence[Profile],
        renamed: Sequence[Profile],
    ) -> None:
        """Stored rows, split by what may have changed, so a backend rewrites no more
        than it must: `nodes` kept their profile, `moved` did not; `profiles` kept
        their uid, `renamed` did not (and may take a uid another gave up in the same
        transaction)."""
        ...

    def delete_profiles(self, ids: Sequence[int]) -> None: ...

    def redirect(self, redirects: Sequence[tuple[str, int]]) -> None:
        """(retired uid, profile): keep retired profile ids resolvable."""
        ...

    def repoint(
        self, nodes: Sequence[tuple[int, int]], redirects: Sequence[tuple[int, int]]
    ) -> None:
        """(old, new) profile ids, in order: identifiers, and retired ids, of `old` now
        belong to `new`."""
        ...

    def links_between(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """The earliest time each (a, b) pair (a < b) was seen together, where known."""
        ...

    def save_links(self, links: Sequence[tuple[int, int, str, int]]) -> None:
        """(a, b, ts, seq) with a < b; a pair keeps its earliest time."""
        ...

    def links_of(self, nodes: Sequence[int]) -> list[Link]: ...

    def accounts(self, group_ids: Sequence[str]) -> list[Account]: ...

    def save_accounts(self, accounts: Sequence[Account]) -> None: ...

    def add_profile_events(self, rows: Sequence[tuple[int, int]]) -> None:
        """(node, seq): the event log rows each identifier is home to."""
        ...

    def home_events(self, nodes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(node, event body) for every logged event whose home is one of `nodes`,
        including those added in the open transaction; read as it is consumed."""
        ...

    def count_home_events(self, nodes: Sequence[int]) -> int:
        """How many events `home_events` would give, without reading them."""
        ...

    def record_merges(self, merges: Sequence[Merge]) -> None: ...

    def mark_changed(self, changes: Sequence[tuple[str, int]]) -> None:
        """(profile uid, `Change` flags) for the scorer to pick up, after what is
        already waiting; one per profile the batch changed."""
        ...
