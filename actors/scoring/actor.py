"""The scorer actor: Customer Fit within a second of a change, Likelihood to Buy on a
schedule, and whichever model was deployed last.

Its inbox carries hints (`ProfileChanged`: look at the to-do list now) and requests
(`RunBatch`). Neither is the truth: the identity actor's `profile_changes` table and
the log are, so a hint dropped from a full inbox, or lost in a crash, costs a
second of latency and nothing else. The work itself is synchronous SQLite and
arithmetic, done in a worker thread (actors/scoring/scorer.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict
from types import MappingProxyType
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec
import structlog

from actors.delivery.doorbell import Doorbell
from actors.delivery.kinds import DestinationSettings
from actors.delivery.staging import Staging, fingerprint
from actors.identity.extract import Extractor
from actors.identity.settings import IdentitySection
from actors.log_consumer import LogConsumer, Round
from actors.messages import (
    ProfileChanged,
    RunBatch,
    ScorerMessage,
    SyncDestination,
    UseDestinations,
)
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox, held_from_thread
from actors.scoring import deploy
from actors.scoring.batch import BatchRunResult
from actors.scoring.changes import CHANGES_BATCH
from actors.scoring.fold import FOLD_BATCH
from actors.scoring.model import ModelError, parse
from actors.scoring.scorer import Scorer
from actors.scoring.settings import ScoringSection
from actors.scoring.work import COMPONENT
from storage.backend import Backend
from storage.held import HeldItem
from storage.scores import SCORER_CONSUMER
from storage.session import Session

log = structlog.get_logger(__name__)

IDLE_WAKE = 1.0
"""Seconds between looks at the to-do list when no hint comes (a dropped hint, a
deploy made by the CLI)."""
ROUND_INTERVAL = 0.05
"""Seconds between rounds of work while there is more to do."""
FOLD_INTERVAL = 1.0
"""Seconds between folds of the log while less than a fold's worth is waiting: the
aggregates are read by batch runs only, so they need not follow every commit."""
INGESTION_BUSY = 0.5
"""Share of the time the log writer spends committing above which ingestion is taken
to run near its capacity. The fold then waits, and a scheduled batch run (which folds
first) with it: the fold costs about as much interpreter time an event as parsing it,
only batch runs read what it makes, and ingestion answers clients. They wait until
ingestion eases, for FOLD_WAIT_LIMIT at most, and never past half the backlog bound
(so the wait never makes the HTTP source refuse events); a run someone asked for
(`leadsync scoring run`) does not wait."""
FOLD_WAIT_LIMIT = 10.0
"""Seconds the fold gives way to ingestion at most, counted from when it was last
caught up: a burst is taken at full speed, and under a load that never eases the fold
still keeps within seconds of the log, not half the backlog bound behind."""
BUSY_WINDOW = 1.0
"""Seconds over which the log writer's busy share is measured."""
LAST_BATCH = "scoring_last_batch"


class BatchProgress(msgspec.Struct, frozen=True):
    """A batch run under way."""

    profiles: int
    """Scored so far."""
    of: int
    """How many there are."""


class ScoringStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What /status shows about scoring at one moment (`ScorerActor.status`)."""

    model: str | None = None
    last_batch_at: float | None = None
    next_batch_at: float | None = None
    last_batch: Mapping[str, float] = msgspec.field(default_factory=lambda: MappingProxyType({}))
    """The last run's BatchRunResult, read-only: counts as ints, seconds as a float."""
    running: BatchProgress | None = None


class _Sized(Protocol):
    @property
    def max_backlog(self) -> int: ...


class _Source(Protocol):
    @property
    def kind(self) -> str: ...


class Config(Protocol):
    """What the scorer reads of the daemon's configuration (daemon.config.Config)."""

    @property
    def http(self) -> _Sized: ...
    @property
    def sources(self) -> Mapping[str, _Source]: ...
    @property
    def identity(self) -> IdentitySection: ...
    @property
    def scoring(self) -> ScoringSection: ...
    @property
    def destinations(self) -> Mapping[str, DestinationSettings]: ...


