"""A durable consumer of the event log: the pattern the merger and the scorer share.

Each commits its checkpoint in the same transaction as what it made of the events
before it, so a crash loses nothing and applies nothing twice; each reads on from
that checkpoint after a restart. The work differs (a worker process's batches, a
worker thread's rounds); the loop around it is this module's, written once:

         ┌───────────────────────────────────────────────────────┐
         ▼                                                       │
    round(closing) ──► publish the checkpoint (LogProgress) ──► FULL: at once
         │                                                   ──► SOME: after `pace`
         │ StorageUnavailable: counted, said,                ──► IDLE: at `idle()`'s
         │ retried after a pause (closing: stop)                 wake (new events, a
         ▼                                                       message, a timeout)
       closing: the round done, stop; the rest is on disk for the next start

A round is the consumer's own: it reads from its checkpoint, applies what it read in
transactions that carry the new checkpoint, and says how much is left (`Round`).
Storage failing is the outside world's (a lock held too long, a full disk): nothing
of the round was committed, so the same round again is exact. Anything else a round
raises is a bug, the consumer's to handle or to crash on (the supervisor restarts it).
"""

from __future__ import annotations

import enum
import time
from abc import abstractmethod

import anyio
import structlog

from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Actor
from storage.errors import StorageUnavailable

log = structlog.get_logger(__name__)

RETRY_AFTER_STORAGE_ERROR = 1.0
"""Seconds before a round the storage failed is tried again."""


class Round(enum.Enum):
    """What a round found left to do."""

    FULL = "full"
    """More is waiting than a round takes: the next one starts at once."""
    SOME = "some"
    """It did some work: the next one starts `pace` seconds after this one did."""
    IDLE = "idle"
    """Nothing to do: the next one waits for `idle()` to return."""


class LogConsumer(Actor):
    """`consumer`: its name in the checkpoints table, in LogProgress and in
    leadsync_storage_errors_total; `pace`: the shortest time between the
    starts of two rounds that found only some work (a round under load carries more
    rows a transaction, and takes the write lock less often)."""

    def __init__(
        self,
        name: str,
        consumer: str,
        progress: LogProgress,
        metrics: Metrics,
        pace: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.consumer = consumer
        self.progress = progress
        self.metrics = metrics
        self.pace = pace
        self.checkpoint = 0
        """The position committed last: set by the consumer, published after each round."""
        self.replaying = False
        """Reading the whole log again on purpose (a model's new event weights)."""

    @abstractmethod
    def closing(self) -> bool:
        """Whether the daemon asked it to stop: the next round is its last."""

    @abstractmethod
    async def round(self, closing: bool) -> Round:
        """Apply what it can from its checkpoint on, and set `checkpoint`."""

    @abstractmethod
    async def idle(self) -> None:
        """Wait for a reason to look again: new events, a message, a timeout."""

    def stopped_during(self) -> bool:
        """Whether a stop asked for while a round ran ends the consumer at once, rather
        than after one more round that knows it closes. The merger's does; the scorer
        drains its inbox in that last round."""
        return False

    def publish(self) -> None:
        self.progress.applied(self.consumer, self.checkpoint, self.replaying)

    async def follow(self) -> None:
        """Rounds until it is asked to stop; returns after its last."""
        while True:
            closing = self.closing()
            started = time.monotonic()
            try:
                done = await self.round(closing)
            except StorageUnavailable as exc:
                self.metrics.storage_errors.labels(self.consumer).inc()
                log.warning(f"{self.consumer} round not applied; retrying", error=str(exc))
                if closing:
                    return  # what is left is on disk for the next start
                await anyio.sleep(RETRY_AFTER_STORAGE_ERROR)
                continue
            finally:
                self.publish()
            if closing or (self.stopped_during() and self.closing()):
                return
            if done is Round.FULL:
                continue
            if done is Round.SOME:
                await anyio.sleep(max(0.0, started + self.pace - time.monotonic()))
                continue
            await self.idle()
