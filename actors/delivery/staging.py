"""Turning scores into outbox rows, for the scorer, inside the transaction that
stores the scores (so a crash can never keep one without the other).

Each destination's payload is built before that transaction (mapping and filter cost
microseconds a profile, and the write lock is shared with ingestion); only the
comparison with what was staged and acknowledged before runs inside it. Staging notes
which destinations it gave rows due now (`due`), so that the scorer, once the
transaction has committed, rings their bells (actors/delivery/doorbell.py) and they
start at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.delivery.filter import Filter
from actors.delivery.kinds import DestinationSettings
from actors.delivery.only_on_change import Row, decide
from actors.delivery.payload import Payload, encode
from actors.poison import HELD, Attempts
from storage.outbox import OutboxStore
from storage.scores import Damaged, DamagedRow, Score

ADDRESS_KINDS = ("user_id", "email", "anonymous_id")


@dataclass
class Subject:
    """A profile as staging sees it: its id, scores, addresses and (if a filter needs
    them) traits."""

    row: int
    uid: str
    score: Score
    addresses: Mapping[str, str]
    traits: Mapping[str, Any]


class Route:
    """One destination's mapping, filter and mode. Not thread-safe (the filter's
    evaluator is reused): one per scorer."""

    def __init__(self, name: str, config: DestinationSettings) -> None:
        self.name = name
        self.label = f"destination {name}"
        """How a held profile's error names this route."""
        self.realtime = config.mode in ("realtime", "both")
        self.batch = config.mode in ("batch", "both")
        self.held = config.mode == "batch"
        """Realtime changes wait for the end of the next batch run."""
        self.fields = dict(config.fields)
        self.filter = Filter(config.filter) if config.filter else None
        self.needs_traits = self.filter is not None and any(
            not name.startswith("mk_") and name not in ADDRESS_KINDS for name in self.filter.names
        )

    def payload(self, subject: Subject) -> tuple[bytes | None, int]:
        """The encoded payload and its hash, or (None, 0) if the filter refuses it."""
        if isinstance(subject.traits, Damaged):
            raise DamagedRow(subject.traits.reason)
        scores = subject.score.traits()
        if self.filter is not None:
            values = {**subject.traits, **subject.addresses, **scores}
            if not self.filter.matches(values):
                return None, 0
        if self.fields:
            traits = {self.fields[k]: v for k, v in scores.items() if k in self.fields}
        else:
            traits = scores
        return encode(
            Payload(
                subject.uid,
                traits,
                subject.addresses.get("user_id"),
                subject.addresses.get("email"),
                subject.addresses.get("anonymous_id"),
            )
        )


def fingerprint(config: DestinationSettings) -> tuple[str, str]:
    """(where it sends, what it sends): a new `where` (another type, URL, host, write
    key or directory) is a destination that has nothing yet; a new `what` (fields or
    filter) changes payloads, and so what differs from what it has."""
    # The digests are stored with every destination's state: the first four places
    # keep the shape they had before kinds said what their address is, so a built-in
    # destination is not taken for a new one (and sent everything again) on upgrade.
    if config.LEGACY_ADDRESS:
        where = [config.kind, *(getattr(config, k, None) for k in _FIRST_ADDRESSES)]
    else:  # a kind's own address, whatever else it has
        where = [config.kind, *(getattr(config, k) for k in config.ADDRESS)]
    what = [config.fields, config.filter]
    return _digest(where), _digest(what)


_FIRST_ADDRESSES = ("url", "host", "write_key", "path")


def _digest(value: object) -> str:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:16]


Prepared = dict[str, list[Row]]
"""Per destination: (profile row, profile id, payload or None, hash)."""


def stage_changes(
    store: OutboxStore,
    destination: str,
    rows: Sequence[Row],
    staged_at: float,
    due_at: float | None,
    force: bool = False,
) -> int:
    """Stages what changed of `rows` for `destination` (actors/delivery/only_on_change.py;
    `force`: everything, for a full resync), due at `due_at` or, if None, held until the
    batch run under way (or the next) ends; inside the caller's transaction. Returns how
    many rows were queued."""
    states = store.delivery_states(destination, [row[0] for row in rows])
    decision = decide(rows, states, lambda profiles: store.queued(destination, profiles), force)
    store.apply_staging(destination, decision, staged_at, due_at)
    return len(decision.queued)


class Staging:
    def __init__(self, store: OutboxStore, destinations: Mapping[str, DestinationSettings]) -> None:
        self.store = store
        self.routes = {name: Route(name, config) for name, config in destinations.items()}
        self.held = [r.name for r in self.routes.values() if r.batch]
        """Destinations whose rows a batch run releases at its end."""
        self.due: set[str] = set()
        """Destinations given rows due now since the caller last took them (`take_due`):
        rows held for a batch run are not due until it ends."""

    def wanted(self, batch: bool) -> list[Route]:
        """Routes that take likelihood changes from a batch run (batch and both); every
        route takes fit changes (a batch-only one holds them for the end of a run)."""
        return [r for r in self.routes.values() if r.batch or not batch]

    def needs_traits(self, routes: Iterable[Route]) -> bool:
        return any(r.needs_traits for r in routes)

    @staticmethod
    def prepare(
        subjects: Iterable[Subject], routes: Sequence[Route], attempts: Attempts | None = None
    ) -> Prepared:
        """Each route's payload for each subject. A payload that cannot be built (a
        filter or a trait that breaks it) holds that profile through `attempts`, and
        stages nothing for it there; without `attempts`, the error is raised."""
        prepared: Prepared = {r.name: [] for r in routes}
        for subject in subjects:
            for route in routes:
                if attempts is None:
                    payload = route.payload(subject)
                else:
                    built = attempts.run(
                        "profile", subject.uid, route.payload, subject, where=route.label
                    )
                    if built is HELD:
                        continue
                    payload = built
                prepared[route.name].append((subject.row, subject.uid, *payload))
        return prepared

    def stage(self, prepared: Prepared, now: float, batch: bool) -> int:
        """Inside the caller's transaction. Rows for batch and both modes from a batch
        run, and every row for batch mode, are held until the run ends (see release);
        realtime mode's are due at once."""
        queued = 0
        for name, rows in prepared.items():
            route = self.routes[name]
            held = route.held or (batch and route.batch)
            staged = stage_changes(self.store, name, rows, now, None if held else now)
            if staged and not held:
                self.due.add(name)
            queued += staged
        return queued

    def sync(
        self,
        destination: str,
        rows: Sequence[Row],
        now: float,
        force: bool,
    ) -> int:
        """One destination's payloads, due now (`sync`: every scored profile, a chunk at
        a time; `force`, even what it acknowledged); inside the caller's transaction."""
        staged = stage_changes(self.store, destination, rows, now, now, force)
        if staged:
            self.due.add(destination)
        return staged

    def end_run(self, now: float) -> int:
        """What the batch run held becomes due (inside the caller's transaction)."""
        released = self.store.end_run(self.held, now)
        if released:
            self.due.update(self.held)
        return released

    def release(self, destinations: Sequence[str], now: float, limit: int) -> int:
        """Up to `limit` held rows of each of `destinations` (made realtime, which no
        batch run releases) become due now; inside the caller's transaction."""
        released = self.store.release(destinations, now, limit)
        if released:
            self.due.update(destinations)
        return released

    def take_due(self) -> set[str]:
        """The destinations given rows due now since the last call, forgotten here."""
        due, self.due = self.due, set()
        return due
