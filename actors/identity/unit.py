"""The unit of work of one batch: rows read once, changed in memory, written once.

It holds what the batch read (identifiers, profiles, links, accounts), what it changed
since, and the transaction that writes it all with the checkpoint. Batches overlap
(actors/identity/pipeline.py): one that starts while the one before commits takes that
one's rows from its memory (`carry`), since its own reads cannot see them yet.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from actors.identity.extract import Identifier
from actors.messages import Event
from storage.graph import Account, Change, GraphStore, Merge, Node, Profile

# A plain int on the hot path: IntFlag arithmetic costs microseconds per call.
_ACTIVITY = int(Change.ACTIVITY)


class StaleCheckpoint(Exception):
    """The graph was replaced under us (`leadsync identity rebuild`): read on from
    the checkpoint it carries, given as the argument."""

    def __init__(self, checkpoint: int) -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint


@dataclass
class MergeResult:
    """What applying one batch of events to the graph did, for the metrics and the log."""

    applied: int = 0
    without_identity: int = 0
    blocked: int = 0
    """Identifiers left out as junk (`identity.blocked_values`, `blocked_emails`)."""
    merges: int = 0
    recomputes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """Links not followed, by the kind whose rule refused them."""
    changed: dict[str, Change] = field(default_factory=dict)
    checkpoint: int = 0
    """The last event applied, committed with the batch."""
    seconds: float = 0.0
    """From reading the batch's rows to its commit."""
    write_seconds: float = 0.0
    """How long the batch held the main file's write lock, which the scorer and the
    destinations wait behind (ingestion writes the log's file, and does not)."""
    held: int = 0
    """Events set aside (actors/identity/isolate.py): the checkpoint moved past them."""


