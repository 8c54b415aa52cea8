"""The SQLite backend: two files, WAL, one writer at a time in each.

The event log has a file of its own (storage/sqlite_log.py); everything derived from
it (graph, profiles, scores, outbox, checkpoints) lives in the main file. Writes to the
main file go through one connection here (serialised by the write gate, opened with
BEGIN IMMEDIATE so a busy database waits for the lock instead of failing at the first
write), reads through others, which WAL lets run beside a write, with the log
attached. aiosqlite hops to its own thread for every call, so each method does its
work in as few calls as it can.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import aiosqlite
import anyio
import anyio.lowlevel
import msgspec
import structlog

from storage.backend import AccountView, IdentityView, ProfileView, ScoreView
from storage.errors import LogBehind, StorageError
from storage.graph import Activity, Stamped
from storage.held import Held
from storage.log import DEDUP_WINDOW, AppendRequest, AppendResult, QuarantinedMessage, StoredEvent
from storage.migrations import MIGRATIONS, SCORE_COLUMNS, migrate
from storage.scores import ACCOUNT, PROFILE
from storage.sqlite_connect import connect, uri
from storage.sqlite_errors import translated
from storage.sqlite_log import EventLog
from storage.sqlite_retention import CONSUMERS, TRIM_CHUNKS, TRIM_ROWS, retention_cutoff
from storage.sqlite_scores import score_of

log = structlog.get_logger(__name__)


@translated
class SqliteStorage:
    def __init__(
        self,
        path: Path,
        log: EventLog,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        lookup: aiosqlite.Connection,
        retain_events: float | None = None,
    ) -> None:
        self.path = path
        self._retain_events = retain_events
        self._log = log
        self._log_gate = anyio.Lock()
        """Group commits and the log's maintenance take turns on its connection."""
        self._writer = writer
        self._reader = reader
        self._lookup = lookup
        """Profile lookups read several tables in one snapshot (a read transaction),
        so they get their own connection and lock rather than stall other readers."""
        self._lookup_lock = anyio.Lock()
        self.write_gate = anyio.Semaphore(1)
        """Every in-process writer of the main file holds it (see Storage.write_gate)."""

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout: float = 5.0,
        journal_size_limit: int = 64 << 20,
        dedup_window: float = DEDUP_WINDOW,
        retain_events: float | None = None,
    ) -> Self:
        events = await anyio.to_thread.run_sync(
            _prepare, path, busy_timeout, journal_size_limit, dedup_window
        )
        opened: list[aiosqlite.Connection] = []
        try:
            opened.append(writer := await _connect(path, busy_timeout))
            opened.append(reader := await _connect(path, busy_timeout, attach=events.path))
            opened.append(lookup := await _connect(path, busy_timeout, attach=events.path))
        except BaseException:
            for db in opened:
                await db.close()
            events.close()
            raise
        return cls(path, events, writer, reader, lookup, retain_events)

    async def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        # One hop for the whole transaction; not abandoned when cancelled, so it always
        # ends committed or rolled back before the next one starts. Retries are looked
        # up before, on the event loop: a lookup is some twenty numpy calls that each
        # let go of the interpreter lock, and a worker thread taking it back from the
        # busy loop waits up to the switch interval each time, far longer in all than
        # the lookup itself.
        async with self._log_gate:
            looked_up = self._log.look_up(requests)
            return await anyio.to_thread.run_sync(self._log.append, requests, looked_up)

    async def log_head(self) -> int:
        return self._log.head  # the log's one writer keeps it

    async def read_events(self, after: int, limit: int) -> list[StoredEvent]:
        cursor = await self._reader.execute(
            "SELECT seq, source, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [StoredEvent(seq, source, body) for seq, source, body in await cursor.fetchall()]

    async def checkpoints(self) -> dict[str, int]:
        cursor = await self._reader.execute("SELECT consumer, seq FROM checkpoints")
        return {str(consumer): int(seq) for consumer, seq in await cursor.fetchall()}

    async def quarantined(self, limit: int) -> tuple[int, list[QuarantinedMessage]]:
        total = await _scalar(self._reader, "SELECT count(*) FROM quarantine")
        cursor = await self._reader.execute(
            "SELECT id, source, received_at, batch_index, reason, body FROM quarantine "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        rows = [
            QuarantinedMessage(
                id_, source, at, index, reason, bytes(body).decode("utf-8", "replace")
            )
            for id_, source, at, index, reason, body in await cursor.fetchall()
        ]
        return total, rows

    async def held(self, limit: int) -> tuple[dict[str, int], list[Held]]:
        cursor = await self._reader.execute(
            "SELECT component, count(*) FROM held GROUP BY component"
        )
        counts = {str(component): int(n) for component, n in await cursor.fetchall()}
        cursor = await self._reader.execute(
            "SELECT id, component, kind, key, error, attempts, held_at, retry, body FROM held "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        rows = [
            Held(*row[:7], retry=bool(row[7]), body=row[8])  # type: ignore[misc]
            for row in await cursor.fetchall()
        ]
        return counts, rows

    async def profile(self, kind: str, value: str, last_events: int) -> ProfileView | None:
        db = self._lookup
        async with self._lookup_lock:
            await db.execute("BEGIN")
            try:
                return await _profile_view(db, kind, value, last_events)
            finally:
                await db.execute("COMMIT")

    async def probe_writable(self) -> None:
        async with self._log_gate:
            await anyio.to_thread.run_sync(self._log.probe)
        async with self.write_gate, _transaction(self._writer) as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (datetime.now(UTC).isoformat(),),
            )

    async def maintain(self) -> None:
        if self._retain_events is not None:
            await self.trim_events(self._retain_events)
        async with self._log_gate:
            _report_checkpoint(self._log.path, *await anyio.to_thread.run_sync(self._log.maintain))
        async with self.write_gate:
            # TRUNCATE waits (busy timeout) for readers to move past the WAL, then
            # empties it, so the WAL cannot grow without bound under steady reads.
            cursor = await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _report_checkpoint(self.path, *(await cursor.fetchone() or (0, 0, 0)))

    async def trim_events(self, retain: float) -> int:
        """Retention: delete events received more than `retain` seconds ago that every
        consumer has applied, a small transaction at a time, each under the log's gate
        so that group commits go on between them. Profiles keep their aggregates."""
        cursor = await self._reader.execute("SELECT consumer, seq FROM checkpoints")
        applied = {str(name): int(seq) for name, seq in await cursor.fetchall()}
        upto = min(applied.get(name, 0) for name in CONSUMERS)
        before = retention_cutoff(retain)
        trimmed = 0
        for _ in range(TRIM_CHUNKS):
            async with self._log_gate:
                gone = await anyio.to_thread.run_sync(self._log.trim, before, upto, TRIM_ROWS)
            trimmed += gone
            if gone < TRIM_ROWS:
                break
        if trimmed:
            log.info("event log trimmed", events=trimmed, received_before=before, upto=upto)
        return trimmed

    async def cursor(self, source: str) -> str | None:
        async with self._log_gate:
            return await anyio.to_thread.run_sync(self._log.cursor, source)

    async def get_meta(self, key: str) -> str | None:
        cursor = await self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,))
        row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self.write_gate, _transaction(self._writer) as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._log_gate, self.write_gate:
                await self._reader.close()
                await self._lookup.close()
                try:
                    await anyio.to_thread.run_sync(self._log.checkpoint)
                    await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except (sqlite3.Error, StorageError) as exc:
                    log.warning("final wal checkpoint failed", error=str(exc))
                self._log.close()
                await self._writer.close()


