"""What every scoring job works with (actors/scoring/fold.py, changes.py, batch.py):
the stores, the model in use (and the log read again when its event weights change),
the write transaction that also sets aside held items and rings destinations' bells;
and one score's fit, likelihood and grade, set the same way by each job.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import msgspec
import structlog

from actors.delivery.staging import Staging, Subject
from actors.identity.extract import Extractor
from actors.poison import Attempts
from actors.scoring.fit import FitScorer, Traits
from actors.scoring.likelihood import Intent, LikelihoodScorer
from actors.scoring.model import LIKELIHOOD_SEGMENTS, Model
from storage.held import HeldStore
from storage.scores import Damaged, DamagedRow, ProfileToScore, Score, ScoreStore
from storage.transaction import transaction

log = structlog.get_logger(__name__)

COMPONENT = "scorer"
"""What the scorer's held items are filed under."""
INTENT_DIGEST = "scoring_intent_digest"
REPLAY_UNTIL = "scoring_replay_until"
_decode_intent = msgspec.json.Decoder(Intent).decode


class ScoringWork:
    """The scorer's state and one score's arithmetic; the jobs are subclasses
    (Fold <- Rescoring <- BatchRun <- Scorer), so the hot paths look up what they
    share on `self`, as when they were one class."""

    def __init__(
        self,
        store: ScoreStore,
        model: Model,
        extractor: Extractor,
        source_kinds: dict[str, str],
        clock: Callable[[], float] = time.time,
        gate: Callable[[], AbstractContextManager[None]] = nullcontext,
        staging: Staging | None = None,
        held: HeldStore | None = None,
    ) -> None:
        self.store = store
        self.held = held
        """Where events, profiles and accounts that fail every attempt are set aside;
        None: they are only logged (model check, benches)."""
        self.attempts = Attempts(COMPONENT)
        self.staging = staging
        """Where changed scores go on to destinations; None: nowhere (model check)."""
        self.extractor = extractor
        self.source_kinds = source_kinds
        self.clock = clock
        self.gate = gate
        self.model = model
        self.fit = FitScorer(model)
        self.likelihood = LikelihoodScorer(model, source_kinds)
        self.replay_until = 0
        """The log head when the aggregates were last reset (kept in meta for restarts)."""
        self.on_staged: Callable[[set[str]], None] = lambda destinations: None
        """Told, after each commit that gave destinations rows due now, which ones: the
        scorer actor rings their bells, so they need not wait for their next look."""

    def use(self, model: Model) -> bool:
        """Score with `model` from now on. If the aggregates were built with other event
        weights, half-life, lookback or source kinds, they are rebuilt from the whole
        log, and this returns True."""
        self.model = model
        self.fit = FitScorer(model)
        self.likelihood = LikelihoodScorer(model, self.source_kinds)
        digest = hashlib.sha256(
            msgspec.json.encode([model.likelihood_digest, sorted(self.source_kinds.items())])
        ).hexdigest()
        if self.store.meta(INTENT_DIGEST) == digest:
            self.replay_until = int(self.store.meta(REPLAY_UNTIL) or 0)
            return False
        with self.transaction():
            self.replay_until = self.store.reset_intents()
            if self.held is not None:
                # The replay folds them again, or holds again those that still fail.
                self.held.drop(None, COMPONENT, "event")
            self.store.set_meta(INTENT_DIGEST, digest)
            self.store.set_meta(REPLAY_UNTIL, str(self.replay_until))
        log.info(
            "event weights changed; reading the log again",
            model=model.version,
            until=self.replay_until,
        )
        return True

    def replaying(self) -> bool:
        """Still reading the log again after `use` reset the aggregates."""
        return self.store.checkpoint() < self.replay_until

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction, which also sets aside the items that failed every
        attempt since the last one (with the work that skipped them)."""
        held = self.attempts.take()
        due: set[str] = set()
        with transaction(self.store, self.gate):
            if self.staging is not None:
                self.staging.take_due()  # noted by a transaction rolled back: not due
            if held and self.held is not None:
                self.held.hold(held, self.clock())
            yield
            if self.staging is not None:
                due = self.staging.take_due()
        if held:
            self.attempts.on_held(held)
        if due:
            self.on_staged(due)

    def _with_fit(self, profile: ProfileToScore, now: float) -> Score:
        score = copied(profile.score)
        self._set_fit(score, Traits(given(profile.traits), given(profile.account_traits)), now)
        return score

    def _set_fit(self, score: Score, traits: Traits, now: float) -> None:
        for read in traits:
            if isinstance(read, Damaged):
                raise DamagedRow(read.reason)
        fit = self.fit.score(traits)
        score.fit_score, score.fit_segment, score.fit_signals = fit.score, fit.segment, fit.signals
        score.inputs = fit.inputs
        score.fit_model, score.fit_at = self.model.version, now
        score.grade = self.grade(score)

    def grade(self, score: Score) -> str:
        return self._grade(score.fit_segment, score.ltb_segment)

    def _grade(self, fit_segment: str | None, likelihood_segment: str | None) -> str:
        row = self.model.spec.grade[fit_segment or "low"]
        return row[LIKELIHOOD_SEGMENTS.index(likelihood_segment or "low")]

    def _points(
        self, intents: Iterable[bytes], now: float, unfolded: Iterable[Intent] = ()
    ) -> dict[str, float]:
        """Each signal's points at `now`, over a profile's identifiers' aggregates (and
        any events of theirs not folded yet)."""
        return self.likelihood.now_points(
            itertools.chain(map(_decode_intent, intents), unfolded), now
        )

    def _set_likelihood(self, score: Score, points: dict[str, float], now: float) -> None:
        ltb = self.likelihood.score(points)
        if (score.ltb_score, score.ltb_segment, score.ltb_signals, score.ltb_model) != (
            ltb.score,
            ltb.segment,
            ltb.signals,
            self.model.version,
        ):
            score.ltb_score, score.ltb_segment = ltb.score, ltb.segment
            score.ltb_signals, score.ltb_model, score.ltb_at = ltb.signals, self.model.version, now
        score.grade = self.grade(score)


def subjects_in(
    read: dict[int, tuple[str, dict[str, str], dict[str, Any]]],
    scores: Mapping[int, Score],
    rows: Container[int],
) -> Iterator[Subject]:
    """Staging's view of the profiles read (`OutboxStore.subjects`) that are in `rows`
    and have a score."""
    for row, (uid, addresses, traits) in read.items():
        if row in rows and row in scores:
            yield Subject(row, uid, scores[row], addresses, traits)


def given(traits: dict[str, Any] | None) -> dict[str, Any]:
    """Traits read, or none: not `traits or {}`, which would turn an empty Damaged
    (a row that cannot be read) into no traits at all, scored as if fine."""
    return {} if traits is None else traits


def copied(score: Score | None) -> Score:
    """A stored score to change (the stored one stays for comparing), or a new one."""
    return msgspec.structs.replace(score) if score else Score()
