"""The scoring work itself, synchronous: the scorer actor runs it in a worker thread,
and `leadsync model check` and bench/scoring.py run it directly.

Three jobs, each a short transaction at a time so ingestion never waits long:
- `fold_events`: follow the event log and fold weighted events into each
  identifier's behavioural aggregate, with the log checkpoint in the same
  transaction (exact after a crash, like every consumer);
- `score_changes`: rescore the fit of profiles whose traits, identities or account
  changed, taking them off the identity actor's durable to-do list as it goes;
- `run_batch`: likelihood, grade and (after a deploy) fit of every profile and account.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from actors.delivery.staging import Prepared, Staging, Subject
from actors.identity.extract import Extractor
from actors.messages import Event
from actors.poison import HELD, Attempts
from actors.scoring.fit import FitScorer, Traits
from actors.scoring.likelihood import Intent, LikelihoodScore, LikelihoodScorer, epoch
from actors.scoring.model import LIKELIHOOD_SEGMENTS, Model
from storage.graph import Change
from storage.held import Held, HeldStore, Withdrawn
from storage.log import StoredEvent
from storage.scores import (
    ACCOUNT,
    Damaged,
    DamagedRow,
    ProfileInBatch,
    ProfileToScore,
    Score,
    ScoreStore,
)
from storage.transaction import transaction

log = structlog.get_logger(__name__)

FOLD_BATCH = 5_000
"""Log events folded per transaction."""
CHANGES_BATCH = 2_000
"""Changed profiles rescored per transaction."""
COMPONENT = "scorer"
"""What the scorer's held items are filed under."""
BATCH_CHUNK = 5_000
"""Profiles scored per transaction in a batch run."""
UNFOLDED_LIMIT = 20_000
"""Events not folded yet read for the new and merged profiles of one round of
changes, at most: their likelihood counts them at once (past it, the rest wait for
the fold and the next batch run)."""

_FIT_REASONS = int(
    Change.IDENTITY | Change.MERGE | Change.TRAITS | Change.ACCOUNT | Change.RECOMPUTED
)
_HOLDINGS = int(Change.IDENTITY | Change.MERGE | Change.RECOMPUTED)
"""Changes to which identifiers a profile holds, and so to its likelihood."""
INTENT_DIGEST = "scoring_intent_digest"
REPLAY_UNTIL = "scoring_replay_until"
SWEPT = "scoring_swept_generation"
_decode_event = msgspec.json.Decoder(Event).decode
_decode_intent = msgspec.json.Decoder(Intent).decode
_encode = msgspec.json.Encoder().encode


class _GraphMoved(Exception):
    """The graph's generation moved while a fold was in hand (see `_fold`)."""


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


@dataclass
class SyncResult:
    profiles: int = 0
    queued: int = 0
    """Payloads put in the outbox."""
    complete: bool = True


