"""A batch run: likelihood, grade and (after a deploy) fit of every profile and
account, a chunk a transaction, changes rescored and the log followed between chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.delivery.staging import Prepared, Staging
from actors.poison import HELD
from actors.scoring.changes import Rescoring
from actors.scoring.fit import Traits
from actors.scoring.likelihood import LikelihoodScore
from actors.scoring.work import copied, subjects_in
from storage.scores import ACCOUNT, ProfileInBatch, Score

BATCH_CHUNK = 5_000
"""Profiles scored per transaction in a batch run."""
SWEPT = "scoring_swept_generation"
_encode = msgspec.json.Encoder().encode


@dataclass
class BatchRunResult:
    """What one batch run (`run_batch`) scored, for the metrics, the log and /status."""

    profiles: int = 0
    accounts: int = 0
    changed: int = 0
    """Subjects whose stored scores changed."""
    fit_rescored: int = 0
    """Profiles whose fit was made by an older model version."""
    seconds: float = 0.0
    complete: bool = True
    """False when the run stopped early (the daemon stopping, a rebuild swapped in)."""
    staged: int = 0
    """Outbox rows written for destinations."""
    released: int = 0
    """Outbox rows held for the end of the run, now due."""


class BatchRun(Rescoring):
    """`run_batch`, and the accounts' scores it ends with."""

    def run_batch(
        self,
        chunk: int = BATCH_CHUNK,
        stop: Callable[[], bool] = lambda: False,
        between: Callable[[int, int], None] = lambda checkpoint, profiles: None,
    ) -> BatchRunResult:
        """Score every profile's likelihood and grade (and fit, where an older model
        made it), then every account's.

        Chunked, each chunk read in one snapshot and written in one short transaction;
        between chunks, changed profiles are rescored and the log is followed, so fit
        stays realtime and the backlog does not grow through a long run. `stop` ends
        the run early, as does a rebuild swapping the graph in (profile row ids change);
        the next run does everything again anyway. `between` hears the log checkpoint
        and the profiles scored so far after each chunk.
        """
        self.attempts.begin()
        started = time.perf_counter()
        now = self.clock()
        result = BatchRunResult()
        generation = self.store.generation()
        version = self.model.version
        members: dict[str, dict[str, float]] = {}
        after = 0
        while True:
            with self.store.snapshot():
                profiles = self.store.profiles_after(after, chunk, version)
            if not profiles:
                break
            refits: dict[int, Score] = {}
            likelihoods: list[tuple[Any, ...]] = []
            new_likelihoods: dict[int, tuple[LikelihoodScore, str]] = {}
            for profile in profiles:
                scored = self.attempts.run("profile", profile.uid, self._in_batch, profile, now)
                if scored is HELD:
                    continue
                points, score, ltb, grade = scored
                if profile.account:
                    total = members.setdefault(profile.account, {})
                    for name, value in points.items():
                        total[name] = total.get(name, 0.0) + value
                if score is not None:
                    refits[profile.row] = score
                    continue
                assert ltb is not None
                stored = (ltb.score, ltb.segment, _encode(ltb.signals), version, grade)
                if stored != profile.likelihood:
                    likelihoods.append((*stored[:4], now, grade, profile.row))
                    new_likelihoods[profile.row] = (ltb, grade)
            result.fit_rescored += len(refits)
            prepared = self._prepare_batch(refits, new_likelihoods, now)
            with self.transaction():
                swapped = self.store.generation() != generation
                if not swapped:
                    self.store.save_profile_scores(refits)
                    self.store.save_likelihoods(likelihoods)
                    if self.staging:
                        result.staged += self.staging.stage(prepared, now, batch=True)
            if swapped or stop():
                result.complete = False
                break
            result.profiles += len(profiles)
            result.changed += len(refits) + len(likelihoods)
            after = profiles[-1].row
            self.score_changes()
            self.fold_events(self.store.log_head())
            between(self.store.checkpoint(), result.profiles)
        if result.complete:
            result.accounts, changed = self._batch_accounts(members, now, chunk)
            result.changed += changed
            with self.transaction():
                if self.store.meta(SWEPT) != str(generation):
                    self.store.forget_gone()
                    self.store.set_meta(SWEPT, str(generation))
                self.store.forget_intents(now - self.likelihood.lookback)
            if self.staging:
                # Delivery states of profiles merged away: found by a scan outside the
                # write lock, forgotten a chunk a transaction.
                gone = self.staging.store.gone()
                for start in range(0, len(gone), chunk):
                    with self.transaction():
                        if self.store.generation() != generation:
                            break  # a rebuild renumbered the rows: those are others now
                        self.staging.store.forget(gone[start : start + chunk])
        if self.staging:
            # Even after a run cut short: what it staged is the newest there is.
            with self.transaction():
                result.released = self.staging.end_run(self.clock())
        result.seconds = time.perf_counter() - started
        return result

    def _in_batch(
        self, profile: ProfileInBatch, now: float
    ) -> tuple[dict[str, float], Score | None, LikelihoodScore | None, str]:
        """One profile in a batch run: its signals' points now, and either a whole new
        score (none yet, or one an older model made) or its likelihood and grade."""
        points = self._points(profile.intents, now)
        if profile.refit is not None:
            score = self._with_fit(profile.refit, now)
            self._set_likelihood(score, points, now)
            return points, score, None, score.grade or ""
        ltb = self.likelihood.score(points)
        return points, None, ltb, self._grade(profile.fit_segment, ltb.segment)

    def _prepare_batch(
        self,
        refits: dict[int, Score],
        likelihoods: dict[int, tuple[LikelihoodScore, str]],
        now: float,
    ) -> Prepared:
        """Payloads for the profiles whose scores this chunk changes, read and built
        before the chunk's transaction."""
        if self.staging is None:
            return {}
        # A new fit (after a deploy) goes to every destination, realtime ones too; a
        # new likelihood only to those that take batch runs.
        every, batch = self.staging.wanted(batch=False), self.staging.wanted(batch=True)
        if not batch:
            likelihoods = {}
        if not (refits or likelihoods):
            return {}
        rows = [*refits, *likelihoods]
        with self.store.snapshot():
            subjects = self.staging.store.subjects(rows, self.staging.needs_traits(every))
            scores = {**self.store.scores_by_row(list(likelihoods)), **refits}
        for row, (ltb, grade) in likelihoods.items():
            if (score := scores.get(row)) is not None:
                score.ltb_score, score.ltb_segment, score.ltb_signals = (
                    ltb.score,
                    ltb.segment,
                    ltb.signals,
                )
                score.ltb_model, score.ltb_at, score.grade = self.model.version, now, grade
        prepared = Staging.prepare(subjects_in(subjects, scores, refits), every, self.attempts)
        changed = Staging.prepare(subjects_in(subjects, scores, likelihoods), batch, self.attempts)
        for name, staged in changed.items():
            prepared[name] += staged
        return prepared

    def _batch_accounts(
        self, members: dict[str, dict[str, float]], now: float, chunk: int
    ) -> tuple[int, int]:
        """An account's fit from its own traits; its likelihood from all its members."""
        count = changed = 0
        after = ""
        while accounts := self.store.accounts_after(after, chunk):
            current = self.store.scores(ACCOUNT, [group for group, _ in accounts])
            updated: dict[str, Score] = {}
            for group_id, traits in accounts:
                old = current.get(group_id)
                points = members.get(group_id, {})
                score = self.attempts.run(
                    "account", group_id, self._account_in_batch, old, traits, points, now
                )
                if score is not HELD and score != old:
                    updated[group_id] = score
            with self.transaction():
                self.store.save_account_scores(updated)
            count += len(accounts)
            changed += len(updated)
            after = accounts[-1][0]
        return count, changed

    def _account_in_batch(
        self, old: Score | None, traits: dict[str, Any], points: dict[str, float], now: float
    ) -> Score:
        """An account's fit from its own traits (where an older model made it), its
        likelihood from its members' points."""
        score = copied(old)
        if old is None or old.fit_model != self.model.version:
            self._set_fit(score, Traits({}, traits), now)
        self._set_likelihood(score, points, now)
        return score
