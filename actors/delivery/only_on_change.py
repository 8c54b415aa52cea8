"""Only on change: which of a destination's payloads are queued, decided in one pure
function, so that a storage backend only reads and writes what it is told.

What it means to a user. A profile is sent to a destination when its payload differs
from what was sent: a payload equal to the one staged last is never queued again,
whether it is queued, held, sent or dead-lettered. A newer payload replaces an unsent
one, so a profile changed five times before its turn goes out once, newest. A change
back to what the destination already acknowledged is not sent, unless a different
payload is still queued: that one may already be on its way, and the destination must
not be left holding it, so the queued row is made this payload again (sent once more,
harmlessly). A profile the filter refuses has its queued row dropped (one in flight
still arrives). A full resync (`force`) queues every payload, even one the destination
holds.

Two hashes per destination and profile are all it reads (OutboxStore.delivery_states):
`staged`, the last one decided here (FILTERED for a refusal), and `acked`, the last one
the destination acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from typing import Final

from storage.outbox import StagingDecision

FILTERED: Final = 0
"""The staged hash of a profile the destination's filter refused (a payload's hash is
never 0: actors/delivery/payload.py)."""

Row = tuple[int, str, bytes | None, int]
"""(profile row, profile id, payload or None if the filter refused it, its hash)."""

_NEVER: Final[tuple[None, None]] = (None, None)


def decide(
    rows: Iterable[Row],
    states: Mapping[int, tuple[int | None, int | None]],
    queued: Callable[[list[int]], Container[int]],
    force: bool = False,
) -> StagingDecision:
    """What to write for `rows` given each profile's (acked, staged) hashes in `states`
    (none: never staged). `queued` says which of the profiles it is given have a row
    queued: it is asked only about those whose payload went back to what the destination
    acknowledged, and not at all when none did, the common case."""
    decision = StagingDecision()
    dropped, queue, staged_now = decision.dropped, decision.queued, decision.staged
    back: list[tuple[int, str, bytes, int]] = []
    for profile, uid, payload, digest in rows:
        acked, staged = states.get(profile, _NEVER)
        if payload is None:
            if staged is not None and staged != FILTERED:
                dropped.append(profile)
                staged_now.append((profile, FILTERED))
            continue
        if force:
            queue.append((profile, uid, payload, digest))
            staged_now.append((profile, digest))
            continue
        if digest == staged:
            continue  # queued, held, sent or dead-lettered already: nothing new
        staged_now.append((profile, digest))
        (back if digest == acked else queue).append((profile, uid, payload, digest))
    if back:
        here = queued([row[0] for row in back])
        queue.extend(row for row in back if row[0] in here)
    return decision
