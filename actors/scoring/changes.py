"""Rescoring changed profiles: the fit of profiles whose traits, identities or account
changed (and likelihood where the identifiers they hold changed), taken off the
identity actor's durable to-do list as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.delivery.staging import Staging, Subject
from actors.poison import HELD
from actors.scoring.fit import Traits
from actors.scoring.fold import Fold
from actors.scoring.likelihood import Intent
from actors.scoring.work import COMPONENT, copied, given
from storage.graph import Change
from storage.log import StoredEvent
from storage.scores import ACCOUNT, ProfileToScore, Score

CHANGES_BATCH = 2_000
"""Changed profiles rescored per transaction."""
UNFOLDED_LIMIT = 20_000
"""Events not folded yet read for the new and merged profiles of one round of
changes, at most: their likelihood counts them at once (past it, the rest wait for
the fold and the next batch run)."""

_FIT_REASONS = int(
    Change.IDENTITY | Change.MERGE | Change.TRAITS | Change.ACCOUNT | Change.RECOMPUTED
)
_HOLDINGS = int(Change.IDENTITY | Change.MERGE | Change.RECOMPUTED)
"""Changes to which identifiers a profile holds, and so to its likelihood."""


class Rescoring(Fold):
    """`score_changes`: realtime fit (the fold's weighing counts events not folded yet)."""

    def score_changes(self, limit: int = CHANGES_BATCH) -> int:
        """Rescore changed profiles; returns how many changes (rows of the to-do list,
        one per profile a merger batch changed) were taken off it.

        Fit for every profile whose traits, identities or account changed, and for the
        other members of an account whose traits changed. Likelihood too where the
        identifiers a profile holds changed (a merge, a split, a new profile id), so
        its grade does not wait hours for the batch run.
        """
        self.attempts.begin()
        generation = self.store.generation()
        with self.store.snapshot():
            changes = self.store.changes(limit)
            if not changes:
                return 0
            reasons: dict[str, int] = {}
            for _, uid, flags in changes:
                reasons[uid] = reasons.get(uid, 0) | flags
            profiles = self.store.profiles_by_uid(
                [uid for uid, flags in reasons.items() if flags & _FIT_REASONS]
            )
            # The account's traits changed: every member's fit may read them.
            groups = {p.account for p in profiles if p.account and reasons[p.uid] & Change.ACCOUNT}
            others = [uid for uid in self.store.members(sorted(groups)) if uid not in reasons]
            for uid in others:
                reasons[uid] = int(Change.ACCOUNT)
            profiles += self.store.profiles_by_uid(others)
            # What the merger applied for them that the fold has not reached: their
            # likelihood counts it now, not at the next batch run (hours away).
            fresh = [p.row for p in profiles if self._needs_likelihood(p, reasons[p.uid])]
            tails = (
                self.store.unfolded(fresh, self.store.checkpoint(), UNFOLDED_LIMIT)
                if fresh and not self.replaying()
                else {}
            )
            routes = self.staging.wanted(batch=False) if self.staging else []
            subjects = (
                self.staging.store.subjects([p.row for p in profiles], with_traits=False)
                if self.staging and routes
                else {}
            )
        now = self.clock()
        scores: dict[int, Score] = {}
        for profile in profiles:
            flags, tail = reasons[profile.uid], tails.get(profile.row, [])
            score = self.attempts.run(
                "profile", profile.uid, self._rescore, profile, flags, now, tail
            )
            if score is not HELD:
                scores[profile.row] = score
        accounts = {p.account: given(p.account_traits) for p in profiles if p.account in groups}
        account_scores = self._accounts_fit(accounts, now)
        prepared = Staging.prepare(
            (
                Subject(p.row, p.uid, scores[p.row], subjects[p.row][1], given(p.traits))
                for p in profiles
                if p.row in subjects and p.row in scores
            ),
            routes,
            self.attempts,
        )
        held_now = {item.key for item in self.attempts.pending if item.kind == "profile"}
        fine = [p.uid for p in profiles if p.row in scores and p.uid not in held_now]
        with self.transaction():
            if self.store.generation() != generation:
                return 0  # a rebuild swapped in: what was read belongs to the old graph
            # Profiles merged away took their scores with them (delete_profiles).
            self.store.save_profile_scores(scores)
            self.store.save_account_scores(account_scores)
            if self.staging:
                self.staging.stage(prepared, now, batch=False)
            # A profile the identity actor changed again since the read has a row of
            # its own for that (see clear_changes), and is rescored next time round.
            self.store.clear_changes([row for row, _, _ in changes])
            if self.held is not None and self.held.holds(COMPONENT, "profile"):
                # Held by a batch run, say, and scored now: no longer held.
                self.held.release_keys(COMPONENT, "profile", fine)
        return len(changes)

    def _rescore(
        self, profile: ProfileToScore, flags: int, now: float, tail: Sequence[StoredEvent]
    ) -> Score:
        """A changed profile's new score: fit, and likelihood where the identifiers it
        holds changed (or it has none yet), counting `tail`, its events not folded yet."""
        score = self._with_fit(profile, now)
        if self._needs_likelihood(profile, flags):
            points = self._points(profile.intents, now, self._unfolded(tail))
            self._set_likelihood(score, points, now)
        return score

    @staticmethod
    def _needs_likelihood(profile: ProfileToScore, flags: int) -> bool:
        return bool(flags & _HOLDINGS) or profile.score is None or profile.score.ltb_model is None

    def _unfolded(self, tail: Sequence[StoredEvent]) -> list[Intent]:
        """Each weighted event of `tail` as an aggregate of its own: decay is linear,
        so adding them up is the same as folding them in."""
        intents = []
        for stored in tail:
            try:
                weighed = self._weigh(stored)
            except Exception:  # the fold holds it, with its reason, when it gets there
                continue
            if weighed is not None:
                _, points, signal, at = weighed
                intents.append(Intent(at, {signal: points}))
        return intents

    def _accounts_fit(self, accounts: dict[str, dict[str, Any]], now: float) -> dict[str, Score]:
        current = self.store.scores(ACCOUNT, list(accounts))
        updated: dict[str, Score] = {}
        for group_id, traits in accounts.items():
            score = self.attempts.run(
                "account", group_id, self._account_fit, current.get(group_id), traits, now
            )
            if score is not HELD:
                updated[group_id] = score
        return updated

    def _account_fit(self, current: Score | None, traits: dict[str, Any], now: float) -> Score:
        score = copied(current)
        self._set_fit(score, Traits({}, traits), now)
        return score
