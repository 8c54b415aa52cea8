"""The merger's way past a bad event: find it, hold it, go on.

A batch that fails on its data (not on the database: that is retried as it comes) is
split in halves, and the halves applied on their own, until the event that fails is
alone; it is tried a few times more, then held (storage/held.py) in the transaction
that moves the checkpoint past it. Every other event of the batch is applied, each
exactly once, as a batch of its own or in a half. A retry asked for with `leadsync
held retry` applies the event again, off the log's order (the merge rules do not
depend on it), and releases it in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence

import structlog

from actors.identity.pipeline import Graph
from actors.identity.unit import MergeResult, StaleCheckpoint
from actors.poison import HELD, Attempts, blames_storage, describe
from storage.held import HeldStore, Withdrawn
from storage.log import StoredEvent
from storage.session import LogReader
from storage.transaction import transaction

log = structlog.get_logger(__name__)

COMPONENT = "identity"
RETRIES_A_CALL = 100
"""Held events applied again per call, at most (each is a transaction of its own)."""


def attempts() -> Attempts:
    """The merger's: a rebuild swapped in meanwhile is news, not an event's failure."""
    return Attempts(COMPONENT, passed_on=(StaleCheckpoint,))


def apply_resilient(
    graph: Graph,
    held: HeldStore,
    attempts: Attempts,
    events: LogReader,
    after: int,
    size: int,
    until: float,
) -> Generator[MergeResult, None, None]:
    """Batches of `size` from the log after checkpoint `after`, as Graph.apply_all
    applies them, until the clock passes `until`; a batch that fails on its data is
    taken apart (see the module's docstring). Storage errors and a rebuild swapped in
    are raised, after the results of what was committed before them."""
    while True:
        try:
            for result in graph.apply_all(events.batches(after, size, until), after):
                after = result.checkpoint
                yield result
            return
        except StaleCheckpoint:
            raise
        except Exception as exc:
            if blames_storage(exc):
                raise
            log.warning(
                "identity batch failed on its data; applying it in parts",
                after=after,
                error=describe(exc),
            )
        for result in _in_parts(graph, held, attempts, events.read(after, size), after):
            after = result.checkpoint
            yield result
        if time.perf_counter() >= until:
            return


def _in_parts(
    graph: Graph,
    held: HeldStore,
    attempts: Attempts,
    events: Sequence[StoredEvent],
    after: int,
) -> Iterator[MergeResult]:
    parts = [events] if events else []
    while parts:
        part = parts.pop()
        if len(part) > 1:
            try:
                result = graph.apply(part, after)
            except StaleCheckpoint:
                raise
            except Exception as exc:
                if blames_storage(exc):
                    raise
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # the first half next
                continue
        else:
            result = _alone(graph, held, attempts, part[0], after)
        after = result.checkpoint
        yield result


def _alone(
    graph: Graph, held: HeldStore, attempts: Attempts, event: StoredEvent, after: int
) -> MergeResult:
    """One event, tried a few times; held if it never applies."""
    outcome = attempts.run("event", str(event.seq), graph.apply, [event], after, body=event.body)
    if outcome is not HELD:
        return outcome
    items = attempts.take()
    result = graph.apply_aside([event], after, lambda: held.hold(items, time.time()), skip=True)
    result.held = len(items)
    attempts.on_held(items)
    return result


def retry_held(graph: Graph, held: HeldStore, attempts: Attempts) -> list[MergeResult]:
    """Apply again the held events whose retry was asked for, each releasing itself in
    its own transaction; one that fails again is held again, with its new error (and
    counted in its result's `held`)."""
    results = []
    for item in held.to_retry(COMPONENT, "event", RETRIES_A_CALL):
        event = StoredEvent(int(item.key), "", item.body or b"")
        checkpoint = graph.store.checkpoint()
        try:
            outcome = attempts.run(
                "event",
                item.key,
                graph.apply_aside,
                [event],
                checkpoint,
                lambda item=item: held.release([item]),
                body=item.body,
            )
        except Withdrawn:
            continue  # a rebuild swapped in or someone dropped it: nothing was applied
        if outcome is HELD:
            items = attempts.take()
            with transaction(graph.store):
                held.hold(items, time.time())
            attempts.on_held(items)
            results.append(MergeResult(checkpoint=checkpoint, held=len(items)))
            continue
        log.info("held event applied at last", seq=item.key)
        results.append(outcome)
    return results
