"""A batch of log events applied to the identity graph: union-find over identifiers.

Every identifier points straight at its profile (full path compression), so finding
a profile is one lookup and a merge re-points the smaller side's rows. A link that a
rule refuses re-decides the connected part of the graph around it in event-time order
(actors/identity/rules.py); links are recorded with the earliest event that made them,
so a late, older event re-decides correctly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future

import msgspec
import structlog

from actors.identity.extract import USER_ID, Extractor, Identifier
from actors.identity.rules import Caps, absorb, decide, newer, person_traits, record, uid_of
from actors.identity.unit import UnitOfWork
from actors.messages import Event
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


class Batch(UnitOfWork):
    """The merge rules applied to one batch's rows (actors/identity/unit.py). The write
    lock is taken only for the batch's end, so ingestion commits while the batch
    computes; a re-decision, which reads through SQL, takes it early and keeps it to
    the end."""

    def __init__(
        self,
        store: GraphStore,
        reads: GraphStore,
        extractor: Extractor,
        caps: Caps,
        after: int,
        behind: tuple[UnitOfWork, Future[None]] | None = None,
        generation: int | None = None,
    ) -> None:
        super().__init__(store, reads, after, behind, generation)
        self.extractor = extractor
        self.caps = caps

    def run(self, stored: Sequence[StoredEvent]) -> None:
        extractor = self.extractor
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
        kind = self.caps.violation(left.kinds, right.kinds)
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
            rule=self.caps.rule(kind),
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
        for group in decide(nodes, links, self.caps):
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
