"""The merge rules: union-find over identifiers, applied a batch of log events at a time.

Every identifier points straight at its profile (full path compression), so finding
a profile is one lookup and a merge re-points the smaller side's rows.

Order does not change the outcome. Without a rule firing, union is order-free by
nature; the surviving profile is the one whose oldest identifier is oldest by event
time, and traits are newest-event-wins, so neither depends on arrival. When a rule
fires (two user ids, a cap), the decision could depend on arrival, so the connected
part of the graph is re-decided from its links sorted by event time: the earliest
link wins, exactly as if the events had arrived in time order. Links are recorded
with the earliest event that made them, so a late, older event re-decides correctly.

Batches overlap: while one commits, in a thread, the next is computed, reading
through a connection that does not see the first until it has committed. So the next
batch takes the rows the one before holds from its memory instead, and follows the
profiles it merged away (re-pointing, in SQL, identifiers it had not read) to where
they went.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from actors.identity.extract import USER_ID, Extractor, Identifier
from actors.messages import Event
from daemon.config import IdentitySection
from storage.graph import (
    Account,
    Activity,
    Anchor,
    Change,
    GraphStore,
    Link,
    Merge,
    Node,
    Profile,
    Stamped,
)
from storage.log import StoredEvent

log = structlog.get_logger(__name__)

MAX_RECOMPUTE_NODES = 10_000
"""A conflict re-decides at most this many identifiers; past it (a shared id that
touches thousands of people) the link is dropped in arrival order and logged."""
MAX_REFOLD_EVENTS = 100_000
"""Nor does it fold more events than this again (about 0.3 s under the write lock):
past it (a kiosk with a long history changing hands) the same."""

_decode_event = msgspec.json.Decoder(Event).decode
# Plain ints on the hot path: IntFlag arithmetic costs microseconds per call.
_IDENTITY, _MERGE, _TRAITS = int(Change.IDENTITY), int(Change.MERGE), int(Change.TRAITS)
_ACTIVITY, _ACCOUNT = int(Change.ACTIVITY), int(Change.ACCOUNT)
_MERGED_AWAY, _RECOMPUTED = int(Change.MERGED_AWAY), int(Change.RECOMPUTED)


def uid_of(anchor: Anchor) -> str:
    """A profile's public id: named after its oldest identifier, so a rebuild, a replay
    after a crash, or a different arrival order all give the same id."""
    digest = hashlib.blake2b(f"{anchor[1]}\0{anchor[2]}".encode(), digest_size=8)
    return "prf_" + digest.hexdigest()


def newer(current: Stamped | None, candidate: Stamped) -> bool:
    return current is None or (candidate.ts, candidate.message_id, candidate.source) > (
        current.ts,
        current.message_id,
        current.source,
    )


def absorb(into: Activity, other: Activity) -> None:
    """Fold `other` into `into`: the same result whichever side came first."""
    if other.first_seen and (not into.first_seen or other.first_seen < into.first_seen):
        into.first_seen = other.first_seen
    into.last_seen = max(into.last_seen, other.last_seen)
    into.events += other.events
    for source, count in other.sources.items():
        into.sources[source] = into.sources.get(source, 0) + count
    for name, stamp in other.traits.items():
        if newer(into.traits.get(name), stamp):
            into.traits[name] = stamp
    if other.account is not None and newer(into.account, other.account):
        into.account = other.account
    into.links_until = max(into.links_until, other.links_until)


def person_traits(event: Event) -> dict[str, Any]:
    """Traits about the person. A group call's own traits describe the account."""
    context_traits = event.context.get("traits") if event.context else None
    own = event.traits if event.type == "identify" else None
    if not isinstance(context_traits, dict) or not context_traits:
        return own or {}  # read only: no copy needed
    traits = dict(context_traits)
    if own:
        traits.update(own)
    return traits


