"""The merger's entry point: log events applied to the graph, a batch per transaction.

Batches overlap: while one commits, in a thread, the next is computed, reading
through a connection that does not see the first until it has committed. So the next
batch takes the rows the one before holds from its memory instead, and follows the
profiles it merged away (re-pointing, in SQL, identifiers it had not read) to where
they went.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from actors.identity.batch import Batch
from actors.identity.extract import Extractor
from actors.identity.rules import Caps
from actors.identity.settings import IdentitySection
from actors.identity.unit import MergeResult
from storage.graph import GraphStore
from storage.log import StoredEvent


class Graph:
    """Applies log events to a GraphStore. One batch is one transaction, checkpoint included."""

    def __init__(
        self,
        store: GraphStore,
        rules: IdentitySection,
        extractor: Extractor,
        reads: GraphStore | None = None,
    ) -> None:
        self.store = store
        self.reads = reads or store
        """Where a batch reads before it writes: a connection of its own lets it read
        while the batch before commits on `store`'s."""
        self.rules = rules
        self.extractor = extractor
        self.caps = Caps(rules, extractor.priority)

    def apply(self, events: Sequence[StoredEvent], after: int) -> MergeResult:
        """Apply `events`, which follow checkpoint `after`, and move the checkpoint."""
        (result,) = self.apply_all([events], after)
        return result

    def apply_aside(
        self,
        events: Sequence[StoredEvent],
        checkpoint: int,
        within: Callable[[], None] = lambda: None,
        skip: bool = False,
    ) -> MergeResult:
        """One transaction off the log's order, at checkpoint `checkpoint`: apply
        `events` without moving the checkpoint (held events applied again), or, with
        `skip`, apply nothing and move the checkpoint past the one event given (one
        set aside). `within` runs inside the transaction (the held table's part)."""
        batch = self._batch(checkpoint)
        try:
            with collector_paused():
                if not skip:
                    batch.run(events)
                batch.write(events[-1].seq if skip else None)
                within()
            batch.commit()
        except BaseException:
            batch.abort()
            raise
        return batch.result

    def apply_all(
        self, batches: Iterable[Sequence[StoredEvent]], after: int
    ) -> Generator[MergeResult, None, None]:
        """Apply `batches` in turn, the first following checkpoint `after`, each in a
        transaction of its own; yields each one's result once it is committed.

        While one batch commits, in a thread (SQLite lets go of the interpreter lock
        there), the next is computed and written. If a batch fails, or reading the
        next one does, the error is raised after the results of those committed before
        it; the batch after a failed one is dropped uncommitted. Read to the end: a
        commit in flight when the reader stops is waited for, and not reported."""
        source = iter(batches)
        with ThreadPoolExecutor(1, "graph-commit") as committer:
            in_flight: tuple[Batch, Future[None]] | None = None
            done: MergeResult | None = None
            while True:
                batch: Batch | None = None
                failed: BaseException | None = None
                try:
                    # Read before the events: a forget erases events, then bumps the
                    # generation, so a batch read after the bump reads without them,
                    # and one read before it fails its check at the write.
                    generation = self.store.generation() if in_flight is None else None
                    if (events := next(source, None)) is not None:
                        batch = self._batch(after, in_flight, generation)
                        with collector_paused():
                            batch.run(events)
                            batch.write(events[-1].seq)
                        after = events[-1].seq
                except BaseException as exc:
                    if batch is not None:
                        batch.abort()
                    batch, failed = None, exc
                try:
                    if in_flight is not None:
                        # A failed commit is the first failure (the batch after, which
                        # waits for it before writing, failed for it), and raised here.
                        done = _committed(in_flight)
                        in_flight = None
                    if batch is not None:
                        batch.carry = batch.behind = None  # each batch is let go of in turn
                        in_flight = batch, committer.submit(batch.commit)
                        batch = None
                except BaseException:
                    if batch is not None:  # written, not handed over: never left open
                        batch.abort()
                    raise
                if done is not None:
                    yield done
                    done = None
                if failed is not None:
                    raise failed
                if in_flight is None:
                    return

    def _batch(
        self,
        after: int,
        behind: tuple[Batch, Future[None]] | None = None,
        generation: int | None = None,
    ) -> Batch:
        return Batch(self.store, self.reads, self.extractor, self.caps, after, behind, generation)


@contextmanager
def collector_paused() -> Iterator[None]:
    """A batch allocates hundreds of thousands of objects that live until it ends, and
    the cyclic collector, triggered by the allocations, traversed them again and again
    (a seventh of the merger's time in bench/identity.py) looking for cycles that the
    batch does not make: its objects go by reference counting when it is dropped.
    Anything cyclic is still collected, after the batch (or, in the merger's worker,
    which pauses it for a whole call, after the call)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _committed(in_flight: tuple[Batch, Future[None]]) -> MergeResult:
    """Wait for the batch's commit; raises what failed it, the first failure of a run."""
    batch, commit = in_flight
    commit.result()
    return batch.result
