"""What a rebuild's swap asks of the storage: set-based steps that put a rebuilt
identity graph in place of the live one, each a statement or two in any SQL store.

Which steps run, in what order, and so what follows what, what is dropped and what
the scorer hears, is the identity component's to decide (actors/identity/swap.py);
a backend only moves rows as told. SQLite's is storage/sqlite_rebuild.py.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Protocol

from storage.graph import Change


class ProfileRows(enum.Enum):
    """Rows kept beside the graph, each keyed by a profile's row, which a rebuild
    numbers anew. A deletion request in the outbox (storage/sqlite_deletions.py) is
    no profile's row and none of these."""

    SCORES = "scores"
    DELIVERY_STATES = "delivery states"
    """What each destination was last sent of a profile, and acknowledged."""
    QUEUED = "queued rows"
    """A profile's rows in the outbox."""


class GraphSwap(Protocol):
    """One swap's steps (`Session.graph_swap`), every one inside the session's open write
    transaction. Steps named "remember" note the live graph's state before
    `replace_graph`; the others act on the graph as replaced. A *vanished* profile id is
    one `remember_profile_ids` noted that the replaced graph has no profile for. What
    a swap noted is forgotten when it ends."""

    def remember_profile_ids(self) -> None:
        """Note every profile id that resolves now (a profile's own, or a retired one
        redirected to it) with the anchor identifier of the profile it resolves to."""
        ...

    def remember_changes(self) -> None:
        """Note the changes waiting for the scorer, in their order."""
        ...

    def set_deletion_requests_apart(self) -> None:
        """A deletion request that still sits under a profile's row (queued by an older
        version with the erased profile's) gets a key of its own, as every newer one
        has: no profile's rows include it. Before `remember_by_uid(QUEUED)`."""
        ...

    def remember_by_uid(self, rows: Collection[ProfileRows]) -> None:
        """Note the profile id each of `rows` belongs to, through the profile row it is
        keyed by. A row keyed by no profile's row is not noted, and does not outlive
        the swap."""
        ...

    def replace_graph(self) -> None:
        """The graph's tables become the rebuilt store's: profiles, identifiers, links,
        redirects, merge records, home events, accounts, and the scorer's waiting
        changes (the rebuild marked every profile it made)."""
        ...

    def replace_held(self, component: str) -> None:
        """`component`'s held items become those held in the rebuilt store."""
        ...

    def redirect_vanished_by_anchor(self) -> None:
        """Each vanished profile id redirects to the profile that now holds its anchor
        identifier, unless the graph redirects it already (or has no such profile)."""
        ...

    def restore_changes(self) -> None:
        """Append the changes `remember_changes` noted, in their order, to those waiting."""
        ...

    def mark_vanished(self, reasons: Change) -> None:
        """Append a change with `reasons` for each vanished profile id."""
        ...

    def drop_vanished(self, rows: Collection[ProfileRows]) -> None:
        """Those of `rows` noted by `remember_by_uid` whose profile id vanished go."""
        ...

    def rekey_by_uid(self, rows: Collection[ProfileRows]) -> None:
        """Each of `rows` noted by `remember_by_uid` is keyed by the row its profile id
        now has; `drop_vanished` first, for rows that have none."""
        ...

    def new_generation(self) -> None:
        """The graph is another (`GraphStore.generation`): what the merger or the scorer
        computed on the old one is not written into it."""
        ...
