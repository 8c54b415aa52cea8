"""The SQLite backend: one file, WAL, one writer at a time.

Two connections: writes go through one (serialised by a lock, opened with
BEGIN IMMEDIATE so a busy database waits for the lock instead of failing at the first
write), reads through the other, which WAL lets run beside a write. aiosqlite hops to
its own thread for every call, so each method does its work in as few calls as it can
(executemany per request, never a statement per row).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import aiosqlite
import anyio
import anyio.lowlevel
import msgspec
import structlog

from storage.base import (
    ACCOUNT,
    PROFILE,
    AccountView,
    Activity,
    AppendRequest,
    AppendResult,
    IdentityView,
    ProfileView,
    QuarantinedMessage,
    ScoreView,
    Stamped,
    StoredEvent,
)
from storage.migrations import MIGRATIONS, SCORE_COLUMNS
from storage.sqlite_scores import score_of

log = structlog.get_logger(__name__)

QUARANTINE_KEEP = 10_000
"""Quarantine keeps the newest rejects only, so a broken client cannot fill the disk."""

_INSERT_EVENT = (
    "INSERT INTO events (source, message_id, type, received_at, body) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (source, message_id) DO NOTHING"
)
_INSERT_REJECT = (
    "INSERT INTO quarantine (source, received_at, batch_index, reason, body) VALUES (?, ?, ?, ?, ?)"
)


class SchemaTooNew(Exception):
    """The file was written by a newer leadsync; running older code on it could corrupt it."""


class SqliteStorage:
    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        lookup: aiosqlite.Connection,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._lookup = lookup
        """Profile lookups read several tables in one snapshot (a read transaction),
        so they get their own connection and lock rather than stall other readers."""
        self._lookup_lock = anyio.Lock()
        self.write_gate = anyio.Semaphore(1)
        """Every in-process writer of this file holds it (see Storage.write_gate)."""

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout: float = 5.0, journal_size_limit: int = 64 << 20
    ) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, busy_timeout)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute(f"PRAGMA journal_size_limit = {int(journal_size_limit)}")
            await _migrate(writer, path)
            reader = await _connect(path, busy_timeout)
            lookup = await _connect(path, busy_timeout)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader, lookup)

    async def append(self, requests: Sequence[AppendRequest]) -> tuple[list[AppendResult], int]:
        results: list[AppendResult] = []
        async with self.write_gate, _transaction(self._writer) as db:
            for request in requests:
                stored = 0
                if request.events:
                    cursor = await db.executemany(
                        _INSERT_EVENT,
                        [
                            (request.source, e.message_id, e.type, e.received_at, e.body)
                            for e in request.events
                        ],
                    )
                    stored = cursor.rowcount
                if request.rejected:
                    await db.executemany(
                        _INSERT_REJECT,
                        [
                            (request.source, request.received_at, r.batch_index, r.reason, r.body)
                            for r in request.rejected
                        ],
                    )
                results.append(AppendResult(stored, len(request.events) - stored))
            head = await _scalar(db, "SELECT coalesce(max(seq), 0) FROM events")
        return results, head

    async def log_head(self) -> int:
        return await _scalar(self._reader, "SELECT coalesce(max(seq), 0) FROM events")

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

    async def profile(self, kind: str, value: str, last_events: int) -> ProfileView | None:
        db = self._lookup
        async with self._lookup_lock:
            await db.execute("BEGIN")
            try:
                return await _profile_view(db, kind, value, last_events)
            finally:
                await db.execute("COMMIT")

    async def probe_writable(self) -> None:
        now = datetime.now(UTC).isoformat()
        async with self.write_gate, _transaction(self._writer) as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now,),
            )

    async def maintain(self) -> None:
        async with self.write_gate:
            async with _transaction(self._writer) as db:
                await db.execute(
                    "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?",
                    (QUARANTINE_KEEP,),
                )
            # TRUNCATE waits (busy timeout) for readers to move past the WAL, then
            # empties it, so the WAL cannot grow without bound under steady reads.
            cursor = await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, wal_pages, moved = await cursor.fetchone() or (0, 0, 0)
        if busy:
            log.info("wal checkpoint incomplete, readers active", wal_pages=wal_pages, moved=moved)

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
            async with self.write_gate:
                try:
                    await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    log.warning("final wal checkpoint failed", error=str(exc))
                await self._reader.close()
                await self._lookup.close()
                await self._writer.close()


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves rather than let the
    # sqlite3 module open deferred transactions that fail with "database is locked".
    db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    # FULL: an acknowledged event survives power loss, not only a process crash.
    # Group commit is what keeps that affordable.
    await db.execute("PRAGMA synchronous = FULL")
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


def _text(body: bytes) -> str:
    return bytes(body).decode("utf-8", "replace")


async def _scalar(db: aiosqlite.Connection, sql: str) -> int:
    cursor = await db.execute(sql)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    version = await _scalar(db, "PRAGMA user_version")
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this leadsync knows "
            f"({len(MIGRATIONS)}); run the newer leadsync or restore a backup"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        statements = [s for s in script.split(";") if s.strip()]
        async with _transaction(db):
            for statement in statements:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number}")
        log.info("schema migrated", path=str(path), version=number)


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
