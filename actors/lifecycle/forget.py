"""forget and unforget: the locked step, the deletes, the deletion requests queued,
and running them on the files, inside the daemon or with it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import anyio

from actors.delivery import payload as payloads
from actors.delivery.kinds import DestinationSettings
from actors.identity.extract import EMAIL
from actors.identity.settings import IdentitySection
from actors.lifecycle.identifiers import Identifier
from actors.lifecycle.search import Found, Unsearched
from actors.lifecycle.suppressions import Suppressions
from actors.runtime import held_from_thread
from storage.backend import Backend
from storage.lifecycle import Deletion, Erased, LifecycleStore, Person, identifier_hash

LOCKED_TRIES = 3
"""Times forget takes the locks expecting the search outside them to be complete; the
last try searches whatever it must under them rather than give up."""


class _Storage(Protocol):
    @property
    def busy_timeout(self) -> float: ...


class Config(Protocol):
    """What forget reads of the daemon's configuration (daemon.config.Config has it)."""

    @property
    def identity(self) -> IdentitySection: ...
    @property
    def destinations(self) -> Mapping[str, DestinationSettings]: ...
    @property
    def storage(self) -> _Storage: ...


def forget(
    store: LifecycleStore,
    identifier: Identifier,
    config: Config,
    now: float,
    hold_ingestion: Callable[[], AbstractContextManager[None]] = nullcontext,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
    suppressed: Callable[[list[bytes]], None] = lambda hashes: None,
    screen: Callable[[list[bytes]], list[bytes]] = lambda hashes: [],
    unscreen: Callable[[list[bytes]], None] = lambda hashes: None,
) -> Erased:
    """Erase the person `identifier` belongs to (or, if none does, events and
    aggregates that carry it), and suppress their identifiers. `suppressed` hears the
    new hashes while ingestion is still held, after both files committed: if either
    commit fails, the daemon keeps taking the events the files do not suppress (and
    PartlyErased says the log's went through).

    Should the person change under the locks on every try but the last (their events
    still coming, each with a new identifier), what is known of them is screened at
    the door (`screen`: added to the daemon's set for now, the hashes it did not have
    returned) before the last search, so that the last try finds little new; what
    the forget does not suppress in the end is let through again (`unscreen`)."""
    found = Found(identifier, config.identity)
    screened: list[bytes] = []
    try:
        for attempt in range(LOCKED_TRIES):
            last = attempt + 1 == LOCKED_TRIES
            if last:
                salt = store.salt()
                with hold_ingestion():
                    screened = screen([identifier_hash(salt, *i) for i in found.identifiers])
            found.search(store)
            try:
                with gate():
                    # The main file's write lock first: it may wait out the merger's
                    # commit (its own process, which the gate does not queue), with
                    # ingestion still open.
                    store.begin()
                    try:
                        with hold_ingestion():
                            store.begin_log()
                            erased, hashes = _erase(store, found, config, now, not last)
                            store.commit()
                            suppressed(hashes)
                            kept = set(hashes)
                            unscreen([h for h in screened if h not in kept])
                            screened = []
                    except BaseException:
                        store.rollback()  # a COMMIT that failed may leave one open
                        raise
                return erased
            except Unsearched:
                continue
        raise AssertionError("the last try searches under the locks")
    finally:
        if screened:  # the forget failed: nothing of it is suppressed
            with hold_ingestion():
                unscreen(screened)


def _erase(
    store: LifecycleStore, found: Found, config: Config, now: float, bounded: bool
) -> tuple[Erased, list[bytes]]:
    """The locked step, in the open transaction: the last search (`bounded`: of what
    was added since the search outside the locks, or Unsearched), then the deletes."""
    found.gather(store, None, bounded)
    people = list(found.people.values())
    for person in people:
        found.events.update(dict.fromkeys(store.home_events(person.nodes)))
    found.settle(store)
    deletions = [d for person in people for d in _deletions(person, config)]
    erased = store.erase(
        people,
        found.identifiers,
        sorted(found.events),
        deletions,
        now,
        found.strays(store),
        given=found.identifier,
    )
    salt = store.salt()
    return erased, [identifier_hash(salt, *i) for i in found.identifiers]


def _deletions(person: Person, config: Config) -> list[Deletion]:
    """A deletion request (a profile entry with "deleted": true) for each destination
    whose kind takes one (DELETES: webhooks). Segment's tracking API has no delete,
    and files cannot unwrite; docs/destinations.md says what stays downstream."""
    deleting = [name for name, destination in config.destinations.items() if destination.DELETES]
    if not deleting:
        return []
    first = dict(reversed(person.identifiers))  # the oldest of each kind
    body, digest = payloads.encode(
        payloads.Payload(
            profile=person.uid,
            traits={},
            user_id=person.user_id,
            email=first.get(EMAIL),
            anonymous_id=first.get("anonymous_id"),
            deleted=True,
        )
    )
    return [Deletion(name, person.profile, body, digest) for name in deleting]


def unforget(store: LifecycleStore, identifier: Identifier) -> list[bytes]:
    """Lift the suppression that covers `identifier` (and the rest of that forget's)."""
    return store.unsuppress(identifier_hash(store.salt(), *identifier))


def forget_here(
    backend: Backend,
    identifier: Identifier,
    config: Config,
    suppressions: Suppressions | None = None,
    write_gate: anyio.Semaphore | None = None,
) -> Erased:
    """Forget on the files, in a worker thread: inside the daemon (`suppressions` and
    `write_gate` given: ingestion held, the main file's writers queued, the suppression
    set updated), or with it stopped. Raises RebuildRunning during a rebuild."""

    with backend.exclusive():
        store = backend.lifecycle()
        try:
            if suppressions is None or write_gate is None:
                return forget(store, identifier, config, time.time())
            lock, gate = suppressions.lock, write_gate
            return forget(
                store,
                identifier,
                config,
                time.time(),
                hold_ingestion=lambda: held_from_thread(lock),
                gate=lambda: held_from_thread(gate),
                suppressed=suppressions.hashes.update,
                screen=suppressions.add,
                unscreen=suppressions.hashes.difference_update,
            )
        finally:
            store.close()


def unforget_here(
    backend: Backend,
    identifier: Identifier,
    config: Config,
    suppressions: Suppressions | None = None,
    write_gate: anyio.Semaphore | None = None,
) -> int:
    """Lift a suppression on the files; inside the daemon, from its set too (ingestion
    held for the moment). Returns how many identifiers it covered (0: none did). The
    locks are taken in forget's order: the gate, the main file's, ingestion."""

    store = backend.lifecycle()
    gate = nullcontext() if write_gate is None else held_from_thread(write_gate)
    hold = nullcontext() if suppressions is None else held_from_thread(suppressions.lock)
    try:
        with gate:
            store.begin()
            try:
                with hold:
                    lifted = unforget(store, identifier)
                    store.commit()
                    # After the commit: a failed one leaves the daemon dropping what the
                    # file still suppresses.
                    if suppressions is not None:
                        suppressions.hashes.difference_update(lifted)
            except BaseException:
                store.rollback()
                raise
        return len(lifted)
    finally:
        store.close()
