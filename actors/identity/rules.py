"""The merge rules: how a profile is named, which value wins, which links a cap refuses.

Order does not change the outcome. Without a rule firing, union is order-free by
nature; the surviving profile is the one whose oldest identifier is oldest by event
time, and traits are newest-event-wins, so neither depends on arrival. When a rule
fires (two user ids, a cap), the decision could depend on arrival, so the connected
part of the graph is re-decided from its links sorted by event time (`decide`): the
earliest link wins, exactly as if the events had arrived in time order.

Functions over the rows of storage/graph.py, and the configured caps; a batch applies
them (actors/identity/batch.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from actors.identity.extract import USER_ID
from actors.identity.settings import IdentitySection
from actors.messages import Event
from storage.graph import Activity, Anchor, Link, Node, Stamped


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


class Caps:
    """How many identifiers of each kind one profile may hold (`identity.limits`, an
    external id's `limit`, or the default): a merge that would exceed one is refused."""

    def __init__(self, rules: IdentitySection, kinds: Iterable[str]) -> None:
        self.limits: dict[str, int] = {}
        for kind in kinds:
            limit = rules.limit(kind)
            if limit is not None:
                self.limits[kind] = limit

    def violation(self, left: dict[str, int], right: dict[str, int]) -> str | None:
        """The kind whose cap joining these two would exceed, if any."""
        for kind, limit in self.limits.items():
            if left.get(kind, 0) + right.get(kind, 0) > limit:
                return kind
        return None

    def rule(self, kind: str) -> str:
        """The cap on `kind` in words, for the log."""
        limit = self.limits[kind]
        if kind == USER_ID and limit == 1:
            return "a profile has at most one user id"
        return f"a profile has at most {limit} {kind}"


def decide(nodes: dict[int, Node], links: Iterable[Link], caps: Caps) -> list[list[Node]]:
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
        if a == b or caps.violation(kinds[a], kinds[b]) is not None:
            continue
        parent[b] = a
        for kind, count in kinds.pop(b).items():
            kinds[a][kind] = kinds[a].get(kind, 0) + count
    groups: dict[int, list[Node]] = {}
    for node_id, node in nodes.items():
        groups.setdefault(find(node_id), []).append(node)
    return list(groups.values())
