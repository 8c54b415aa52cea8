"""One bad item is never the pipeline's hostage.

A consumer that fails on one event, profile or account tries it again a few times (a
failure that passes, such as memory pressure, passes), then sets it aside as a held
item (storage/held.py) and goes on with the rest. Only the storage failing (locked too
long, full, gone) is the component's own failure: that is raised, never held, so the
caller retries the whole round as it always did, and a restart is counted only when
the component itself is broken.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, Literal, TypeVar

import structlog

from storage.errors import StorageError, StorageUnavailable
from storage.held import HeldItem, HeldKind, Withdrawn

log = structlog.get_logger(__name__)

T = TypeVar("T")
ATTEMPTS = 3
"""Tries of one item before it is held."""
ERROR_CHARS = 500
"""Of an exception's text kept with a held item: it may quote the whole bad value."""


class Outcome(enum.Enum):
    HELD = "held"


HELD: Literal[Outcome.HELD] = Outcome.HELD
"""What `Attempts.run` returns for an item it set aside."""


def blames_storage(exc: BaseException) -> bool:
    """The database failed (locked, full, unreadable, gone), or the process ran out
    of memory: not the item's fault, and holding items for it would set aside good
    ones. Anything else the item's data made happen: a bug, which that item triggers."""
    return isinstance(exc, StorageUnavailable | MemoryError)


def describe(exc: BaseException) -> str:
    """The error and where it was raised, in one line: what a bug report needs, without
    a traceback's local variables (which would copy the bad value, and secrets)."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > ERROR_CHARS:
        text = text[: ERROR_CHARS - 1] + "…"
    # Storage's own errors are raised at the store's edge: where the driver's was raised
    # (the cause) is the place a bug report needs.
    cause = exc.__cause__ if isinstance(exc, StorageError) else None
    frames = traceback.extract_tb((cause or exc).__traceback__)
    if frames:
        last = frames[-1]
        where = "/".join(PurePath(last.filename).parts[-2:])
        text += f" (in {last.name}, {where}:{last.lineno})"
    return text


class Attempts:
    """Collects the items one component sets aside, for its next transaction.

    Each item's work runs through `run`: a try costs nothing until something fails.
    """

    def __init__(
        self,
        component: str,
        attempts: int = ATTEMPTS,
        on_held: Callable[[list[HeldItem]], None] = lambda items: None,
        passed_on: tuple[type[Exception], ...] = (),
    ) -> None:
        self.component = component
        self.attempts = attempts
        self.passed_on = passed_on
        """Exceptions that are the component's news, not an item's failure: raised."""
        self.on_held = on_held
        """Told of the items once the transaction that holds them has committed."""
        self.pending: list[HeldItem] = []

    def run(
        self,
        kind: HeldKind,
        key: str,
        work: Callable[..., T],
        *args: Any,
        body: bytes | None = None,
        where: str | None = None,
    ) -> T | Literal[Outcome.HELD]:
        """`work(*args)`, tried up to the attempts; if it never succeeds, the item is
        held and HELD returned. A storage error is raised at once. `where` names the
        part of the work that failed (a destination, say)."""
        failure: Exception | None = None
        for _ in range(self.attempts):
            try:
                return work(*args)
            except Exception as exc:
                if blames_storage(exc) or isinstance(exc, (Withdrawn, *self.passed_on)):
                    raise
                failure = exc
        assert failure is not None
        self.hold(kind, key, failure, body, where)
        return HELD

    def hold(
        self,
        kind: HeldKind,
        key: str,
        failure: BaseException,
        body: bytes | None = None,
        where: str | None = None,
    ) -> None:
        error = describe(failure) if where is None else f"{where}: {describe(failure)}"
        self.pending.append(HeldItem(self.component, kind, key, error, self.attempts, body))
        log.error(
            "item set aside after failing every attempt",
            component=self.component,
            kind=kind,
            key=key,
            attempts=self.attempts,
            error=error,
        )

    def begin(self) -> None:
        """A unit of work starts: what one before it set aside and never wrote (it
        failed before its transaction) is dropped; that work holds it again when it
        runs again, so it is never written with other work."""
        self.pending.clear()

    def take(self) -> list[HeldItem]:
        """The items waiting to be written, handed over once."""
        taken, self.pending = self.pending, []
        return taken