class Scorer:
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

    def fold_events(self, up_to: int, limit: int = FOLD_BATCH) -> int:
        """Fold the next events (at most up to log sequence `up_to`); returns how many
        were read, 0 when caught up."""
        self.attempts.begin()
        generation = self.store.generation()
        after = self.store.checkpoint()
        events = self.store.read_events(after, min(limit, up_to - after))
        if not events:
            return 0
        weighed: list[_Weighed] = []
        for stored in events:
            key = str(stored.seq)
            item = self.attempts.run("event", key, self._weigh, stored, body=stored.body)
            if item is not None and item is not HELD:
                weighed.append(item)
        try:
            self._fold(weighed, checkpoint=events[-1].seq, generation=generation)
        except _GraphMoved:
            return 0  # read again next round, without what a forget erased
        return len(events)

    def retry_held(self, limit: int = FOLD_BATCH) -> int:
        """Fold again the held events whose retry was asked for (`leadsync held retry`),
        releasing those that fold now; returns how many were tried."""
        if self.held is None:
            return 0
        self.attempts.begin()
        if self.replaying():
            return 0  # the replay reads them from the log; a retry now would fold twice
        items = self.held.to_retry(COMPONENT, "event", limit)
        if not items:
            return 0
        weighed: list[_Weighed] = []
        released: list[Held] = []
        for item in items:
            stored = StoredEvent(int(item.key), "", item.body or b"")
            outcome = self.attempts.run("event", item.key, self._weigh, stored, body=item.body)
            if outcome is HELD:
                continue  # held again: its retry flag is cleared with the new error
            released.append(item)
            if outcome is not None:
                weighed.append(outcome)
        try:
            self._fold(weighed, release=released)
        except Withdrawn as exc:
            log.info("held events not folded: they changed meanwhile", error=str(exc))
            return 0
        log.info("held events folded again", tried=len(items), released=len(released))
        return len(items)

    def _weigh(self, stored: StoredEvent) -> _Weighed | None:
        """What one event adds to its home identifier's aggregate, if anything."""
        event = _decode_event(stored.body)
        weight = self.likelihood.weigh(event)
        if weight is None:
            return None
        identifiers = self.extractor.identifiers(event)
        at, received = epoch(event.timestamp), epoch(event.received_at)
        if not identifiers or at is None or received is None:
            return None
        home = identifiers[0]
        # A client clock years ahead (no sentAt to correct it by) must not park an
        # aggregate in the future, where it would outweigh every real event.
        return (home.kind, home.value), weight[0], weight[1], min(at, received)

    def _fold(
        self,
        weighed: list[_Weighed],
        checkpoint: int | None = None,
        release: Sequence[Held] = (),
        generation: int | None = None,
    ) -> None:
        """Add weighed events to their aggregates, and commit them with the checkpoint
        (or, for held events applied at last, with their release)."""
        half_life = self.likelihood.half_life
        stored_states = self.store.intents([key for key, *_ in weighed])
        states: dict[tuple[str, str], Intent] = {
            key: _decode_intent(state) for key, state in stored_states.items()
        }
        for key, points, signal, at in weighed:
            intent = states.get(key)
            if intent is None:
                intent = states[key] = Intent(at, {})
            intent.add(points, signal, at, half_life)
        # Only this scorer writes aggregates, so what was read above is still current.
        with self.transaction():
            if generation is not None and self.store.generation() != generation:
                # A forget (or a rebuild) committed since the events were read: what
                # was read may be erased, so nothing of it is written.
                raise _GraphMoved
            self.store.save_intents(
                {key: (intent.as_of, _encode(intent)) for key, intent in states.items()}
            )
            if checkpoint is not None:
                self.store.set_checkpoint(checkpoint)
            if release and self.held is not None:
                self.held.release(release)

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
        accounts = {p.account: _given(p.account_traits) for p in profiles if p.account in groups}
        account_scores = self._accounts_fit(accounts, now)
        prepared = Staging.prepare(
            (
                Subject(p.row, p.uid, scores[p.row], subjects[p.row][1], _given(p.traits))
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
        score = _copy(current)
        self._set_fit(score, Traits({}, traits), now)
        return score

    def _with_fit(self, profile: ProfileToScore, now: float) -> Score:
        score = _copy(profile.score)
        self._set_fit(score, Traits(_given(profile.traits), _given(profile.account_traits)), now)
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
            prepared = Staging.prepare(_subjects(subjects, scores, scores), [route], self.attempts)
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
        prepared = Staging.prepare(_subjects(subjects, scores, refits), every, self.attempts)
        changed = Staging.prepare(_subjects(subjects, scores, likelihoods), batch, self.attempts)
        for name, staged in changed.items():
            prepared[name] += staged
        return prepared

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
        score = _copy(old)
        if old is None or old.fit_model != self.model.version:
            self._set_fit(score, Traits({}, traits), now)
        self._set_likelihood(score, points, now)
        return score


_Weighed = tuple[tuple[str, str], float, str, float]
"""An event's home identifier (kind, value), its points, signal and time."""


def _subjects(
    read: dict[int, tuple[str, dict[str, str], dict[str, Any]]],
    scores: Mapping[int, Score],
    rows: Container[int],
) -> Iterator[Subject]:
    """Staging's view of the profiles read (`OutboxStore.subjects`) that are in `rows`
    and have a score."""
    for row, (uid, addresses, traits) in read.items():
        if row in rows and row in scores:
            yield Subject(row, uid, scores[row], addresses, traits)


def _given(traits: dict[str, Any] | None) -> dict[str, Any]:
    """Traits read, or none: not `traits or {}`, which would turn an empty Damaged
    (a row that cannot be read) into no traits at all, scored as if fine."""
    return {} if traits is None else traits


def _copy(score: Score | None) -> Score:
    """A stored score to change (the stored one stays for comparing), or a new one."""
    return msgspec.structs.replace(score) if score else Score()
