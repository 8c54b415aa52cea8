"""One destination actor: the outbox rows of one destination, delivered within its
rate limit, retried with backoff, dead-lettered when they cannot succeed.

Written once for every kind of destination; a kind is only its `Sender`. The outbox
in SQLite is the truth and the actor keeps nothing it could not read again: rows in
flight are remembered in memory only so that two of its tasks do not send the same
row, and after a crash every row not settled is simply due again (a send whose
acknowledgement was lost may repeat once; docs/destinations.md says so).

A destination that is down never blocks the others: each has its own actor, its own
connection, and waits only on its own limiter.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec
import structlog

from actors.delivery.allowance import Allowance
from actors.delivery.doorbell import Bell
from actors.delivery.kinds import DestinationSettings
from actors.delivery.sender import Refused, Sender, Unavailable
from actors.delivery.status import DestinationStatus
from actors.metrics import Metrics
from actors.poison import blames_storage, describe
from actors.runtime import Actor, held_from_thread
from storage.backend import Backend
from storage.errors import StorageUnavailable
from storage.outbox import DestinationCounts, OutboxRow, OutboxStore, Settlement
from storage.transaction import transaction

log = structlog.get_logger(__name__)

FALLBACK_POLL = 2.0
"""Seconds between looks at the outbox when nothing is due and the bell does not ring:
a safety net. Rows the scorer stages ring the destination's bell after their commit
(actors/delivery/doorbell.py), and rows due later (retries) are waited for until
their due time; this finds what no bell announces, such as dead letters put back by
`leadsync dlq replay` from another process."""
PAUSE = 0.5
"""Seconds of the actor's short waits: a task that finds every due row in flight
looks again after it (or when a call ends), a failed record of outcomes is tried
again after it, and rows read before a longer wait for the rate limit are read
again."""
COUNTS_INTERVAL = 1.0
"""Seconds between counts of the queue for /status and /metrics, at least."""
CACHE_KIB = 4 * 1024
"""The outbox is read oldest-first through one index: a small page cache does."""
_T = TypeVar("_T")


class DestinationActor(Actor):
    def __init__(
        self,
        name: str,
        config: DestinationSettings,
        sender: Sender,
        backend: Backend,
        gate: anyio.Semaphore,
        metrics: Metrics,
        status: DestinationStatus | None = None,
        clock: Callable[[], float] = time.time,
        bell: Bell | None = None,
        fallback: float | None = None,
    ) -> None:
        """`status`: the one to start from (the last one's, after a crash). `bell`: rung
        when rows for this destination are committed (the daemon's Doorbell has one per
        destination); without one, rows others commit are found by the `fallback` poll
        alone (FALLBACK_POLL seconds unless given)."""
        super().__init__(f"destination:{name}")
        self.destination = name
        self._config = config
        self._sender = sender
        self._backend = backend
        self._gate = gate
        self._metrics = metrics
        self._status = DestinationStatus(config.kind, config.mode) if status is None else status
        """Replaced whole (`_show`), never changed in place."""
        self._clock = clock
        self._allowance = Allowance(config.rate, config.retry, clock, self._show)
        self._limiter = self._allowance.limiter
        batch = config.batch_size or sender.max_batch
        self._batch = min(batch, sender.max_batch)
        self._workers = 1 if sender.serial else config.concurrency
        self._buffer: deque[OutboxRow] = deque()
        self._in_flight: set[int] = set()
        self._settled: set[int] = set()
        """Rows settled since the last refill began."""
        self._fetching = anyio.Lock()
        self._connection = anyio.Lock()
        self._serial = anyio.Lock()
        """Held by a serial sender's send-and-settle, and by every tick."""
        self._stopping = anyio.Event()
        self._waits: set[anyio.CancelScope] = set()
        self._bell = Bell() if bell is None else bell
        """Rung by whoever commits rows for this destination, and by each call that
        ends (its rows are no longer in flight; a retry may be due sooner)."""
        self._fallback = FALLBACK_POLL if fallback is None else fallback
        self._unrecorded = False
        """An outcome could not be recorded while stopping: the sender must not finish."""
        self._store: OutboxStore | None = None

    def status(self) -> DestinationStatus:
        """What /status and /metrics show now: a snapshot, which later work leaves be."""
        return self._status

    def _show(self, **changes: Any) -> None:
        self._status = msgspec.structs.replace(self._status, **changes)

    def stop(self) -> None:
        """Calls in flight finish and are settled; nothing new starts."""
        self._stopping.set()
        for scope in self._waits:
            scope.cancel()

    async def run(self, ready: Callable[[], None]) -> None:
        session = self._backend.session(cache_kib=CACHE_KIB)
        self._store = session.outbox
        try:
            state = await self._db(self._store.sender_state, self.destination)
            self._allowance.resume(
                await self._db(self._store.usage, self.destination, self._clock())
            )
            await self._count()
            if not await self._open(state, ready):
                return
            try:
                ready()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._housekeeping)
                    for _ in range(self._workers):
                        tg.start_soon(self._work)
                    await self._stopping.wait()
                    # Workers return once their call in flight is settled.
                if not self._unrecorded:
                    await self._sender.finish()
            finally:
                await self._sender.close()
                self._show(writing=self._sender.writing())
        finally:
            self._show(state="stopped")
            session.close()

    async def _open(self, state: str | None, ready: Callable[[], None]) -> bool:
        """Open the sender; one that cannot open yet (a directory not writable) is a
        destination that is down, not a crash: it is tried again with the down
        pause, and the daemon serves meanwhile. False if stopped first."""
        while True:
            try:
                await self._sender.open(state)
            except Unavailable as exc:
                pause = self._allowance.down()
                self._show(state="cannot start")
                self._note_error(exc.reason)
                log.error(
                    "destination cannot start; trying again",
                    destination=self.destination,
                    error=exc.reason,
                    pause=round(pause, 2),
                )
                ready()
                with anyio.move_on_after(pause):
                    await self._stopping.wait()
                if self._stopping.is_set():
                    return False
                continue
            self._allowance.up()
            return True

    async def _db(self, call: Callable[..., _T], *args: object) -> _T:
        """One call at a time on the actor's connection: its tasks would otherwise use
        it from several threads at once, a read running inside another's write
        transaction."""
        async with self._connection:
            return await anyio.to_thread.run_sync(call, *args)

    def _write_gate(self) -> AbstractContextManager[None]:
        return held_from_thread(self._gate)

    async def _housekeeping(self) -> None:
        """Ticks the sender every COUNTS_INTERVAL; counts the queue as often, unless
        counting takes long (a million rows queued): then at most 5% of the time."""
        next_count = 0.0
        while not self._stopping.is_set():
            with anyio.move_on_after(COUNTS_INTERVAL):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() >= next_count:
                took = await self._count()
                next_count = time.monotonic() + max(COUNTS_INTERVAL, 20 * took)
            async with self._serial:
                await self._sender.tick()
            self._show(writing=self._sender.writing())

    async def _count(self) -> float:
        """Returns the seconds the count itself took."""
        assert self._store is not None
        store = self._store

        def count() -> tuple[DestinationCounts, float]:
            started = time.perf_counter()
            return store.counts(self.destination), time.perf_counter() - started

        counts, took = await self._db(count)
        self._show(
            queued=counts.queued,
            held=counts.held,
            dead_letters=counts.dead,
            rate=self._limiter.rate(),
            paused_for=self._limiter.paused_for(),
        )
        return took

    async def _work(self) -> None:
        while True:
            rows = await self._next()
            if rows is None:
                return
            try:
                settlement = Settlement(requests=0)
                staged: list[float] = []
                # A serial sender's state (a file's length) must be recorded with the
                # outcome of exactly the sends before it: no tick in between.
                async with self._serial if self._sender.serial else nullcontext():
                    await self._deliver(rows, settlement, staged)
                    await self._settle(settlement, staged)
            finally:
                ids = [row.id for row in rows]
                self._in_flight.difference_update(ids)
                self._settled.update(ids)
                self._wake_waiting()

    async def _next(self) -> list[OutboxRow] | None:
        """The next batch, its call already allowed by the rate limit and the daily
        cap; None when stopping. The call is allowed first and the rows taken after,
        so rows never wait in memory through a long pause and go out stale."""
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            if self._stopping.is_set():
                scope.cancel()
            try:
                while True:
                    await self._until_due()
                    waited = await self._allowance.wait()
                    try:
                        if waited > PAUSE:
                            async with self._fetching:  # read again what may be stale
                                self._buffer.clear()
                                await self._refill()
                    except BaseException:
                        self._allowance.give_back()
                        raise
                    if rows := self._take():
                        return rows
                    self._allowance.give_back()  # another task took them
            finally:
                self._waits.discard(scope)
        return None

    async def _until_due(self) -> None:
        """Until the buffer holds rows to send (none taken)."""
        async with self._fetching:
            while not self._buffer:
                await self._refill()
                if not self._buffer:
                    self._show(state="idle" if not self._status.queued else "waiting")
                    await self._sleep_until_due()

    def _take(self) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        size = 0
        limit = self._sender.max_bytes
        while self._buffer and len(rows) < self._batch:
            row = self._buffer[0]
            if rows and limit is not None and size + len(row.payload) > limit:
                break
            rows.append(self._buffer.popleft())
            size += len(row.payload)
        self._in_flight.update(row.id for row in rows)
        return rows

    async def _refill(self) -> None:
        assert self._store is not None
        want = self._batch * (self._workers + 1)
        self._settled = set()
        rows = await self._db(
            self._store.due, self.destination, self._clock(), want + len(self._in_flight)
        )
        # A row settled while the read ran may have been read as it was before.
        skip = self._in_flight | self._settled
        self._buffer.extend(row for row in rows if row.id not in skip)

    async def _sleep_until_due(self) -> None:
        """Until the bell rings (rows committed, or a call ended), the earliest row
        comes due, or the fallback poll. A ring is taken only by this wait, after the
        read that found nothing: a commit made since that read has rung, or will ring,
        a bell not yet heard, so the wait ends at once and the next read finds it."""
        assert self._store is not None
        due = await self._db(self._store.next_due, self.destination)
        now = self._clock()
        if due is None or due > now:
            await self._bell.wait(self._fallback if due is None else min(self._fallback, due - now))
            return
        # Due rows, every one in flight: wait for a call to end, not round again at once.
        await self._bell.wait(PAUSE)

    def _wake_waiting(self) -> None:
        self._bell.ring()

    async def _deliver(
        self, rows: Sequence[OutboxRow], settlement: Settlement, staged: list[float]
    ) -> None:
        """One call, already allowed (and, for a batch refused as a whole, the calls
        that find which of its records is bad), with the outcome added to
        `settlement` and the staging times of what was delivered to `staged`."""
        self._show(state="sending")
        settlement.requests += 1
        try:
            outcome = await self._sender.send(rows)
        except Unavailable as exc:
            self._limiter.release()
            self._unavailable(rows, exc, settlement)
            return
        except Refused as exc:
            self._limiter.release()
            self._metrics.destination_requests.labels(self.destination, "refused").inc()
            if len(rows) == 1:
                self._dead(rows[0], exc.reason, settlement)
                return
            await self._split(rows, exc.reason, settlement, staged)
            return
        except Exception as exc:
            # Our bug, which something in these records sets off (a payload the sender
            # cannot encode, say): the records that do not are sent, and the one that
            # does is retried as the policy says, then dead-lettered, never a crash.
            self._limiter.release()
            if blames_storage(exc):
                raise  # out of memory, say: not these records' doing
            reason = f"the sender failed: {describe(exc)}"
            self._metrics.destination_requests.labels(self.destination, "failed").inc()
            log.error("destination sender failed", destination=self.destination, error=reason)
            if len(rows) == 1:
                self._retry(rows[0], reason, settlement, counts=True, poison=True)
                return
            await self._split(rows, reason, settlement, staged)
            return
        self._limiter.release()
        self._allowance.up()
        failed = sum(1 for error in outcome if error is not None)
        self._metrics.destination_requests.labels(
            self.destination, "partial" if failed else "ok"
        ).inc()
        for row, error in zip(rows, outcome, strict=True):
            if error is None:
                settlement.delivered.append((row.id, row.uid, row.hash))
                staged.append(row.staged_at)
            elif error.retryable:
                self._retry(row, error.reason, settlement, counts=True)
            else:
                self._dead(row, error.reason, settlement)
        if failed < len(rows):
            self._show(last_success_at=self._clock())

    async def _split(
        self,
        rows: Sequence[OutboxRow],
        reason: str,
        settlement: Settlement,
        staged: list[float],
    ) -> None:
        """Halves until the bad records stand alone; the good ones go through, unless
        the destination pauses or the daemon stops meanwhile: then what is left waits
        for its turn like any other row."""
        half = len(rows) // 2
        for part in (rows[:half], rows[half:]):
            if self._stopping.is_set() or not self._allowance.now():
                due = self._clock() + self._limiter.paused_for()
                settlement.retry += [(r.id, r.hash, due, reason, False) for r in part]
                continue
            await self._deliver(part, settlement, staged)

    def _unavailable(
        self, rows: Sequence[OutboxRow], exc: Unavailable, settlement: Settlement
    ) -> None:
        outcome = "throttled" if exc.throttled else "unavailable"
        self._metrics.destination_requests.labels(self.destination, outcome).inc()
        pause = exc.retry_after if exc.retry_after is not None else self._allowance.down()
        self._limiter.pause(pause)
        self._note_error(exc.reason)
        log.warning(
            "destination call failed; will retry",
            destination=self.destination,
            error=exc.reason,
            records=len(rows),
            pause=round(pause, 2),
        )
        for row in rows:
            if exc.throttled:
                # Not the records' fault: no attempt counted, back when the API says.
                settlement.retry.append(
                    (row.id, row.hash, self._clock() + pause, exc.reason, False)
                )
            else:
                self._retry(row, exc.reason, settlement, counts=True, at_least=pause)

    def _retry(
        self,
        row: OutboxRow,
        reason: str,
        settlement: Settlement,
        counts: bool,
        at_least: float = 0.0,
        poison: bool = False,
    ) -> None:
        """`poison`: our sender failed on this record, which is counted as set aside
        when it is dead-lettered."""
        attempts = row.attempts + 1
        retry = self._config.retry
        if attempts >= retry.attempts:
            tries = f"{attempts} attempt{'' if attempts == 1 else 's'}"
            self._dead(row, f"{reason} (after {tries})", settlement)
            if poison:
                self._metrics.poison.labels(f"destination:{self.destination}").inc()
            return
        delay = min(retry.max_delay, retry.first_delay * 2 ** (attempts - 1))
        delay *= random.uniform(0.75, 1.25)
        settlement.retry.append(
            (row.id, row.hash, self._clock() + max(delay, at_least), reason, counts)
        )
        self._show(failed=self._status.failed + 1)
        self._metrics.destination_failed.labels(self.destination).inc()

    def _dead(self, row: OutboxRow, reason: str, settlement: Settlement) -> None:
        settlement.dead.append((row.id, row.hash, reason))
        self._show(dead_lettered=self._status.dead_lettered + 1)
        self._metrics.destination_dead_lettered.labels(self.destination).inc()
        self._note_error(reason)
        log.error(
            "record dead-lettered",
            destination=self.destination,
            profile=row.uid,
            attempts=row.attempts + 1,
            error=reason,
        )

    def _note_error(self, reason: str) -> None:
        self._show(last_error=reason, last_error_at=self._clock())

    async def _settle(self, settlement: Settlement, staged: list[float]) -> None:
        """Record the outcome. A storage error (a full disk, a lock held too long) is
        retried, and nothing new is sent meanwhile, so that the same records are not
        sent again and again; if the daemon stops first, they are sent once more after
        the restart (and a file is cut back to its recorded length)."""
        assert self._store is not None
        settlement.sender_state = self._sender.state()
        store = self._store
        now = self._clock()

        def write() -> None:
            with transaction(store, self._write_gate):
                store.settle(self.destination, settlement, now)

        while True:
            try:
                await self._db(write)
                break
            except StorageUnavailable as exc:
                self._metrics.storage_errors.labels(self.name).inc()
                self._note_error(f"cannot record deliveries: {exc}")
                if self._stopping.is_set():
                    log.error(
                        "delivery outcome not recorded; those records are sent again "
                        "after the restart",
                        destination=self.destination,
                        error=str(exc),
                    )
                    self._unrecorded = True
                    return
                log.error(
                    "delivery outcome not recorded; trying again",
                    destination=self.destination,
                    error=str(exc),
                )
                self._limiter.pause(2 * PAUSE)
                await anyio.sleep(PAUSE)
        sent = self._status.sent + len(settlement.delivered)
        self._show(sent=sent, writing=self._sender.writing())
        self._metrics.destination_sent.labels(self.destination).inc(len(settlement.delivered))
        done = self._clock()
        lag = self._metrics.destination_lag.labels(self.destination)
        for at in staged:
            lag.observe(max(0.0, done - at))
        if staged:
            self._show(lag=max(0.0, done - min(staged)))
