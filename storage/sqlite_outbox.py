"""The outbox, delivery state and dead letters in SQLite, synchronously.

Staging runs inside the scorer's transaction, on its connection, so a score and the
outbox row that carries it commit together; what it queues is decided in
actors/delivery/only_on_change.py, and this store reads delivery states and writes the
decision. Destination actors use their own connection, one short transaction per fetch
or per settled round.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from storage.graph import Stamped
from storage.outbox import (
    DeadLetter,
    DestinationCounts,
    OutboxRow,
    Settlement,
    StagingDecision,
)
from storage.scores import decoded_traits
from storage.sqlite_connect import Transactions, chunks, marks
from storage.sqlite_deletions import deletion_slot, is_deletion
from storage.sqlite_errors import translated

ADDRESSES = (
    "SELECT profile, kind, value FROM identities WHERE profile IN ({}) "
    "AND +kind IN ('email', 'anonymous_id') ORDER BY first_ts DESC, id DESC"
)
"""`+kind`: by the profile index. Left to itself the planner took the (kind, value)
index and read every email and anonymous id for each chunk: a batch run that staged
for destinations went from a minute to hours."""
_SENDER_STATE = "destination_sender_state:"
FINGERPRINT = "destination_fingerprint:"
_RELEASED = "outbox_released_run"
_RELEASED_AT = "outbox_released_at"
"""Held rows carry due_at -N, N the batch run they wait for; they are due once this
reaches N."""
_UPSERT = (
    "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, due_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (destination, profile) DO UPDATE SET "
    "uid = excluded.uid, payload = excluded.payload, hash = excluded.hash, "
    "staged_at = excluded.staged_at, due_at = excluded.due_at, attempts = 0, "
    "last_error = NULL"
)
_STATE = (
    "INSERT INTO destination_state (destination, profile, staged) VALUES (?, ?, ?) "
    "ON CONFLICT (destination, profile) DO UPDATE SET staged = excluded.staged"
)


class _TraitsToStage(msgspec.Struct):
    """The part of a profile's Activity that staging reads (mappings, filters); the
    decoder skips the rest."""

    traits: dict[str, Stamped] = {}


_activity = msgspec.json.Decoder(_TraitsToStage).decode


def _profile_traits(activity: bytes) -> dict[str, Any]:
    return {k: v.value for k, v in _activity(activity).traits.items()}


@translated
class SqliteOutboxStore(Transactions):
    def subjects(
        self, rows: Sequence[int], with_traits: bool
    ) -> dict[int, tuple[str, dict[str, str], dict[str, Any]]]:
        found: dict[int, tuple[str, dict[str, str], dict[str, Any]]] = {}
        for chunk in chunks(list(rows)):
            columns = "id, uid, user_id" + (", activity" if with_traits else "")
            for row in self._db.execute(
                f"SELECT {columns} FROM profiles WHERE id IN ({marks(chunk)})", chunk
            ):
                addresses = {"user_id": row[2]} if row[2] is not None else {}
                traits = (
                    decoded_traits(_profile_traits, row[3], "profile", row[1])
                    if with_traits
                    else {}
                )
                found[row[0]] = (row[1], addresses, traits)
            # The oldest email and anonymous id: the ones a destination most likely knows.
            for profile, kind, value in self._db.execute(ADDRESSES.format(marks(chunk)), chunk):
                if profile in found:
                    found[profile][1][kind] = value
        return found

    def delivery_states(
        self, destination: str, profiles: Sequence[int]
    ) -> dict[int, tuple[int | None, int]]:
        states: dict[int, tuple[int | None, int]] = {}
        for chunk in chunks(profiles):
            for profile, acked, staged in self._db.execute(
                "SELECT profile, acked, staged FROM destination_state "
                f"WHERE destination = ? AND profile IN ({marks(chunk)})",
                (destination, *chunk),
            ):
                states[profile] = (acked, staged)
        return states

    def queued(self, destination: str, profiles: Sequence[int]) -> set[int]:
        return {
            profile
            for chunk in chunks(profiles)
            for (profile,) in self._db.execute(
                f"SELECT profile FROM outbox WHERE destination = ? AND profile IN ({marks(chunk)})",
                (destination, *chunk),
            )
        }

    def apply_staging(
        self,
        destination: str,
        decision: StagingDecision,
        staged_at: float,
        due_at: float | None,
    ) -> None:
        """One executemany each for the deletes, the upserts and the staged hashes; the
        run a held row waits for is read only when rows are queued."""
        db = self._db
        db.executemany(
            "DELETE FROM outbox WHERE destination = ? AND profile = ?",
            ((destination, profile) for profile in decision.dropped),
        )
        if decision.queued:
            if due_at is None:
                due_at = -(self._released() + 1)  # held for the end of this batch run
            db.executemany(
                _UPSERT,
                (
                    (destination, profile, uid, payload, digest, staged_at, due_at)
                    for profile, uid, payload, digest in decision.queued
                ),
            )
        db.executemany(
            _STATE, ((destination, profile, digest) for profile, digest in decision.staged)
        )

    def _released(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_RELEASED,)).fetchone()
        return 0 if row is None else int(row[0])

    def _released_at(self) -> float:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_RELEASED_AT,)).fetchone()
        return 0.0 if row is None else float(row[0])

    def end_run(self, destinations: Sequence[str], now: float) -> int:
        """Everything held for the end of the batch run becomes due: one number is
        written, not every row. Returns how many rows that released."""
        run = self._released() + 1
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(_RELEASED, str(run)), (_RELEASED_AT, repr(now))],
        )
        return sum(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE destination = ? AND due_at = ?", (name, -run)
            ).fetchone()[0]
            for name in destinations
        )

    def release(self, destinations: Sequence[str], due_at: float, limit: int) -> int:
        return sum(
            self._db.execute(
                "UPDATE outbox SET due_at = ? WHERE id IN (SELECT id FROM outbox "
                "WHERE destination = ? AND due_at < 0 LIMIT ?)",
                (due_at, name, limit),
            ).rowcount
            for name in destinations
        )

    def due(self, destination: str, now: float, limit: int) -> list[OutboxRow]:
        """Oldest first. A row a batch run held counts as due from when the last run
        ended: after what was due before then, before what came due since, older
        runs' rows before newer ones'. Two index scans, merged."""
        released, released_at = self._released(), self._released_at()
        columns = "id, uid, payload, hash, staged_at, attempts, due_at"
        timed = self._db.execute(
            f"SELECT {columns} FROM outbox WHERE destination = ? AND due_at >= 0 "
            "AND due_at <= ? ORDER BY due_at, id LIMIT ?",
            (destination, now, limit),
        ).fetchall()
        held = self._db.execute(
            f"SELECT {columns} FROM outbox WHERE destination = ? AND due_at < 0 "
            "AND due_at >= ? ORDER BY due_at DESC, id LIMIT ?",
            (destination, -released, limit),
        ).fetchall()
        before = [row for row in timed if row[-1] <= released_at]
        after = timed[len(before) :]
        return [OutboxRow(*row[:-1]) for row in (*before, *held, *after)][:limit]

    def next_due(self, destination: str) -> float | None:
        """The earliest due time; a negative one (held, and released) is due now."""
        row = self._db.execute(
            "SELECT min(due_at) FROM outbox WHERE destination = ? AND due_at >= ?",
            (destination, -self._released()),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def settle(self, destination: str, settlement: Settlement, now: float) -> None:
        db = self._db
        db.executemany(
            "DELETE FROM outbox WHERE id = ? AND hash = ?",
            [(row, digest) for row, _, digest in settlement.delivered],
        )
        db.executemany(
            # By profile id: a rebuild may have renumbered the rows since the send.
            "UPDATE destination_state SET acked = ? WHERE destination = ? "
            "AND profile = (SELECT id FROM profiles WHERE uid = ?)",
            [(digest, destination, uid) for _, uid, digest in settlement.delivered],
        )
        db.executemany(
            "UPDATE outbox SET due_at = ?, last_error = ?, attempts = attempts + ? "
            "WHERE id = ? AND hash = ?",
            [
                (due, error, int(counts), row, digest)
                for row, digest, due, error, counts in settlement.retry
            ],
        )
        db.executemany(
            "INSERT INTO dead_letters (destination, uid, payload, hash, staged_at, attempts, "
            "error, dead_at) SELECT destination, uid, payload, hash, staged_at, attempts + 1, "
            "?, ? FROM outbox WHERE id = ? AND hash = ?",
            [(error, now, row, digest) for row, digest, error in settlement.dead],
        )
        db.executemany(
            "DELETE FROM outbox WHERE id = ? AND hash = ?",
            [(row, digest) for row, digest, _ in settlement.dead],
        )
        if settlement.sender_state is not None:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_SENDER_STATE + destination, settlement.sender_state),
            )
        if settlement.requests:
            db.execute(
                "INSERT INTO destination_usage (destination, day, requests) VALUES (?, ?, ?) "
                "ON CONFLICT (destination, day) DO UPDATE SET "
                "requests = requests + excluded.requests",
                (destination, utc_day(now), settlement.requests),
            )

    def usage(self, destination: str, now: float) -> int:
        row = self._db.execute(
            "SELECT requests FROM destination_usage WHERE destination = ? AND day = ?",
            (destination, utc_day(now)),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def sender_state(self, destination: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (_SENDER_STATE + destination,)
        ).fetchone()
        return None if row is None else str(row[0])

    def counts(self, destination: str) -> DestinationCounts:
        released = -self._released()
        queued, held = self._db.execute(
            "SELECT count(*) FILTER (WHERE due_at >= ?), count(*) FILTER (WHERE due_at < ?) "
            "FROM outbox WHERE destination = ?",
            (released, released, destination),
        ).fetchone()
        (dead,) = self._db.execute(
            "SELECT count(*) FROM dead_letters WHERE destination = ?", (destination,)
        ).fetchone()
        return DestinationCounts(queued, held, dead)

    def dead_letters(self, destination: str | None, limit: int) -> list[DeadLetter]:
        where, args = _which("", destination, None)
        return [
            DeadLetter(*row)
            for row in self._db.execute(
                "SELECT id, destination, uid, payload, staged_at, attempts, error, dead_at "
                f"FROM dead_letters {where} ORDER BY id LIMIT ?",
                (*args, limit),
            )
        ]

    def replay(
        self, destination: str | None, ids: Sequence[int] | None, now: float
    ) -> tuple[int, int]:
        where, args = _which("d.", destination, ids)
        letters = self._db.execute(
            "SELECT d.id, d.destination, p.id, d.uid, d.payload, d.hash, d.staged_at, s.staged "
            "FROM dead_letters d LEFT JOIN profiles p ON p.uid = d.uid "
            "LEFT JOIN destination_state s ON s.destination = d.destination "
            f"AND s.profile = p.id {where} ORDER BY d.id",
            args,
        ).fetchall()
        # A deletion request has no profile and is never stale: it is the only way the
        # destination hears of the erasure. Any other letter goes back only if it is
        # still its profile's latest payload for the destination.
        # A deletion request's profile is gone: only such a letter is decoded to see.
        deletions, current = [], []
        for row in letters:
            if row[2] is None:
                if is_deletion(bytes(row[4])):
                    deletions.append(row)
            elif row[7] == row[5]:
                current.append(row)
        self._db.executemany(
            "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, due_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (destination, profile) DO NOTHING",
            [(*row[1:7], now) for row in current],
        )
        for row in deletions:
            self._db.execute(
                "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, "
                "due_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row[1], deletion_slot(self._db), *row[3:7], now),
            )
        current += deletions
        self._db.executemany("DELETE FROM dead_letters WHERE id = ?", [(r[0],) for r in letters])
        return len(current), len(letters) - len(current)

    def gone(self) -> list[tuple[str, int]]:
        return self._db.execute(
            "SELECT destination, profile FROM destination_state "
            "WHERE profile NOT IN (SELECT id FROM profiles)"
        ).fetchall()

    def forget(self, states: Sequence[tuple[str, int]]) -> None:
        self._db.executemany(
            "DELETE FROM destination_state WHERE destination = ? AND profile = ?", states
        )

    def destinations(self) -> set[str]:
        """Every destination with a queue or delivery state: one index seek each."""
        found: set[str] = set()
        for table in ("outbox", "destination_state"):
            name = ""
            while (
                row := self._db.execute(
                    f"SELECT min(destination) FROM {table} WHERE destination > ?", (name,)
                ).fetchone()[0]
            ) is not None:
                found.add(name := row)
        return found | set(self.fingerprints())

    def fingerprints(self) -> dict[str, str]:
        return {
            key.removeprefix(FINGERPRINT): value
            for key, value in self._db.execute(
                "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
                (FINGERPRINT, FINGERPRINT[:-1] + chr(ord(FINGERPRINT[-1]) + 1)),
            )
        }

    def set_fingerprint(self, destination: str, fingerprint: str | None) -> None:
        if fingerprint is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (FINGERPRINT + destination,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (FINGERPRINT + destination, fingerprint),
            )

    def drop_some(self, destination: str, limit: int) -> int:
        """Up to `limit` outbox rows and as many delivery states of a destination no
        longer configured; returns how many went. When none are left, its usage counts,
        sender state and fingerprint go too (its dead letters stay, for the record)."""
        queued = self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE destination = ? LIMIT ?)",
            (destination, limit),
        ).rowcount
        known = self._db.execute(
            "DELETE FROM destination_state WHERE destination = ? AND profile IN "
            "(SELECT profile FROM destination_state WHERE destination = ? LIMIT ?)",
            (destination, destination, limit),
        ).rowcount
        if not queued + known:
            self._db.execute("DELETE FROM destination_usage WHERE destination = ?", (destination,))
            self._db.execute("DELETE FROM meta WHERE key = ?", (_SENDER_STATE + destination,))
            self.set_fingerprint(destination, None)
        return queued + known


def _which(
    alias: str, destination: str | None, ids: Sequence[int] | None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    args: list[Any] = []
    if destination is not None:
        clauses.append(f"{alias}destination = ?")
        args.append(destination)
    if ids is not None:
        clauses.append(f"{alias}id IN ({marks(ids)})")
        args += ids
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def utc_day(epoch: float) -> str:
    """Daily caps count by the UTC day, as the APIs that have them do."""
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()
