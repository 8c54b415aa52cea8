"""One write transaction on a synchronous store, whichever store it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol


class Transactional(Protocol):
    """A synchronous store with write transactions of its own (see Transactions in
    storage/sqlite_connect.py)."""

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


@contextmanager
def transaction(
    store: Transactional, gate: Callable[[], AbstractContextManager[None]] = nullcontext
) -> Iterator[None]:
    """The gate, then BEGIN IMMEDIATE; COMMIT on success, ROLLBACK on anything else."""
    with gate():
        store.begin()
        try:
            yield
            store.commit()
        except BaseException:
            store.rollback()  # a COMMIT that failed (busy, disk full) may leave it open
            raise