def record(activity: Activity, event: Event, traits: dict[str, Any]) -> bool:
    """Count one event; True if it changed a trait's value."""
    # Runs twice per event: a Stamped is made only where the event wins.
    ts, mid, source = event.timestamp, event.message_id, event.source
    if not activity.first_seen or ts < activity.first_seen:
        activity.first_seen = ts
    if ts > activity.last_seen:
        activity.last_seen = ts
    activity.events += 1
    sources = activity.sources
    sources[event.source] = sources.get(event.source, 0) + 1
    changed = False
    if traits:
        known = activity.traits
        for name, value in traits.items():
            current = known.get(name)
            if current is None:
                changed = True
            elif (ts, mid, source) > (current.ts, current.message_id, current.source):
                changed = changed or current.value != value
            else:
                continue
            known[name] = Stamped(value, ts, mid, source)
    if event.type == "group" and event.group_id is not None:
        stamp = Stamped(event.group_id, ts, mid, source)
        if newer(activity.account, stamp):
            activity.account = stamp
    return changed


class StaleCheckpoint(Exception):
    """The graph was replaced under us (`leadsync identity rebuild`): read on from
    the checkpoint it carries, given as the argument."""

    def __init__(self, checkpoint: int) -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint


@dataclass
class BatchResult:
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


class Graph:
    """Applies log events to a GraphStore. One batch is one transaction, checkpoint included."""

    def __init__(
        self,
        store: GraphStore,
        rules: IdentitySection,
        extractor: Extractor,
        reads: GraphStore | None = None,
    ) -> None:
        self.store = store
        self.reads = reads or store
        """Where a batch reads before it writes: a connection of its own lets it read
        while the batch before commits on `store`'s."""
        self.rules = rules
        self.extractor = extractor
        self._limits: dict[str, int] = {}
        for kind in extractor.priority:
            limit = rules.limit(kind)
            if limit is not None:
                self._limits[kind] = limit

    def apply(self, events: Sequence[StoredEvent], after: int) -> BatchResult:
        """Apply `events`, which follow checkpoint `after`, and move the checkpoint."""
        (result,) = self.apply_all([events], after)
        return result

    def apply_aside(
        self,
        events: Sequence[StoredEvent],
        checkpoint: int,
        within: Callable[[], None] = lambda: None,
        skip: bool = False,
    ) -> BatchResult:
        """One transaction off the log's order, at checkpoint `checkpoint`: apply
        `events` without moving the checkpoint (held events applied again), or, with
        `skip`, apply nothing and move the checkpoint past the one event given (one
        set aside). `within` runs inside the transaction (the held table's part)."""
        batch = _Batch(self, checkpoint)
        try:
            with collector_paused():
                if not skip:
                    batch.run(events)
                batch.write(events[-1].seq if skip else None)
                within()
            batch.commit()
        except BaseException:
            batch.abort()
            raise
        return batch.result

    def apply_all(
        self, batches: Iterable[Sequence[StoredEvent]], after: int
    ) -> Generator[BatchResult, None, None]:
        """Apply `batches` in turn, the first following checkpoint `after`, each in a
        transaction of its own; yields each one's result once it is committed.

        While one batch commits, in a thread (SQLite lets go of the interpreter lock
        there), the next is computed and written. If a batch fails, or reading the
        next one does, the error is raised after the results of those committed before
        it; the batch after a failed one is dropped uncommitted. Read to the end: a
        commit in flight when the reader stops is waited for, and not reported."""
        source = iter(batches)
        with ThreadPoolExecutor(1, "graph-commit") as committer:
            in_flight: tuple[_Batch, Future[None]] | None = None
            done: BatchResult | None = None
            while True:
                batch: _Batch | None = None
                failed: BaseException | None = None
                try:
                    # Read before the events: a forget erases events, then bumps the
                    # generation, so a batch read after the bump reads without them,
                    # and one read before it fails its check at the write.
                    generation = self.store.generation() if in_flight is None else None
                    if (events := next(source, None)) is not None:
                        batch = _Batch(self, after, in_flight, generation)
                        with collector_paused():
                            batch.run(events)
                            batch.write(events[-1].seq)
                        after = events[-1].seq
                except BaseException as exc:
                    if batch is not None:
                        batch.abort()
                    batch, failed = None, exc
                try:
                    if in_flight is not None:
                        # A failed commit is the first failure (the batch after, which
                        # waits for it before writing, failed for it), and raised here.
                        done = _committed(in_flight)
                        in_flight = None
                    if batch is not None:
                        batch.carry = batch.behind = None  # each batch is let go of in turn
                        in_flight = batch, committer.submit(batch.commit)
                        batch = None
                except BaseException:
                    if batch is not None:  # written, not handed over: never left open
                        batch.abort()
                    raise
                if done is not None:
                    yield done
                    done = None
                if failed is not None:
                    raise failed
                if in_flight is None:
                    return

    def violation(self, left: dict[str, int], right: dict[str, int]) -> str | None:
        """The kind whose cap joining these two would exceed, if any."""
        for kind, limit in self._limits.items():
            if left.get(kind, 0) + right.get(kind, 0) > limit:
                return kind
        return None


