"""`leadsync identity rebuild`: the graph recomputed from the whole event log.

After a rule change the graph reflects the old rules for every event already applied.
Rebuilding replays the log into a scratch database beside the real one and swaps the
result in with one transaction (actors/identity/swap.py). It is safe while the daemon
runs: the identity actor notices the new checkpoint at its next batch (StaleCheckpoint)
and reads on from there, and lookups see the old graph until the swap, the new one after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass

from actors.identity import isolate
from actors.identity.extract import Extractor
from actors.identity.pipeline import Graph
from actors.identity.settings import IdentitySection
from actors.identity.swap import swap_in
from storage.backend import Backend


@dataclass(frozen=True)
class RebuildReport:
    events: int
    profiles_before: int
    profiles_after: int
    merges: int
    links_dropped: int
    seconds: float


def rebuild(
    backend: Backend,
    rules: IdentitySection,
    progress: Callable[[int, int], None] = lambda done, total: None,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> RebuildReport:
    """`gate` is held for the swap (the daemon's write gate, when it runs this).
    Raises RebuildRunning while another rebuild or a forget runs."""
    started = time.monotonic()
    with backend.exclusive(), closing(backend.session()) as db, backend.scratch() as work:
        before = db.scores.profile_count()
        total = db.log.head()
        graph = Graph(work.graph, rules, Extractor(rules))
        done = merges = dropped = 0
        # To the log's head as it is when each batch is read: events logged while
        # rebuilding are included, and the swap's checkpoint says where it stopped. An
        # event the merger fails on is held in the scratch database, and the swap brings
        # the merger's held events over with the graph.
        # Closed before `work` is, should `progress` cancel: a commit in flight ends first.
        applied = isolate.apply_resilient(
            graph, work.held, isolate.attempts(), db.log, 0, rules.batch_size, math.inf
        )
        with closing(applied) as results:
            for result in results:
                merges += result.merges
                dropped += sum(result.dropped.values())
                done = result.checkpoint
                progress(done, max(total, done))
        with gate():
            swap_in(db, work, done)
        return RebuildReport(
            events=done,
            profiles_before=before,
            profiles_after=db.scores.profile_count(),
            merges=merges,
            links_dropped=dropped,
            seconds=time.monotonic() - started,
        )


class RebuildCancelled(Exception):
    """Raised by a progress callback to abandon a rebuild; nothing is swapped in."""
