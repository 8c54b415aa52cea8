"""Held items in SQLite (storage/held.py), on a consumer's own synchronous connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.graph import Change
from storage.held import Held, HeldItem, HeldKind, Withdrawn
from storage.sqlite_connect import Transactions, chunks, marks
from storage.sqlite_errors import translated

_COLUMNS = "id, component, kind, key, error, attempts, held_at, retry, body"
_RESCORE = int(Change.IDENTITY | Change.TRAITS | Change.RECOMPUTED)
"""A profile's flags on the to-do list when its retry is asked for: fit and likelihood."""


def _row(row: Any) -> Held:
    """A row of `_COLUMNS`, as sqlite3 returns it."""
    id_, component, kind, key, error, attempts, held_at, retry, body = row
    return Held(id_, component, kind, key, error, attempts, held_at, bool(retry), body)


@translated
class SqliteHeldStore(Transactions):
    """Its own transactions serve `leadsync held`; consumers hold in theirs."""

    def hold(self, items: Sequence[HeldItem], now: float) -> None:
        self._db.executemany(
            "INSERT INTO held (component, kind, key, error, attempts, body, held_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (component, kind, key) DO UPDATE SET "
            "error = excluded.error, attempts = held.attempts + excluded.attempts, "
            "body = coalesce(excluded.body, held.body), held_at = excluded.held_at, retry = 0",
            [(i.component, i.kind, i.key, i.error, i.attempts, i.body, now) for i in items],
        )

    def release(self, retried: Sequence[Held]) -> None:
        for held in retried:
            gone = self._db.execute(
                "DELETE FROM held WHERE id = ? AND component = ? AND kind = ? AND key = ? "
                "AND retry = 1",
                (held.id, held.component, held.kind, held.key),
            ).rowcount
            if gone != 1:
                raise Withdrawn(f"held item {held.id} changed or went while it was retried")

    def release_keys(self, component: str, kind: HeldKind, keys: Sequence[str]) -> None:
        self._db.executemany(
            "DELETE FROM held WHERE component = ? AND kind = ? AND key = ?",
            [(component, kind, key) for key in keys],
        )

    def holds(self, component: str, kind: HeldKind) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM held WHERE component = ? AND kind = ? LIMIT 1", (component, kind)
        ).fetchone()
        return row is not None

    def to_retry(self, component: str, kind: HeldKind, limit: int) -> list[Held]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM held WHERE component = ? AND kind = ? AND retry = 1 "
            "ORDER BY id LIMIT ?",
            (component, kind, limit),
        )
        return [_row(row) for row in rows]

    def listed(self, component: str | None, limit: int) -> tuple[int, list[Held]]:
        where, params = ("WHERE component = ?", (component,)) if component else ("", ())
        total = int(self._db.execute(f"SELECT count(*) FROM held {where}", params).fetchone()[0])
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM held {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return total, [_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT component, count(*) FROM held GROUP BY component")
        return {str(component): int(n) for component, n in rows}

    def retry(self, ids: Sequence[int] | None, component: str | None) -> tuple[int, int]:
        chosen = self._chosen(ids, component)
        requeued = flagged = 0
        for held in chosen:
            if held.kind == "profile":
                self._db.execute(
                    "INSERT INTO profile_changes (uid, reasons) VALUES (?, ?)",
                    (held.key, _RESCORE),
                )
            elif held.kind == "account":
                # Any member: rescoring a member whose account changed rescores the
                # account. One with no member left has nothing to score: it goes.
                queued = self._db.execute(
                    "INSERT INTO profile_changes (uid, reasons) "
                    "SELECT uid, ? FROM profiles WHERE account_id = ? LIMIT 1",
                    (int(Change.ACCOUNT), held.key),
                ).rowcount
                if not queued:
                    self._db.execute("DELETE FROM held WHERE id = ?", (held.id,))
                    continue
            else:
                self._db.execute("UPDATE held SET retry = 1 WHERE id = ?", (held.id,))
                flagged += 1
                continue
            self._db.execute("DELETE FROM held WHERE id = ?", (held.id,))
            requeued += 1
        return requeued, flagged

    def drop(
        self, ids: Sequence[int] | None, component: str | None, kind: HeldKind | None = None
    ) -> int:
        chosen = [h.id for h in self._chosen(ids, component) if kind is None or h.kind == kind]
        self._db.executemany("DELETE FROM held WHERE id = ?", [(i,) for i in chosen])
        return len(chosen)

    def _chosen(self, ids: Sequence[int] | None, component: str | None) -> list[Held]:
        where, params = ("WHERE component = ?", [component]) if component else ("", [])
        if ids is None:
            return [
                _row(row)
                for row in self._db.execute(f"SELECT {_COLUMNS} FROM held {where}", params)
            ]
        found: list[Held] = []
        for chunk in chunks(list(ids)):
            clause = f"{where} AND" if where else "WHERE"
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM held {clause} id IN ({marks(chunk)})",
                [*params, *chunk],
            )
            found += [_row(row) for row in rows]
        return found
