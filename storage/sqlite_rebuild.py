"""The rebuild's side of the identity graph's SQLite store (actors/identity/rebuild.py):
the scratch database the log is replayed into, and the steps of the swap that puts
the rebuilt graph in place of the live one (storage/rebuild.py's `GraphSwap`), run
in one transaction by actors/identity/swap.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from storage.errors import StorageRefused
from storage.graph import Change
from storage.migrations import MIGRATIONS, SCORE_COLUMNS
from storage.rebuild import ProfileRows
from storage.sqlite_connect import uri
from storage.sqlite_deletions import MAY_BE_DELETION, deletion_slot, is_deletion
from storage.sqlite_errors import translated
from storage.sqlite_graph import GENERATION

GRAPH_TABLES = (
    "profiles",
    "identities",
    "identity_links",
    "profile_redirects",
    "identity_merges",
    "profile_events",
    "accounts",
    "profile_changes",
)


def scratch(path: Path, events: Path | None = None) -> sqlite3.Connection:
    """An empty database of the same schema to rebuild the graph in, beside the real one,
    with the event log at `events` attached read-only, as `connect` does, for the
    merger to read identifiers' events back when it re-decides a profile.

    Nothing in it matters until it is swapped in, so it skips the fsyncs."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(uri(path), uri=True, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = MEMORY")
    db.execute("PRAGMA synchronous = OFF")
    for script in MIGRATIONS:
        db.executescript(script)
    if events is not None and events.exists():  # not before migration 5 (see `connect`)
        db.execute("ATTACH DATABASE ? AS log", (uri(events, readonly=True),))
    return db


@dataclass(frozen=True)
class _Following:
    """How one kind of ProfileRows is noted by uid (into temp.`table`), how its rows of
    vanished ids go, and how the rest are keyed by their uid's new row."""

    table: str
    remember: tuple[str, ...]
    drop: tuple[str, ...]
    rekey: tuple[str, ...]


_VANISHED = "uid NOT IN (SELECT uid FROM main.profiles)"

FOLLOWING = {
    # How each kind of ProfileRows follows its profile id through a swap, in SQL.
    # Scores and delivery states are taken out whole and put back under the new rows.
    ProfileRows.SCORES: _Following(
        "old_scores",
        remember=(
            f"CREATE TEMP TABLE old_scores AS SELECT p.uid, {SCORE_COLUMNS} "
            "FROM main.profile_scores s JOIN main.profiles p ON p.id = s.profile",
            "DELETE FROM main.profile_scores",
        ),
        drop=(f"DELETE FROM temp.old_scores WHERE {_VANISHED}",),
        rekey=(
            f"INSERT INTO main.profile_scores (profile, {SCORE_COLUMNS}) "
            f"SELECT p.id, {SCORE_COLUMNS} FROM temp.old_scores o "
            "JOIN main.profiles p ON p.uid = o.uid",
        ),
    ),
    ProfileRows.DELIVERY_STATES: _Following(
        "old_delivery",
        remember=(
            "CREATE TEMP TABLE old_delivery AS SELECT p.uid, d.destination, d.acked, d.staged "
            "FROM main.destination_state d JOIN main.profiles p ON p.id = d.profile",
            "DELETE FROM main.destination_state",
        ),
        drop=(f"DELETE FROM temp.old_delivery WHERE {_VANISHED}",),
        rekey=(
            "INSERT INTO main.destination_state (destination, profile, acked, staged) "
            "SELECT o.destination, p.id, o.acked, o.staged FROM temp.old_delivery o "
            "JOIN main.profiles p ON p.uid = o.uid",
        ),
    ),
    # Queued rows stay where they are (their ids are their order) and are renumbered
    # in place: by their live profile's uid, not the uid written on the row, which a
    # rename leaves behind. Deletion requests (negative keys) are nobody's and stay.
    ProfileRows.QUEUED: _Following(
        "old_outbox",
        remember=(
            # Keyed by the row's id: the rekey looks each row up in it (unkeyed, that
            # was a scan of the whole table per queued row).
            "CREATE TEMP TABLE old_outbox (id INTEGER PRIMARY KEY, uid TEXT NOT NULL)",
            "INSERT INTO temp.old_outbox SELECT o.id, p.uid FROM main.outbox o "
            "JOIN main.profiles p ON p.id = o.profile",
        ),
        drop=(
            f"DELETE FROM temp.old_outbox WHERE {_VANISHED}",
            "DELETE FROM main.outbox WHERE profile > 0 "
            "AND id NOT IN (SELECT id FROM temp.old_outbox)",
        ),
        rekey=(
            # Through negative keys first: two rows may swap numbers, and (destination,
            # profile) must stay unique at every step.
            "UPDATE main.outbox SET profile = -profile - 4611686018427387904 WHERE profile > 0",
            "UPDATE main.outbox SET profile = (SELECT p.id FROM temp.old_outbox o "
            "JOIN main.profiles p ON p.uid = o.uid WHERE o.id = outbox.id) "
            "WHERE id IN (SELECT id FROM temp.old_outbox)",
        ),
    ),
}