class UnitOfWork:
    """The rows one batch works on: read once, changed in memory, written once at the
    end, with the checkpoint, in one transaction. The merge rules that change them are
    applied by its subclass (actors/identity/batch.py)."""

    def __init__(
        self,
        store: GraphStore,
        reads: GraphStore,
        after: int,
        behind: tuple[UnitOfWork, Future[None]] | None = None,
        generation: int | None = None,
    ) -> None:
        self._started = time.perf_counter()
        self.store = store
        self.reads = reads
        """Where the batch reads before it writes: a connection of its own lets it read
        while the batch before commits on `store`'s."""
        self.after = after
        self.carry: UnitOfWork | None = None
        """The batch before, still committing: its rows are newer than the store's."""
        self.behind: Future[None] | None = None
        self._open = False
        self._write_started = 0.0
        self.result = MergeResult()
        self.nodes: dict[tuple[str, str], Node] = {}
        """By (kind, value): an Identifier is such a tuple, and a plain one is cheaper to make."""
        self.nodes_by_id: dict[int, Node] = {}
        self.members: dict[int, set[int]] = {}
        """Cached node ids by profile, so a merge re-points cached rows too."""
        self.profiles: dict[int, Profile] = {}
        self.accounts: dict[str, Account] = {}
        self.dirty_nodes: set[int] = set()
        self.dirty_profiles: set[int] = set()
        self.fresh_nodes: set[int] = set()
        self.fresh_profiles: set[int] = set()
        """Rows not in the store yet: inserted whole, where stored ones are updated."""
        self.moved: set[int] = set()
        """Stored nodes that changed profile: only they rewrite the profile index."""
        self.deleted: set[int] = set()
        self.dirty_accounts: set[str] = set()
        self.renamed: set[int] = set()
        self.redirects: list[tuple[str, int]] = []
        self.node_moves: list[tuple[int, int]] = []
        self.redirect_moves: list[tuple[int, int]] = []
        self.links: dict[tuple[int, int], str] = {}
        self.dirty_links: dict[tuple[int, int], tuple[str, int]] = {}
        self.profile_events: list[tuple[int, int]] = []
        self.merges: list[Merge] = []
        self.changed: dict[str, int] = {}
        self.retired: dict[int, int] = {}
        """Profiles this batch merged away or split, and the one that took their place."""
        if behind is None:
            self.generation = self.store.generation() if generation is None else generation
            self.next_node, self.next_profile = self.store.next_ids()
        else:
            self.carry, self.behind = behind
            self.generation = self.carry.generation
            self.next_node, self.next_profile = self.carry.next_node, self.carry.next_profile

    def commit(self) -> None:
        """COMMIT what `write` wrote, or roll all of it back. One call into SQLite,
        which lets go of the interpreter lock: it runs in a thread while the next batch
        computes."""
        try:
            self.store.commit()
        except BaseException:
            self.abort()
            raise
        done = time.perf_counter()
        self.result.write_seconds = done - self._write_started
        self.result.seconds = done - self._started

    def abort(self) -> None:
        """Drop what this batch wrote; a transaction it did not open (the batch
        before's, still committing) is not its to roll back."""
        if self._open:
            self.store.rollback()

    def _write(self) -> None:
        """Open the transaction, once; the batch before must be
        committed (its rows are read back here), and the graph must still be the one
        this batch read (a rebuild may have swapped it)."""
        if self._open:
            return
        if self.behind is not None:
            self.behind.result()
        self._open = True  # before BEGIN: whatever interrupts it, abort() rolls back
        self.store.begin()
        self._write_started = time.perf_counter()
        current = self.store.checkpoint()
        if current != self.after or self.store.generation() != self.generation:
            raise StaleCheckpoint(current)

    def write(self, seq: int | None) -> None:
        """Write the batch and its checkpoint `seq` (None: the checkpoint stays) in its
        transaction, not committed."""
        self._write()
        self._flush()
        # A profile that only did something (a track, a page view) has nothing for the
        # scorer to rescore: likelihood comes from the log itself. Leaving it off the
        # list spares a random-page write per event, here and in the scorer.
        changed = {uid: flags for uid, flags in self.changed.items() if flags != _ACTIVITY}
        self.store.mark_changed(list(changed.items()))
        if seq is not None:
            self.store.set_checkpoint(seq)
        self.result.checkpoint = self.after if seq is None else seq
        self.result.changed = {uid: Change(flags) for uid, flags in changed.items()}

    def _prefetch(self, work: list[tuple[int, Event, list[Identifier]]]) -> None:
        """Read every row the batch will touch in a few queries, not one per event."""
        keys = list({i for _, _, ids in work for i in ids})
        if (carry := self.carry) is not None:
            self._cache_nodes([carry.nodes[k] for k in keys if k in carry.nodes])
            keys = [k for k in keys if k not in carry.nodes]
        self._cache_nodes(self._stored(self._reads().nodes_by_key(keys)))
        self._load_profiles(list(self.members))
        nodes = self.nodes
        pairs: set[tuple[int, int]] = set()
        for _, _, identifiers in work:
            if len(identifiers) > 1 and (home := nodes.get(identifiers[0])) is not None:
                for identifier in identifiers[1:]:
                    if (other := nodes.get(identifier)) is not None:
                        a, b = home.id, other.id
                        pairs.add((a, b) if a < b else (b, a))
        if carry is not None:
            self.links.update((pair, carry.links[pair]) for pair in pairs if pair in carry.links)
            pairs.difference_update(carry.links)
        self.links.update(self._reads().links_between(sorted(pairs)))
        groups = {e.group_id for _, e, _ in work if e.type == "group" and e.group_id is not None}
        if carry is not None:
            self.accounts.update((g, carry.accounts[g]) for g in groups & carry.accounts.keys())
            groups -= carry.accounts.keys()
        for account in self._reads().accounts(list(groups)):
            self.accounts[account.group_id] = account

    def _load_profiles(self, ids: Sequence[int]) -> None:
        wanted = [i for i in ids if i not in self.profiles]
        if (carry := self.carry) is not None:
            for profile_id in wanted:
                if (profile := carry.profiles.get(profile_id)) is not None:
                    self.profiles[profile_id] = profile
            wanted = [i for i in wanted if i not in self.profiles]
        for profile in self._reads().profiles(wanted):
            self.profiles[profile.id] = profile

    def _reads(self) -> GraphStore:
        """Before the batch writes, its own connection for reads, which can read while
        the batch before commits; after, the one it writes on, which sees its writes."""
        return self.store if self._open else self.reads

    def _stored(self, nodes: list[Node]) -> list[Node]:
        """Rows read from the store, pointed past the profiles the batch before
        merged away (it may re-point them in SQL only, and has not committed)."""
        if self.carry is not None and (retired := self.carry.retired):
            for node in nodes:
                while node.profile in retired:
                    node.profile = retired[node.profile]
        return nodes

    def _delete(self, profile: Profile, heir: int) -> None:
        self.profiles.pop(profile.id, None)
        self.dirty_profiles.discard(profile.id)
        self.deleted.add(profile.id)
        self.redirects.append((profile.uid, heir))

    def _profile(self, profile_id: int) -> Profile:
        profile = self.profiles.get(profile_id)
        if profile is None:
            self._load_profiles([profile_id])
            profile = self.profiles[profile_id]
        return profile

    def _nodes_by_id(self, ids: Iterable[int]) -> list[Node]:
        wanted = [i for i in ids if i not in self.nodes_by_id]
        self._cache_nodes(self.store.nodes_by_id(wanted))
        return [self.nodes_by_id[i] for i in ids]

    def _cache_nodes(self, nodes: Iterable[Node]) -> None:
        by_key, by_id, members = self.nodes, self.nodes_by_id, self.members
        for node in nodes:
            by_key[node.kind, node.value] = node
            by_id[node.id] = node
            if (profile := members.get(node.profile)) is None:
                members[node.profile] = {node.id}
            else:
                profile.add(node.id)

    def _new_profile_id(self) -> int:
        self.next_profile += 1
        return self.next_profile - 1

    def _changed(self, uid: str, flags: int) -> None:
        self.changed[uid] = self.changed.get(uid, 0) | flags

    def _flush(self) -> None:
        self.store.delete_profiles(sorted(self.deleted))
        # Order matters: a retired id first points where it went then, and later moves
        # carry it on; saved rows then carry their final profile.
        self.store.redirect(self.redirects)
        self.store.repoint(self.node_moves, self.redirect_moves)
        # Rows go in key order: each statement then walks its B-tree forwards, and new
        # rows append at the end of their table.
        nodes, profiles = self.nodes_by_id, self.profiles
        stored_nodes = self.dirty_nodes - self.fresh_nodes
        stored_profiles = self.dirty_profiles - self.fresh_profiles
        self.store.update(
            [nodes[i] for i in sorted(stored_nodes - self.moved)],
            [nodes[i] for i in sorted(stored_nodes & self.moved)],
            [profiles[i] for i in sorted(stored_profiles - self.renamed)],
            [profiles[i] for i in sorted(stored_profiles & self.renamed)],
        )
        self.store.insert(
            [nodes[i] for i in sorted(self.dirty_nodes & self.fresh_nodes)],
            [profiles[i] for i in sorted(self.dirty_profiles & self.fresh_profiles)],
        )
        self.store.save_links(
            sorted((a, b, ts, seq) for (a, b), (ts, seq) in self.dirty_links.items())
        )
        self.store.save_accounts([self.accounts[g] for g in self.dirty_accounts])
        self.profile_events.sort()
        self.store.add_profile_events(self.profile_events)
        self.store.record_merges(self.merges)
        self.dirty_nodes.clear()
        self.dirty_profiles.clear()
        self.renamed.clear()
        self.fresh_nodes.clear()
        self.fresh_profiles.clear()
        self.moved.clear()
        self.redirects.clear()
        self.node_moves.clear()
        self.redirect_moves.clear()
        self.dirty_links.clear()
        self.deleted.clear()
        self.dirty_accounts.clear()
        self.profile_events.clear()
        self.merges.clear()
