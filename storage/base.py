"""The storage interface every backend implements, and the rows that cross it.

It is deliberately narrow — append to the log, read it back, checkpoints, quarantine,
health — so that a PostgreSQL backend is one new module. Each method that writes is
one transaction: callers never hold a transaction open across an await of their own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import anyio
import msgspec

from storage.held import Held


class EventRecord(msgspec.Struct, frozen=True):
    """One validated message ready for the log; `body` is the normalized event as JSON."""

    message_id: str
    type: str
    received_at: str
    body: bytes


class Rejected(msgspec.Struct, frozen=True):
    """A message refused at the door, kept so the operator can see what the client sent."""

    batch_index: int | None
    reason: str
    body: bytes


class AppendRequest(msgspec.Struct, frozen=True):
    """What one HTTP request (or one file chunk) adds: its events and its rejects."""

    source: str
    received_at: str
    events: Sequence[EventRecord]
    rejected: Sequence[Rejected] = ()


class AppendResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int
    suppressed: int = 0
    """Events of forgotten people, dropped before the commit (actors/lifecycle.py)."""


class StoredEvent(msgspec.Struct, frozen=True):
    seq: int
    source: str
    body: bytes


class QuarantinedMessage(msgspec.Struct, frozen=True):
    id: int
    source: str
    received_at: str
    batch_index: int | None
    reason: str
    body: str


class IdentityView(msgspec.Struct):
    kind: str
    value: str
    first_seen: str


class Score(msgspec.Struct, omit_defaults=True):
    """A profile's or an account's current scores. Fit is rescored as traits change,
    likelihood in batch runs, so each half records the model version and the time
    (epoch seconds) that made it; after a deploy, a half not yet rescored still
    names the old version."""

    fit_score: int | None = None
    fit_segment: str | None = None
    fit_signals: list[str] = []
    fit_model: str | None = None
    fit_at: float | None = None
    ltb_score: int | None = None
    ltb_segment: str | None = None
    ltb_signals: list[str] = []
    ltb_model: str | None = None
    ltb_at: float | None = None
    grade: str | None = None
    inputs: dict[str, Any] = {}
    """The traits the fit model read, as mk_job_title, mk_country, ..."""

    def traits(self) -> dict[str, Any]:
        """The scores as the mk_* traits destinations receive."""
        traits: dict[str, Any] = {}
        if self.fit_score is not None:
            traits["mk_customer_fit_score"] = self.fit_score
            traits["mk_customer_fit_segment"] = self.fit_segment
            traits["mk_customer_fit_signals"] = self.fit_signals
        if self.ltb_score is not None:
            traits["mk_likelihood_to_buy_score"] = self.ltb_score
            traits["mk_likelihood_to_buy_segment"] = self.ltb_segment
            traits["mk_likelihood_to_buy_signals"] = self.ltb_signals
        if self.grade is not None:
            traits["mk_lead_grade"] = self.grade
        traits.update(self.inputs)
        return traits


class ScoreView(msgspec.Struct):
    traits: dict[str, Any]
    fit_model: str | None
    fit_at: str | None
    likelihood_model: str | None
    likelihood_at: str | None


class AccountView(msgspec.Struct):
    group_id: str
    first_seen: str
    last_seen: str
    traits: dict[str, Any]
    scores: ScoreView | None = None


class ProfileView(msgspec.Struct):
    """A profile as `leadsync profile` and GET /v1/profiles show it."""

    profile_id: str
    user_id: str | None
    first_seen: str
    last_seen: str
    events: int
    sources: dict[str, int]
    identities: list[IdentityView]
    traits: dict[str, Any]
    account: AccountView | None
    merged_ids: list[str]
    """Earlier profile ids that now mean this profile (merged or renamed)."""
    last_events: list[msgspec.Raw]
    scores: ScoreView | None = None


class Storage(Protocol):
    write_gate: anyio.Semaphore
    """Held by whoever writes the main file (the scorer, deploys, destinations, the
    rebuild's swap), so in-process writers queue on it in order rather than in
    SQLite's busy handler, which sleeps in steps of up to 100 ms. The event log has a
    file and a gate of its own (storage/sqlite_log.py)."""

    async def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        """Commit every request in one transaction (group commit).

        Returns one result per request and the log head after the commit. A message
        whose (source, message_id) is already in the log is counted as a duplicate and
        not stored again. Raises on failure, in which case nothing was stored.
        """
        ...

    async def log_head(self) -> int: ...

    async def read_events(self, after: int, limit: int) -> list[StoredEvent]: ...

    async def checkpoints(self) -> dict[str, int]: ...

    async def quarantined(self, limit: int) -> tuple[int, list[QuarantinedMessage]]:
        """How many messages are in quarantine, and the newest `limit` of them."""
        ...

    async def held(self, limit: int) -> tuple[dict[str, int], list[Held]]:
        """Held items per component (storage/held.py), and the newest `limit` of them."""
        ...

    async def profile(self, kind: str, value: str, last_events: int) -> ProfileView | None:
        """The profile an identifier (or a current or retired profile id, kind
        "profile") belongs to, with its newest `last_events` events."""
        ...

    async def probe_writable(self) -> None:
        """Raise unless a write can be committed right now (for /readyz)."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """Small durable facts the daemon keeps about itself (a generated write key)."""
        ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def maintain(self) -> None:
        """Periodic upkeep: checkpoint the WAL, trim the quarantine."""
        ...

    async def close(self) -> None: ...


# --- The identity graph -----------------------------------------------------------
# Rows the identity actor keeps. It works a batch at a time in memory and hands the
# store whole rows, so a backend needs no knowledge of the merge rules.


class Stamped(msgspec.Struct, array_like=True):
    """A value and the event that set it; the newest (timestamp, messageId, source)
    wins. The source settles ties the log allows: one messageId from two sources."""

    value: Any
    ts: str
    message_id: str
    source: str = ""


class Activity(msgspec.Struct, omit_defaults=True):
    """What events said about an identifier or a profile; folds are order-free."""

    first_seen: str = ""
    last_seen: str = ""
    events: int = 0
    sources: dict[str, int] = {}
    traits: dict[str, Stamped] = {}
    account: Stamped | None = None
    links_until: str = ""
    """The latest event time of any link touching these identifiers, followed or
    not: a refused link later than it cannot change an event-time-order decision."""


class Node(msgspec.Struct):
    """One identifier (kind, value) and the profile it belongs to.

    `first_ts` is the earliest event that carried it, whatever the order of arrival.
    The events whose home it is (see actors/identity/extract.py) are in the log,
    listed by `GraphStore.add_profile_events`.
    """

    id: int
    kind: str
    value: str
    profile: int
    first_ts: str


Anchor = tuple[str, str, str]
"""(first_ts, kind, value) of a profile's oldest identifier: what names the profile."""


class Profile(msgspec.Struct):
    id: int
    uid: str
    anchor: Anchor
    kinds: dict[str, int]
    activity: Activity
    user_id: str | None = None


class Link(msgspec.Struct, frozen=True):
    """Two identifiers seen on one event: the earliest such event decides its order."""

    a: int
    b: int
    ts: str


class Account(msgspec.Struct):
    group_id: str
    first_seen: str
    last_seen: str
    traits: dict[str, Stamped]


class Merge(msgspec.Struct, frozen=True):
    """The audit trail: which profiles became one (or were re-split), why, on which event."""

    survivor: str
    merged: str
    reason: str
    seq: int
    message_id: str


class Change(enum.IntFlag):
    """Why a profile needs scoring again; stored as an integer, and OR-ed over a
    profile's waiting rows when the scorer takes them."""

    IDENTITY = 1
    MERGE = 2
    TRAITS = 4
    ACTIVITY = 8
    """Events happened. Recorded only beside another reason: alone, it asks nothing of
    the scorer (likelihood comes from the log)."""
    ACCOUNT = 16
    MERGED_AWAY = 32
    """The profile no longer exists: its identifiers joined another (see redirects)."""
    RECOMPUTED = 64


class GraphStore(Protocol):
    """The identity graph's persistence, used from one worker thread by one actor.

    Synchronous on purpose: the merger makes many small reads and writes per batch,
    and one thread hop per batch (not per statement) is what keeps it fast. Reads
    need no transaction, since only the merger writes these tables; every write
    happens between `begin()` and `commit()`, with the batch's checkpoint.
    """

    def begin(self) -> None:
        """Open the write transaction (the caller holds Storage.write_gate)."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def checkpoint(self) -> int: ...

    def generation(self) -> int:
        """Bumped by every rebuild swap: a batch computed on the graph before a swap
        must not be written into the one after, even at the same checkpoint."""
        ...

    def set_checkpoint(self, seq: int) -> None: ...

    def nodes_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Node]: ...

    def nodes_by_id(self, ids: Sequence[int]) -> list[Node]: ...

    def node_ids_of_profiles(self, profiles: Sequence[int]) -> list[int]: ...

    def profiles(self, ids: Sequence[int]) -> list[Profile]: ...

    def next_ids(self) -> tuple[int, int]:
        """(next identifier id, next profile id): a batch hands out ids in memory and
        writes its rows once, at the end."""
        ...

    def insert(self, nodes: Sequence[Node], profiles: Sequence[Profile]) -> None:
        """Rows new to the store (ids from `next_ids`)."""
        ...

    def update(
        self,
        nodes: Sequence[Node],
        moved: Sequence[Node],
        profiles: Sequence[Profile],
        renamed: Sequence[Profile],
    ) -> None:
        """Stored rows, split by what may have changed, so a backend rewrites no more
        than it must: `nodes` kept their profile, `moved` did not; `profiles` kept
        their uid, `renamed` did not (and may take a uid another gave up in the same
        transaction)."""
        ...

    def delete_profiles(self, ids: Sequence[int]) -> None: ...

    def redirect(self, redirects: Sequence[tuple[str, int]]) -> None:
        """(retired uid, profile): keep retired profile ids resolvable."""
        ...

    def repoint(
        self, nodes: Sequence[tuple[int, int]], redirects: Sequence[tuple[int, int]]
    ) -> None:
        """(old, new) profile ids, in order: identifiers, and retired ids, of `old` now
        belong to `new`."""
        ...

    def links_between(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """The earliest time each (a, b) pair (a < b) was seen together, where known."""
        ...

    def save_links(self, links: Sequence[tuple[int, int, str, int]]) -> None:
        """(a, b, ts, seq) with a < b; a pair keeps its earliest time."""
        ...

    def links_of(self, nodes: Sequence[int]) -> list[Link]: ...

    def accounts(self, group_ids: Sequence[str]) -> list[Account]: ...

    def save_accounts(self, accounts: Sequence[Account]) -> None: ...

    def add_profile_events(self, rows: Sequence[tuple[int, int]]) -> None:
        """(node, seq): the event log rows each identifier is home to."""
        ...

    def home_events(self, nodes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(node, event body) for every logged event whose home is one of `nodes`,
        including those added in the open transaction; read as it is consumed."""
        ...

    def count_home_events(self, nodes: Sequence[int]) -> int:
        """How many events `home_events` would give, without reading them."""
        ...

    def record_merges(self, merges: Sequence[Merge]) -> None: ...

    def mark_changed(self, changes: Sequence[tuple[str, int]]) -> None:
        """(profile uid, `Change` flags) for the scorer to pick up, after what is
        already waiting; one per profile the batch changed."""
        ...


# --- Scoring --------------------------------------------------------------------
# The scorer's rows. Like the graph, it works in one worker thread, synchronously, a
# chunk at a time; every write happens between `begin()` and `commit()`.

PROFILE, ACCOUNT = "profile", "account"
"""Subjects of a score."""


class Damaged(dict[str, Any]):
    """Traits read from a row that cannot be decoded (damaged on disk, or by hand):
    empty, with why. The scorer holds the profile or account that carries them."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class DamagedRow(ValueError):
    """Raised for an item whose row is Damaged, so that the item is held."""


def decoded_traits(
    decode: Callable[[bytes], dict[str, Any]], raw: bytes, kind: str, key: object
) -> dict[str, Any]:
    """`decode(raw)`, or Damaged saying which row (`kind` `key`) could not be read."""
    try:
        return decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return Damaged(f"the {kind} row of {key} cannot be read: {exc}")


class ProfileToScore(msgspec.Struct):
    """What scoring one profile needs; `traits` and `account_traits` are filled only
    when the fit must be computed."""

    row: int
    uid: str
    account: str | None
    score: Score | None
    intents: list[bytes] = []
    traits: dict[str, Any] | None = None
    account_traits: dict[str, Any] | None = None


class ProfileInBatch(msgspec.Struct):
    """A profile as a batch run reads it. When its fit was made by the model in use,
    only what its likelihood and grade need is read, and only they are written back;
    otherwise `refit` holds what a whole new score needs."""

    row: int
    account: str | None
    fit_segment: str | None
    likelihood: tuple[Any, ...]
    """As stored: (ltb_score, ltb_segment, ltb_signals as JSON, ltb_model, grade)."""
    intents: list[bytes] = []
    refit: ProfileToScore | None = None
    uid: str = ""
    """The profile id: what a held profile is known by."""


class Deploy(msgspec.Struct, frozen=True):
    version: str
    deployed_at: str
    origin: str
    """What deployed it: a file path, `leadsync model deploy`, or the built-in example."""


class ScoreStore(Protocol):
    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def checkpoint(self) -> int:
        """The last log sequence folded into the behavioural aggregates."""
        ...

    def set_checkpoint(self, seq: int) -> None: ...

    def read_events(self, after: int, limit: int) -> list[StoredEvent]: ...

    def log_head(self) -> int: ...

    def intents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Behavioural aggregates by identifier (kind, value), as stored."""
        ...

    def save_intents(self, rows: dict[tuple[str, str], tuple[float, bytes]]) -> None:
        """(kind, value) -> (time of the newest event, aggregate as stored)."""
        ...

    def reset_intents(self) -> int:
        """Forget every aggregate and read the log again from the start (weights changed);
        returns the log head that the replay has to reach."""
        ...

    def forget_intents(self, older_than: float) -> int:
        """Drop aggregates whose newest event is older than this (epoch seconds)."""
        ...

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def generation(self) -> int:
        """The identity graph's generation (see GraphStore.generation): profile row ids
        and uids read before a rebuild swap mean nothing after it."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Several reads that see one state of the database."""
        ...

    def active_model(self) -> tuple[str, str] | None:
        """(version, model file text) of the newest deploy."""
        ...

    def model(self, version: str) -> tuple[str, str] | None:
        """(digest, text) of a version ever deployed."""
        ...

    def deploy(self, version: str, digest: str, text: str, origin: str) -> None: ...

    def deploys(self, limit: int) -> list[Deploy]: ...

    def changes(self, limit: int) -> list[tuple[int, str, int]]:
        """(row, profile uid, Change flags): the oldest `limit` changes the identity
        actor recorded; a profile changed in several batches has a row for each."""
        ...

    def clear_changes(self, rows: Sequence[int]) -> None:
        """Take rows from `changes` off the list; changes recorded since are rows of
        their own, and stay."""
        ...

    def members(self, group_ids: Sequence[str]) -> list[str]:
        """Uids of the profiles that belong to these accounts."""
        ...

    def profile_count(self) -> int:
        """How many profiles there are (what a batch run will walk)."""
        ...

    def unfolded(self, rows: Sequence[int], after: int, limit: int) -> dict[int, list[StoredEvent]]:
        """Per profile row, the events after log sequence `after` (the fold's
        checkpoint) whose home is one of its identifiers, oldest first; at most
        `limit` in all."""
        ...

    def profiles_by_uid(self, uids: Sequence[str]) -> list[ProfileToScore]:
        """Existing profiles among `uids`, with traits, account traits, aggregates and scores."""
        ...

    def profiles_after(self, row: int, limit: int, fit_model: str) -> list[ProfileInBatch]:
        """The next profiles in row order, with their aggregates; traits only where
        the fit was not made by `fit_model`."""
        ...

    def save_likelihoods(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(ltb_score, ltb_segment, ltb_signals as JSON, ltb_model, ltb_at, grade, row)
        for profiles whose stored fit stays."""
        ...

    def accounts_after(self, group_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """(group id, traits) of the next accounts in id order."""
        ...

    def scores(self, subject: str, ids: Sequence[str]) -> dict[str, Score]:
        """Current scores of profiles (by profile id) or accounts (by group id)."""
        ...

    def scores_by_row(self, rows: Sequence[int]) -> dict[int, Score]:
        """Profiles' scores by profile row (those that have one)."""
        ...

    def scores_after(self, row: int, limit: int) -> dict[int, Score]:
        """The next `limit` scored profiles after profile row `row`, in row order."""
        ...

    def save_profile_scores(self, scores: dict[int, Score]) -> None:
        """By profile row (`ProfileToScore.row`); a merge deletes a profile's row with it."""
        ...

    def save_account_scores(self, scores: dict[str, Score]) -> None: ...

    def forget_gone(self) -> int:
        """Delete scores of profiles and accounts that no longer exist (after a rebuild)."""
        ...


class OutboxRow(msgspec.Struct, frozen=True):
    """One profile's newest payload for one destination, not yet acknowledged."""

    id: int
    uid: str
    payload: bytes
    hash: int
    staged_at: float
    attempts: int


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    destination: str
    uid: str
    payload: bytes
    staged_at: float
    attempts: int
    error: str
    dead_at: float


class Settlement(msgspec.Struct):
    """What became of one round of sends: written in one transaction. Each row is
    named by (outbox id, hash): if the profile's payload changed while it was in
    flight, the row holds the newer one and is left for its own send."""

    delivered: list[tuple[int, str, int]] = []
    """(id, uid, hash)"""
    retry: list[tuple[int, int, float, str, bool]] = []
    """(id, hash, due_at, error, counts as an attempt)"""
    dead: list[tuple[int, int, str]] = []
    """(id, hash, error)"""
    requests: int = 0
    """Calls made, for the daily cap."""
    sender_state: str | None = None
    """What the sender must find again after a crash (Sender.state), if anything."""


class DestinationCounts(msgspec.Struct, frozen=True):
    queued: int
    """Due now or waiting for a retry."""
    held: int
    """Waiting for the batch run to end."""
    dead: int


class OutboxStore(Protocol):
    """Synchronous, on the scorer's or a destination actor's own connection; the
    caller holds the transaction (see ScoreStore.begin)."""

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def subjects(
        self, rows: Sequence[int], with_traits: bool
    ) -> dict[int, tuple[str, dict[str, str], dict[str, Any]]]:
        """Per profile row: its id, its addresses (user_id, email, anonymous_id: the
        oldest of each) and, if asked, its traits."""
        ...

    def stage(
        self,
        destination: str,
        rows: Sequence[tuple[int, str, bytes | None, int]],
        staged_at: float,
        due_at: float | None,
        force: bool = False,
    ) -> int:
        """Queue each (profile row, profile id, payload, hash) whose payload differs both
        from what was staged last and from what the destination acknowledged (`force`:
        every one, for a full resync), due at `due_at`, or if None held until the next
        batch run to end (the one under way, if any); a None payload (the filter said
        no) drops what was queued. Returns how many rows were queued."""
        ...

    def end_run(self, destinations: Sequence[str], now: float) -> int:
        """Everything held for the end of the batch run becomes due; returns how many
        rows of `destinations` that was."""
        ...

    def release(self, destinations: Sequence[str], due_at: float, limit: int) -> int:
        """Up to `limit` held rows per destination become due at `due_at` (for a
        destination made realtime); returns how many."""
        ...

    def due(self, destination: str, now: float, limit: int) -> list[OutboxRow]: ...

    def next_due(self, destination: str) -> float | None: ...

    def settle(self, destination: str, settlement: Settlement, now: float) -> None: ...

    def usage(self, destination: str, now: float) -> int:
        """Requests made in the UTC day of `now`."""
        ...

    def sender_state(self, destination: str) -> str | None:
        """The sender state saved by the last settlement that had one."""
        ...

    def counts(self, destination: str) -> DestinationCounts: ...

    def dead_letters(self, destination: str | None, limit: int) -> list[DeadLetter]: ...

    def replay(
        self, destination: str | None, ids: Sequence[int] | None, now: float
    ) -> tuple[int, int]:
        """Dead letters back into the outbox; returns (replayed, superseded): a dead
        letter whose profile has a newer payload since is dropped, not sent."""
        ...

    def gone(self) -> list[tuple[str, int]]:
        """(destination, profile row) of delivery states whose profile no longer exists
        (merged away): read outside any write transaction, it is a scan."""
        ...

    def forget(self, states: Sequence[tuple[str, int]]) -> None: ...

    def destinations(self) -> set[str]:
        """Every destination the database holds a queue, state or fingerprint for."""
        ...

    def fingerprints(self) -> dict[str, str]:
        """Per destination, the fingerprint of the config last synced for."""
        ...

    def set_fingerprint(self, destination: str, fingerprint: str | None) -> None: ...

    def drop_some(self, destination: str, limit: int) -> int:
        """Up to `limit` outbox rows and delivery states of a destination no longer
        configured; returns how many went. When none are left, the rest of what is
        kept for it goes too, but its dead letters."""
        ...


class Transactional(Protocol):
    """A synchronous store with write transactions of its own (see Transactions in
    storage/sqlite_graph.py)."""

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