def _prepare(
    path: Path, busy_timeout: float, journal_size_limit: int, dedup_window: float
) -> EventLog:
    """Create or migrate both files; the log first, since the main file's migration 5
    moves an older database's log into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    events = EventLog.open(path, busy_timeout, journal_size_limit, dedup_window)
    try:
        with closing(connect(path, busy_timeout)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA journal_size_limit = {int(journal_size_limit)}")
            migrate(db, path, MIGRATIONS, {5: lambda: events.move_from(path)})
            _check_log_covers_checkpoints(db, events)
    except BaseException:
        events.close()
        raise
    return events


def _check_log_covers_checkpoints(db: sqlite3.Connection, events: EventLog) -> None:
    head = events.head
    row = db.execute(
        "SELECT consumer, seq FROM checkpoints WHERE seq > ? ORDER BY seq DESC LIMIT 1", (head,)
    ).fetchone()
    if row is not None:
        raise LogBehind(
            f"{events.path} ends at event {head}, but {row[0]} has applied up to {row[1]}: the "
            "event log and the database beside it come from different moments (was one "
            "restored, or the log deleted?). Restore both from the same backup."
        )


def _report_checkpoint(path: Path, busy: int, wal_pages: int, moved: int) -> None:
    if busy:
        log.info(
            "wal checkpoint incomplete, readers active",
            path=str(path),
            wal_pages=wal_pages,
            moved=moved,
        )


async def _connect(
    path: Path, busy_timeout: float, attach: Path | None = None
) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves rather than let the
    # sqlite3 module open deferred transactions that fail with "database is locked".
    db = await aiosqlite.connect(uri(path), uri=True, isolation_level=None, timeout=busy_timeout)
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    await db.execute("PRAGMA synchronous = FULL")  # what meta holds: write keys, deploys
    if attach is not None:
        await db.execute("ATTACH DATABASE ? AS log", (uri(attach, readonly=True),))
    return db


_decode_activity = msgspec.json.Decoder(Activity).decode
_decode_traits = msgspec.json.Decoder(dict[str, Stamped]).decode


async def _profile_view(
    db: aiosqlite.Connection, kind: str, value: str, last_events: int
) -> ProfileView | None:
    if kind == "profile":
        sql = (
            "SELECT id FROM profiles WHERE uid = ?1 "
            "UNION ALL SELECT profile FROM profile_redirects WHERE uid = ?1 LIMIT 1"
        )
        params: tuple[str, ...] = (value,)
    else:
        sql, params = "SELECT profile FROM identities WHERE kind = ? AND value = ?", (kind, value)
    row = await (await db.execute(sql, params)).fetchone()
    if row is None:
        return None
    profile_id = row[0]
    row = await (
        await db.execute("SELECT uid, user_id, activity FROM profiles WHERE id = ?", (profile_id,))
    ).fetchone()
    if row is None:
        return None
    uid, user_id, raw_activity = row
    activity = _decode_activity(raw_activity)
    identities = [
        IdentityView(k, v, ts)
        for k, v, ts in await db.execute_fetchall(
            "SELECT kind, value, first_ts FROM identities WHERE profile = ? ORDER BY kind, value",
            (profile_id,),
        )
    ]
    merged = [
        r[0]
        for r in await db.execute_fetchall(
            "SELECT uid FROM profile_redirects WHERE profile = ? ORDER BY uid", (profile_id,)
        )
    ]
    events = [
        msgspec.Raw(bytes(r[0]))
        for r in await db.execute_fetchall(
            "SELECT e.body FROM profile_events pe JOIN events e ON e.seq = pe.seq "
            "WHERE pe.node IN (SELECT id FROM identities WHERE profile = ?) "
            "ORDER BY pe.seq DESC LIMIT ?",
            (profile_id, last_events),
        )
    ]
    account = None
    if activity.account is not None:
        row = await (
            await db.execute(
                "SELECT group_id, first_seen, last_seen, traits FROM accounts WHERE group_id = ?",
                (activity.account.value,),
            )
        ).fetchone()
        if row is not None:
            traits = {name: s.value for name, s in _decode_traits(row[3]).items()}
            account = AccountView(
                row[0], row[1], row[2], traits, await _score_view(db, ACCOUNT, row[0])
            )
    return ProfileView(
        profile_id=uid,
        user_id=user_id,
        first_seen=activity.first_seen,
        last_seen=activity.last_seen,
        events=activity.events,
        sources=activity.sources,
        identities=identities,
        traits={name: stamp.value for name, stamp in sorted(activity.traits.items())},
        account=account,
        merged_ids=merged,
        last_events=events,
        scores=await _score_view(db, PROFILE, profile_id),
    )


async def _score_view(db: aiosqlite.Connection, subject: str, key: str | int) -> ScoreView | None:
    row = await (
        await db.execute(
            f"SELECT {SCORE_COLUMNS} FROM profile_scores WHERE profile = ?"
            if subject == PROFILE
            else f"SELECT {SCORE_COLUMNS} FROM account_scores WHERE group_id = ?",
            (key,),
        )
    ).fetchone()
    score = None if row is None else score_of(row)
    if score is None:
        return None
    return ScoreView(
        traits=score.traits(),
        fit_model=score.fit_model,
        fit_at=_iso(score.fit_at),
        likelihood_model=score.ltb_model,
        likelihood_at=_iso(score.ltb_at),
    )


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


async def _scalar(db: aiosqlite.Connection, sql: str) -> int:
    cursor = await db.execute(sql)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any failure, cancellation included."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def __aenter__(self) -> aiosqlite.Connection:
        # aiosqlite runs the BEGIN in its own thread whatever happens to us: were we
        # cancelled while it waits for the lock (a /readyz timeout), it would still
        # open a transaction nobody ends, and every later write on this connection
        # would fail. So wait for it (the busy timeout bounds that), then honour the
        # cancellation with the transaction rolled back.
        with anyio.CancelScope(shield=True):
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            await self._db.execute("BEGIN IMMEDIATE")
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await self._rollback_shielded()
            raise
        return self._db

    async def _rollback_shielded(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._rollback()

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        with anyio.CancelScope(shield=True):
            if kind is None:
                try:
                    await self._db.execute("COMMIT")
                    return
                except BaseException:
                    await self._rollback()
                    raise
            await self._rollback()

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            await self._db.execute("ROLLBACK")
