"""The scoring work itself, synchronous: the scorer actor runs it in a worker thread,
and `leadsync model check` and bench/scoring.py run it directly.

Three jobs, each a short transaction at a time so ingestion never waits long:
- `fold_events` (actors/scoring/fold.py): follow the event log and fold weighted
  events into each identifier's behavioural aggregate, with the log checkpoint in
  the same transaction (exact after a crash, like every consumer);
- `score_changes` (changes.py): rescore the fit of profiles whose traits, identities
  or account changed, taking them off the identity actor's durable to-do list as it
  goes;
- `run_batch` (batch.py): likelihood, grade and (after a deploy) fit of every
  profile and account.

What they share (the stores, the model, the transaction, one score's arithmetic) is
in work.py; `Scorer` adds what destinations ask for: a resend, rows released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actors.delivery.staging import Staging
from actors.scoring.batch import BATCH_CHUNK, BatchRun
from actors.scoring.work import subjects_in


@dataclass
class SyncResult:
    profiles: int = 0
    queued: int = 0
    """Payloads put in the outbox."""
    complete: bool = True


class Scorer(BatchRun):
    """Every scoring job in one object (what the scorer actor and bench/scoring.py
    hold), and what destinations ask of it: rows released, a resend."""

    def release(self, routes: Sequence[str], chunk: int = BATCH_CHUNK) -> int:
        """Make the held rows of `routes` due now, a chunk a transaction (for
        destinations made realtime, which no batch run releases)."""
        assert self.staging is not None
        released, total = chunk, 0
        while released >= chunk:
            with self.transaction():
                released = self.staging.release(routes, self.clock(), chunk)
            total += released
        return total

    def sync(
        self,
        destination: str,
        full: bool,
        chunk: int = BATCH_CHUNK,
        stop: Callable[[], bool] = lambda: False,
    ) -> SyncResult:
        """Stage every scored profile's current payload for one destination, due now
        (with `full`, even what the destination already acknowledged: a resend after
        its data was lost). Between chunks, changed profiles are rescored as usual."""
        assert self.staging is not None
        self.attempts.begin()
        route = self.staging.routes[destination]
        result = SyncResult()
        generation = self.store.generation()
        after = 0
        while True:
            with self.store.snapshot():
                scores = self.store.scores_after(after, chunk)
                subjects = self.staging.store.subjects(list(scores), route.needs_traits)
            if not scores:
                break
            prepared = Staging.prepare(
                subjects_in(subjects, scores, scores), [route], self.attempts
            )
            now = self.clock()
            with self.transaction():
                if self.store.generation() != generation:
                    result.complete = False  # a rebuild renumbered the rows: run it again
                    break
                result.queued += self.staging.sync(destination, prepared[destination], now, full)
            result.profiles += len(scores)
            after = max(scores)
            if stop():
                result.complete = False
                break
            self.score_changes()
        return result