class _Batch:
    """The unit of work for one batch: rows are read once, changed in memory, and
    written once at the end. The write lock is taken only for that end, so ingestion
    commits while the batch computes; a re-decision, which reads through SQL, takes
    it early and keeps it to the end."""

    def __init__(
        self,
        graph: Graph,
        after: int,
        behind: tuple[_Batch, Future[None]] | None = None,
        generation: int | None = None,
    ) -> None:
        self._started = time.perf_counter()
        self.graph = graph
        self.store = graph.store
        self.after = after
        self.carry: _Batch | None = None
        """The batch before, still committing: its rows are newer than the store's."""
        self.behind: Future[None] | None = None
        self._open = False
        self._write_started = 0.0
        self.result = BatchResult()
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

    def run(self, stored: Sequence[StoredEvent]) -> None:
        extractor = self.graph.extractor
        identifiers_of, blocked = extractor.identifiers, extractor.blocked
        work: list[tuple[int, Event, list[Identifier]]] = []
        for row in stored:
            event = _decode_event(row.body)
            work.append((row.seq, event, identifiers_of(event)))
        self.result.blocked = extractor.blocked - blocked
        self._prefetch(work)
        apply = self._apply
        applied = 0
        for seq, event, identifiers in work:
            if identifiers:
                apply(seq, event, identifiers)
                applied += 1
        self.result.applied += applied
        self.result.without_identity += len(work) - applied

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
        return self.store if self._open else self.graph.reads

    def _stored(self, nodes: list[Node]) -> list[Node]:
        """Rows read from the store, pointed past the profiles the batch before
        merged away (it may re-point them in SQL only, and has not committed)."""
        if self.carry is not None and (retired := self.carry.retired):
            for node in nodes:
                while node.profile in retired:
                    node.profile = retired[node.profile]
        return nodes

    def _apply(self, seq: int, event: Event, identifiers: list[Identifier]) -> None:
        # The hot path: most events name identifiers this batch already holds, no older
        # than their first event, so _node (which handles the rest) is skipped.
        ts, cached = event.timestamp, self.nodes
        nodes: list[Node] = []
        for identifier in identifiers:
            node = cached.get(identifier)
            if node is None or ts < node.first_ts:
                node = self._node(identifier, seq, event)
            nodes.append(node)
        home = nodes[0]
        for other in nodes[1:]:
            self._link(home, other, seq, event)
        profile = self.profiles.get(home.profile) or self._profile(home.profile)
        flags = _ACTIVITY
        if record(profile.activity, event, person_traits(event)):
            flags |= _TRAITS
        if event.type == "group" and event.group_id is not None:
            self._account(event)
            flags |= _ACCOUNT
        self.dirty_profiles.add(profile.id)
        self.profile_events.append((home.id, seq))
        self._changed(profile.uid, flags)

    def _node(self, identifier: Identifier, seq: int, event: Event) -> Node:
        ts = event.timestamp
        node = self.nodes.get(identifier)
        if node is None:
            anchor: Anchor = (ts, identifier.kind, identifier.value)
            uid = uid_of(anchor)
            profile_id, node_id = self._new_profile_id(), self.next_node
            self.next_node += 1
            node = Node(node_id, identifier.kind, identifier.value, profile_id, ts)
            self.dirty_nodes.add(node_id)
            self.fresh_nodes.add(node_id)
            self.fresh_profiles.add(profile_id)
            user_id = identifier.value if identifier.kind == USER_ID else None
            profile = Profile(profile_id, uid, anchor, {identifier.kind: 1}, Activity(), user_id)
            self.profiles[profile_id] = profile
            self.dirty_profiles.add(profile_id)
            self._cache_nodes([node])
            self._changed(uid, _IDENTITY)
            return node
        if ts < node.first_ts:
            # An older event than any seen for this identifier: it may now be the
            # profile's oldest, which renames the profile (the old id redirects).
            node.first_ts = ts
            self.dirty_nodes.add(node.id)
            profile = self._profile(node.profile)
            anchor = (ts, node.kind, node.value)
            if anchor < profile.anchor:
                old = profile.uid
                profile.anchor, profile.uid = anchor, uid_of(anchor)
                if profile.uid != old:
                    self.renamed.add(profile.id)
                    self.redirects.append((old, profile.id))
                    self.merges.append(
                        Merge(
                            profile.uid,
                            old,
                            "renamed: an older event arrived",
                            seq,
                            event.message_id,
                        )
                    )
                    self._changed(old, _MERGED_AWAY)
                    self._changed(profile.uid, _IDENTITY)
                self.dirty_profiles.add(profile.id)
        return node

    def _link(self, home: Node, other: Node, seq: int, event: Event) -> None:
        pair = (min(home.id, other.id), max(home.id, other.id))
        known = self.links.get(pair)
        if known is not None and known <= event.timestamp:
            return  # seen before, at this time or earlier: already decided
        self.links[pair] = event.timestamp
        self.dirty_links[pair] = (event.timestamp, seq)
        left, right = self._profile(home.profile), self._profile(other.profile)
        if left.id == right.id:
            return
        kind = self.graph.violation(left.kinds, right.kinds)
        if kind is None:
            self._touch(left, right, event.timestamp)
            reason = f"{home.kind} and {other.kind} on one {event.type}"
            self._merge(left, right, reason, seq, event.message_id)
            return
        self.result.dropped[kind] += 1
        latest = max(left.activity.links_until, right.activity.links_until)
        self._touch(left, right, event.timestamp)
        if event.timestamp > latest:
            # Later than every link touching either side: in event-time order it
            # comes last and is refused just the same, so nothing to re-decide.
            return
        log.info(
            "identity link dropped",
            rule=_rule(kind, self.graph.rules.limit(kind)),
            home=f"{home.kind}:{home.value}",
            other=f"{other.kind}:{other.value}",
            message_id=event.message_id,
            seq=seq,
        )
        self._recompute([home, other], seq, event.message_id, kind)

    def _touch(self, left: Profile, right: Profile, ts: str) -> None:
        for profile in (left, right):
            if ts > profile.activity.links_until:
                profile.activity.links_until = ts
                self.dirty_profiles.add(profile.id)

    def _merge(self, left: Profile, right: Profile, reason: str, seq: int, mid: str) -> None:
        survivor, loser = (left, right) if left.anchor <= right.anchor else (right, left)
        moved = self.members.pop(loser.id, set())
        if len(moved) < sum(loser.kinds.values()):
            self.node_moves.append((loser.id, survivor.id))  # some rows are not in memory
        self.redirect_moves.append((loser.id, survivor.id))
        self.retired[loser.id] = survivor.id
        for node_id in moved:
            self.nodes_by_id[node_id].profile = survivor.id
        self.dirty_nodes.update(moved)
        self.moved.update(moved)
        self.members.setdefault(survivor.id, set()).update(moved)
        for kind, count in loser.kinds.items():
            survivor.kinds[kind] = survivor.kinds.get(kind, 0) + count
        survivor.user_id = survivor.user_id or loser.user_id
        absorb(survivor.activity, loser.activity)
        self.dirty_profiles.add(survivor.id)
        # What the batch changed on the loser (new traits, a new account) is now the
        # survivor's to be rescored for.
        flags = self.changed.pop(loser.uid, 0)
        self._changed(survivor.uid, flags & ~_MERGED_AWAY)
        if loser.id in self.fresh_profiles:
            # Born in this batch and never stored (a new identify with a user id and an
            # email makes one profile per identifier, then joins them): nobody has seen
            # its id, so it needs no redirect, no merge record and no word to the scorer.
            self.profiles.pop(loser.id, None)
            self.dirty_profiles.discard(loser.id)
            self.fresh_profiles.discard(loser.id)
            if flags & _MERGED_AWAY:
                # A stored profile of the same id went earlier in this batch (a
                # re-decision made the id anew): that still needs saying.
                self.changed[loser.uid] = _MERGED_AWAY
            self._changed(survivor.uid, _IDENTITY)
            return
        self._delete(loser, survivor.id)
        self.merges.append(Merge(survivor.uid, loser.uid, reason, seq, mid))
        self.result.merges += 1
        self._changed(survivor.uid, _MERGE)
        self._changed(loser.uid, _MERGED_AWAY)

    def _recompute(self, seeds: Sequence[Node], seq: int, mid: str, kind: str) -> None:
        """Re-decide the connected part of the graph around `seeds` in event-time order."""
        self._write()
        self._flush()
        profile_ids: set[int] = set()
        node_ids: set[int] = set()
        links: set[Link] = set()
        frontier = {node.profile for node in seeds}
        while frontier:
            profile_ids |= frontier
            members = [
                i for i in self.store.node_ids_of_profiles(list(frontier)) if i not in node_ids
            ]
            node_ids.update(members)
            if len(node_ids) > MAX_RECOMPUTE_NODES:
                log.warning(
                    "conflict touches too many identifiers to re-decide; link dropped as it came",
                    identifiers=len(node_ids),
                    limit=MAX_RECOMPUTE_NODES,
                    message_id=mid,
                )
                return
            found = self.store.links_of(members)
            links.update(found)
            reached = {end for link in found for end in (link.a, link.b)} - node_ids
            frontier = {node.profile for node in self._nodes_by_id(reached)} - profile_ids
        nodes = {node.id: node for node in self._nodes_by_id(node_ids)}
        old = [self._profile(profile_id) for profile_id in profile_ids]
        before = {node_id: node.profile for node_id, node in nodes.items()}
        held: dict[int, set[int]] = {}
        for node_id, profile_id in before.items():
            held.setdefault(profile_id, set()).add(node_id)
        by_uid = {profile.uid: profile for profile in old}
        # A group a profile already holds, no more and no less, keeps that profile as it
        # is; the others are folded again from their identifiers' events.
        plan: list[tuple[list[Node], Anchor, str, bool]] = []
        for group in self._decide(nodes, links):
            anchor = min((n.first_ts, n.kind, n.value) for n in group)
            uid = uid_of(anchor)
            holder = by_uid.get(uid)
            stands = holder is not None and held.get(holder.id) == {n.id for n in group}
            plan.append((group, anchor, uid, stands))
        activity = self._activity(
            [n.id for group, _, _, stands in plan if not stands for n in group], links
        )
        if activity is None:
            log.warning(
                "conflict touches too many events to re-decide; link dropped as it came",
                limit=MAX_REFOLD_EVENTS,
                message_id=mid,
            )
            return

        owner_of: dict[tuple[str, str], Profile] = {}
        after: list[Profile] = []
        for group, anchor, uid, stands in plan:
            profile = by_uid.pop(uid, None)
            if profile is None:
                profile = Profile(self._new_profile_id(), uid, anchor, {}, Activity())
                self.profiles[profile.id] = profile
                self.fresh_profiles.add(profile.id)
            if not stands:
                profile.anchor = anchor
                profile.kinds = dict(Counter(n.kind for n in group))
                profile.user_id = next((n.value for n in group if n.kind == USER_ID), None)
                profile.activity = Activity()
                for node in group:
                    absorb(profile.activity, activity[node.id])
                self.dirty_profiles.add(profile.id)
            self.members[profile.id] = {node.id for node in group}
            for node in group:
                if node.profile != profile.id:
                    node.profile = profile.id
                    self.moved.add(node.id)
                    self.dirty_nodes.add(node.id)
                owner_of[(node.kind, node.value)] = profile
            after.append(profile)
        for gone in by_uid.values():
            heir = owner_of[(gone.anchor[1], gone.anchor[2])]
            self.members.pop(gone.id, None)
            self._delete(gone, heir.id)
            self.redirect_moves.append((gone.id, heir.id))
            self.retired[gone.id] = heir.id
            self._changed(gone.uid, _MERGED_AWAY)
        self.result.recomputes += 1
        if before == {node_id: node.profile for node_id, node in nodes.items()}:
            return  # the earlier decision stands: the link is simply not followed
        for profile in after:
            self._changed(profile.uid, _RECOMPUTED)
        self.merges.append(
            Merge(
                ",".join(sorted(p.uid for p in after)),
                ",".join(sorted(p.uid for p in old)),
                f"re-decided in event-time order after a link broke the {kind} rule",
                seq,
                mid,
            )
        )

    def _activity(self, nodes: Sequence[int], links: Iterable[Link]) -> dict[int, Activity] | None:
        """What each identifier's own events said, folded again from the log: kept per
        identifier, it would be one more row rewritten with every event, to be read
        only here. The batch so far is flushed, so its events are in profile_events.
        None past MAX_REFOLD_EVENTS, counted first: refusing is then cheap, however
        often a batch's late links reach into one huge component."""
        if self.store.count_home_events(nodes) > MAX_REFOLD_EVENTS:
            return None
        folded = {node_id: Activity() for node_id in nodes}
        for node_id, body in self.store.home_events(nodes):
            event = _decode_event(body)
            record(folded[node_id], event, person_traits(event))
        for link in links:
            for end in (link.a, link.b):
                if end in folded and link.ts > folded[end].links_until:
                    folded[end].links_until = link.ts
        return folded

    def _decide(self, nodes: dict[int, Node], links: Iterable[Link]) -> list[list[Node]]:
        """Union-find over `links` in event-time order, skipping those a rule forbids."""

        def order(link: Link) -> tuple[str, tuple[str, str], tuple[str, str]]:
            a, b = nodes[link.a], nodes[link.b]
            ends = sorted([(a.kind, a.value), (b.kind, b.value)])
            return link.ts, ends[0], ends[1]

        parent = {node_id: node_id for node_id in nodes}
        kinds = {node_id: {node.kind: 1} for node_id, node in nodes.items()}

        def find(x: int) -> int:
            root = x
            while parent[root] != root:
                root = parent[root]
            while parent[x] != root:
                parent[x], x = root, parent[x]
            return root

        for link in sorted(links, key=order):
            a, b = find(link.a), find(link.b)
            if a == b or self.graph.violation(kinds[a], kinds[b]) is not None:
                continue
            parent[b] = a
            for kind, count in kinds.pop(b).items():
                kinds[a][kind] = kinds[a].get(kind, 0) + count
        groups: dict[int, list[Node]] = {}
        for node_id, node in nodes.items():
            groups.setdefault(find(node_id), []).append(node)
        return list(groups.values())

    def _account(self, event: Event) -> None:
        assert event.group_id is not None
        ts = event.timestamp
        account = self.accounts.get(event.group_id)
        if account is None:
            account = self.accounts[event.group_id] = Account(event.group_id, ts, ts, {})
        account.first_seen = min(account.first_seen, ts)
        account.last_seen = max(account.last_seen, ts)
        for name, value in (event.traits or {}).items():
            stamp = Stamped(value, ts, event.message_id, event.source)
            if newer(account.traits.get(name), stamp):
                account.traits[name] = stamp
        self.dirty_accounts.add(event.group_id)

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


@contextmanager
def collector_paused() -> Iterator[None]:
    """A batch allocates hundreds of thousands of objects that live until it ends, and
    the cyclic collector, triggered by the allocations, traversed them again and again
    (a seventh of the merger's time in bench/identity.py) looking for cycles that the
    batch does not make: its objects go by reference counting when it is dropped.
    Anything cyclic is still collected, after the batch (or, in the merger's worker,
    which pauses it for a whole call, after the call)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _committed(in_flight: tuple[_Batch, Future[None]]) -> BatchResult:
    """Wait for the batch's commit; raises what failed it, the first failure of a run."""
    batch, commit = in_flight
    commit.result()
    return batch.result


def _rule(kind: str, limit: int | None) -> str:
    if kind == USER_ID and limit == 1:
        return "a profile has at most one user id"
    return f"a profile has at most {limit} {kind}"