@translated
class SqliteGraphSwap:
    """`GraphSwap` on a session's connection, the rebuilt file attached as `rebuilt`
    while it lasts; what it notes is kept in temporary tables, dropped at its end. A
    context manager: ATTACH and DETACH cannot run inside a transaction."""

    def __init__(self, db: sqlite3.Connection, rebuilt: Path) -> None:
        self._db = db
        self._rebuilt = rebuilt
        self._noted: set[str] = set()

    def __enter__(self) -> SqliteGraphSwap:
        self._db.execute("ATTACH DATABASE ? AS rebuilt", (str(self._rebuilt),))
        return self

    def __exit__(self, *_: object) -> None:
        """A transaction the caller left open is rolled back, as its swap never happened."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._forget()
        finally:
            self._db.execute("DETACH DATABASE rebuilt")

    def remember_profile_ids(self) -> None:
        self._note(
            "old_ids",
            "CREATE TEMP TABLE old_ids AS "
            "SELECT uid, anchor_kind, anchor_value FROM main.profiles UNION ALL "
            "SELECT r.uid, p.anchor_kind, p.anchor_value FROM main.profile_redirects r "
            "JOIN main.profiles p ON p.id = r.profile",
        )

    def remember_changes(self) -> None:
        self._note(
            "old_changes", "CREATE TEMP TABLE old_changes AS SELECT * FROM main.profile_changes"
        )

    def set_deletion_requests_apart(self) -> None:
        # Only the rows whose payload may be one are decoded: a first cut in SQL.
        db = self._db
        for row, payload in db.execute(
            f"SELECT id, payload FROM main.outbox WHERE profile > 0 AND {MAY_BE_DELETION}"
        ).fetchall():
            if is_deletion(bytes(payload)):
                db.execute(
                    "UPDATE main.outbox SET profile = ? WHERE id = ?", (deletion_slot(db), row)
                )

    def remember_by_uid(self, rows: Collection[ProfileRows]) -> None:
        for kind in rows:
            following = FOLLOWING[kind]
            self._note(following.table, *following.remember)

    def replace_graph(self) -> None:
        for table in GRAPH_TABLES:
            self._db.execute(f"DELETE FROM main.{table}")
            self._db.execute(f"INSERT INTO main.{table} SELECT * FROM rebuilt.{table}")

    def replace_held(self, component: str) -> None:
        self._db.execute("DELETE FROM main.held WHERE component = ?", (component,))
        self._db.execute(
            "INSERT INTO main.held (component, kind, key, error, attempts, body, held_at) "
            "SELECT component, kind, key, error, attempts, body, held_at FROM rebuilt.held "
            "WHERE component = ?",
            (component,),
        )

    def redirect_vanished_by_anchor(self) -> None:
        self._noting("old_ids")
        self._db.execute(
            "INSERT INTO main.profile_redirects (uid, profile) "
            "SELECT o.uid, i.profile FROM temp.old_ids o JOIN main.identities i "
            f"ON i.kind = o.anchor_kind AND i.value = o.anchor_value WHERE o.{_VANISHED} "
            "ON CONFLICT (uid) DO NOTHING"
        )

    def restore_changes(self) -> None:
        self._noting("old_changes")
        self._db.execute(
            "INSERT INTO main.profile_changes (uid, reasons) "
            "SELECT uid, reasons FROM temp.old_changes ORDER BY id"
        )

    def mark_vanished(self, reasons: Change) -> None:
        self._noting("old_ids")
        self._db.execute(
            "INSERT INTO main.profile_changes (uid, reasons) "
            f"SELECT uid, ? FROM temp.old_ids WHERE {_VANISHED}",
            (int(reasons),),
        )

    def drop_vanished(self, rows: Collection[ProfileRows]) -> None:
        for kind in rows:
            following = FOLLOWING[kind]
            self._noting(following.table)
            for sql in following.drop:
                self._db.execute(sql)

    def rekey_by_uid(self, rows: Collection[ProfileRows]) -> None:
        for kind in rows:
            following = FOLLOWING[kind]
            self._noting(following.table)
            for sql in following.rekey:
                self._db.execute(sql)

    def new_generation(self) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (GENERATION,),
        )

    def _note(self, table: str, *statements: str) -> None:
        if not self._db.in_transaction:
            raise StorageRefused("a swap notes the live graph inside its write transaction")
        self._db.execute(f"DROP TABLE IF EXISTS temp.{table}")  # a failed swap's
        for sql in statements:
            self._db.execute(sql)
        self._noted.add(table)

    def _noting(self, table: str) -> None:
        """A step that reads what an earlier one noted, which must have run."""
        if table not in self._noted:
            raise StorageRefused(f"this step of the swap needs temp.{table}, not noted yet")

    def _forget(self) -> None:
        while self._noted:
            self._db.execute(f"DROP TABLE IF EXISTS temp.{self._noted.pop()}")