class ScorerActor(LogConsumer):
    def __init__(
        self,
        backend: Backend,
        config: Config,
        gate: anyio.Semaphore,
        inbox: Mailbox[ScorerMessage],
        progress: LogProgress,
        metrics: Metrics,
        status: ScoringStatus | None = None,
        clock: Callable[[], float] = time.time,
        doorbell: Doorbell | None = None,
    ) -> None:
        """`status`: what to show until this actor knows better (the status the actor
        before it ended with, after a crash). `doorbell`: the destinations' bells, rung
        after each commit that gives them rows due now; without one they find those
        rows at their next look."""
        super().__init__("scorer", SCORER_CONSUMER, progress, metrics, pace=ROUND_INTERVAL)
        self._backend = backend
        self._config = config
        self._gate = gate
        self._inbox = inbox
        self._clock = clock
        self._status = ScoringStatus() if status is None else status
        """Replaced whole, never changed: by the worker thread, one step at a time."""
        self._doorbell = doorbell
        self._requests: list[RunBatch] = []
        self._syncs: list[SyncDestination] = []
        self._reloaded: dict[str, DestinationSettings] | None = None
        self._next_batch = 0.0
        self._next_fold = 0.0
        self._fold_limit = config.http.max_backlog // 2
        self._caught_up_at = time.monotonic()
        """When the fold was last within a fold's worth of the log's head."""
        self._busy_mark = (time.monotonic(), progress.commit_seconds)
        self._busy = 0.0
        self._scorer: Scorer | None = None
        self._refused: str | None = None
        """A deployed version that failed to parse, so it is reported once."""

    def status(self) -> ScoringStatus:
        """What /status shows of scoring now: a snapshot, which the scorer's later
        work leaves as it is."""
        return self._status

    def _show(self, **changes: Any) -> None:
        self._status = msgspec.structs.replace(self._status, **changes)

    async def run(self, ready: Callable[[], None]) -> None:
        session = self._session = self._backend.session()
        try:
            self._scorer = await anyio.to_thread.run_sync(self._start, session)
            self.publish()
            ready()
            await self.follow()
        finally:
            for waiting in [*(r.done for r in self._requests), *(s.done for s in self._syncs)]:
                waiting.set()  # unanswered: the daemon is stopping
            session.close()

    def _start(self, session: Session) -> Scorer:
        store = session.scores
        gate = self._write_gate
        model = deploy.active(store, gate)
        kinds: dict[str, str] = {n: s.kind for n, s in self._config.sources.items()}
        scorer = Scorer(
            store,
            model,
            Extractor(self._config.identity),
            kinds,
            self._clock,
            gate,
            held=session.held,
        )
        scorer.attempts.on_held = self._count_held
        scorer.on_staged = self._ring
        self._use_destinations(scorer, self._config.destinations)
        scorer.use(model)
        self.checkpoint, self.replaying = store.checkpoint(), scorer.replaying()
        last = store.meta(LAST_BATCH)
        self._next_batch = (float(last) if last else 0.0) + self._config.scoring.batch_interval
        self._show(last_batch_at=float(last) if last else None, next_batch_at=self._next_batch)
        self._show_model(model.version)
        log.info("scoring with model", version=model.version)
        return scorer

    def _ring(self, destinations: set[str]) -> None:
        """In the worker thread, after the commit that gave `destinations` rows due."""
        if self._doorbell is not None:
            anyio.from_thread.run_sync(self._doorbell.ring, destinations)

    def _count_held(self, items: list[HeldItem]) -> None:
        self.metrics.poison.labels(COMPONENT).inc(len(items))

    def _use_destinations(
        self, scorer: Scorer, destinations: Mapping[str, DestinationSettings]
    ) -> None:
        """Stage for `destinations` from now on. One that is new, or sends somewhere
        else now, is queued every scored profile; one whose fields or filter changed,
        every profile whose payload changed (once: the fingerprint is kept when done).
        What was queued for a destination no longer configured is deleted, so that
        adding it again starts afresh; rows held for a batch run by a destination now
        realtime are made due."""
        outbox = self._session.outbox
        scorer.staging = Staging(outbox, destinations) if destinations else None
        for dropped in [s for s in self._syncs if s.destination not in destinations]:
            anyio.from_thread.run_sync(dropped.done.set)  # unanswered: it went
        self._syncs = [s for s in self._syncs if s.destination in destinations]
        kept = outbox.fingerprints()
        for name in outbox.destinations() - set(destinations):
            while True:
                with scorer.transaction():
                    if not outbox.drop_some(name, CHANGES_BATCH):
                        break
            log.info("destination no longer configured; its queue is deleted", destination=name)
        if scorer.staging is not None:
            realtime = [n for n, r in scorer.staging.routes.items() if not r.batch]
            if realtime:
                scorer.release(realtime)
        for name, config in destinations.items():
            where, what = fingerprint(config)
            if kept.get(name) == f"{where} {what}":
                continue
            full = name not in kept or kept[name].split()[0] != where
            log.info(
                "destination new or changed; queueing profiles for it",
                destination=name,
                profiles="every scored one" if full else "those whose payload changed",
            )
            self._syncs.append(SyncDestination(name, full, fingerprint=f"{where} {what}"))

    def _write_gate(self) -> AbstractContextManager[None]:
        return held_from_thread(self._gate)

    def closing(self) -> bool:
        return self._inbox.closed

    async def round(self, closing: bool) -> Round:
        """One round of work in the worker thread, with what the inbox brought since
        the last. Asked to stop, the inbox is drained by it, and what is left (changes,
        log events) is on disk for the next start."""
        self._take_messages()
        assert self._scorer is not None
        return await anyio.to_thread.run_sync(self._step, self._scorer, closing)

    async def idle(self) -> None:
        with anyio.move_on_after(self._idle_wait()):
            await self._wait_for_message()

    def _idle_wait(self) -> float:
        due = self._next_batch - self._clock()
        return max(0.0, min(IDLE_WAKE, due))

    async def _wait_for_message(self) -> None:
        """Wait for a hint or a request (or the end of the inbox)."""
        with contextlib.suppress(anyio.EndOfStream):
            self._keep(await self._inbox.receiver.receive())

    def _take_messages(self) -> None:
        while True:
            try:
                message = self._inbox.receiver.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            self._keep(message)

    def _keep(self, message: ScorerMessage) -> None:
        if isinstance(message, RunBatch):
            self._requests.append(message)
        elif isinstance(message, SyncDestination):
            self._syncs.append(message)
        elif isinstance(message, UseDestinations):
            self._reloaded = message.destinations
        elif isinstance(message, ProfileChanged):
            pass  # a wake-up call: the to-do list in SQLite says what changed

    def _step(self, scorer: Scorer, closing: bool) -> Round:
        """One round of work in the worker thread."""
        self._follow_deploys(scorer)
        if self._reloaded is not None:
            self._use_destinations(scorer, self._reloaded)
            self._reloaded = None
        started = time.perf_counter()
        changed = scorer.score_changes()
        if changed:
            self.metrics.scoring_fit_seconds.observe(time.perf_counter() - started)
            self.metrics.scoring_fit_profiles.inc(changed)
        scorer.retry_held()
        while self._syncs and not closing:
            self._sync(scorer, self._syncs.pop(0))
        requested = bool(self._requests)
        due = requested or self._clock() >= self._next_batch
        waiting = self.progress.head - self.checkpoint
        folded = 0
        deferred = False
        if due or waiting >= FOLD_BATCH or time.monotonic() >= self._next_fold:
            # Ingestion near capacity comes first, and a scheduled run waits with the
            # fold; a run someone asked for does not, nor a fold behind for too long.
            deferred = not requested and self._may_wait(waiting) and self._ingestion_busy()
            if not deferred:
                folded = scorer.fold_events(self.progress.head)
                self._next_fold = time.monotonic() + FOLD_INTERVAL
                self.metrics.scoring_events_folded.inc(folded)
        self.checkpoint, self.replaying = scorer.store.checkpoint(), scorer.replaying()
        # A run waits until the log is (nearly) folded: folding all of it inside the
        # run would hold up realtime fit for as long as a replay takes.
        caught_up = self.progress.head - self.checkpoint < FOLD_BATCH
        if caught_up:
            self._caught_up_at = time.monotonic()
        if due and caught_up and not closing and not deferred:
            self._batch(scorer)
        if changed >= CHANGES_BATCH or not (caught_up or deferred):
            return Round.FULL
        return Round.SOME if changed or folded else Round.IDLE

    def _may_wait(self, waiting: int) -> bool:
        """Whether the fold, `waiting` events behind, may still give way to ingestion."""
        behind_for = time.monotonic() - self._caught_up_at
        return waiting < self._fold_limit and behind_for < FOLD_WAIT_LIMIT

    def _ingestion_busy(self) -> bool:
        """Whether the log writer spent more than INGESTION_BUSY of the last
        BUSY_WINDOW committing (measured afresh once a window has passed)."""
        now, committed = time.monotonic(), self.progress.commit_seconds
        since, before = self._busy_mark
        if now - since >= BUSY_WINDOW:
            self._busy = (committed - before) / (now - since)
            self._busy_mark = (now, committed)
        return self._busy > INGESTION_BUSY

    def _sync(self, scorer: Scorer, request: SyncDestination) -> None:
        result = scorer.sync(request.destination, request.full, stop=lambda: self._inbox.closed)
        if result.complete and request.fingerprint is not None and scorer.staging is not None:
            with scorer.transaction():
                scorer.staging.store.set_fingerprint(request.destination, request.fingerprint)
        log.info(
            "destination sync staged",
            destination=request.destination,
            full=request.full,
            **asdict(result),
        )
        if result.complete:
            request.result = {"profiles": result.profiles, "queued": result.queued}
        anyio.from_thread.run_sync(request.done.set)

    def _chunk_done(self, checkpoint: int, profiles: int) -> None:
        """Between the chunks of a batch run, which folds the log as it goes: the
        backlog that pushes back on clients must see it move, and /status the run."""
        self.checkpoint = checkpoint
        anyio.from_thread.run_sync(self.publish)
        running = self._status.running
        self._show(running=BatchProgress(profiles, 0 if running is None else running.of))

    def _follow_deploys(self, scorer: Scorer) -> None:
        """Pick up a model deployed by the CLI or by SIGHUP since the last step."""
        active = scorer.store.active_model()
        if active is None or active[0] in (scorer.model.version, self._refused):
            return
        version, text = active
        try:
            model = parse(text, f"<model {version} as deployed>")
        except ModelError as exc:
            # Written by another leadsync version, or by hand: the running model stays.
            self._refused = version
            log.error("deployed model cannot be used; keeping the running one", error=str(exc))
            return
        scorer.use(model)
        self._show_model(version)
        log.info("scoring with a newly deployed model", version=version)

    def _show_model(self, version: str) -> None:
        self.metrics.scoring_model.info({"version": version})
        self._show(model=version)

    def _batch(self, scorer: Scorer) -> None:
        self._show(running=BatchProgress(0, scorer.store.profile_count()))
        try:
            result = scorer.run_batch(stop=lambda: self._inbox.closed, between=self._chunk_done)
        finally:
            self._show(running=None)
        self._report(result)
        if not result.complete:
            return  # stopping, or a rebuild swapped in: run again (soon, or next start)
        finished = self._clock()
        self._next_batch = finished + self._config.scoring.batch_interval
        figures = asdict(result)  # as they are: counts are ints
        self._show(
            last_batch_at=finished,
            next_batch_at=self._next_batch,
            last_batch=MappingProxyType(dict(figures)),
        )
        for request in self._requests:
            request.result = figures
            anyio.from_thread.run_sync(request.done.set)
        self._requests.clear()
        # Last, so that failing to note the time (a lock held too long) only means the
        # next start runs a batch early, not that this one is run and waited for again.
        with scorer.transaction():
            scorer.store.set_meta(LAST_BATCH, repr(finished))

    def _report(self, result: BatchRunResult) -> None:
        self.metrics.scoring_batch_seconds.observe(result.seconds)
        self.metrics.scoring_batch_profiles.inc(result.profiles)
        log.info(
            "scoring batch run",
            profiles=result.profiles,
            accounts=result.accounts,
            changed=result.changed,
            fit_rescored=result.fit_rescored,
            seconds=round(result.seconds, 2),
            complete=result.complete,
        )
