"""The rebuild's side of the identity graph's SQLite store (actors/identity/rebuild.py):
the scratch database the log is replayed into, and the swap that puts the rebuilt
graph in place of the live one, in one transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from storage.graph import IDENTITY_CONSUMER, Change
from storage.migrations import MIGRATIONS, SCORE_COLUMNS
from storage.sqlite_connect import uri
from storage.sqlite_deletions import MAY_BE_DELETION, deletion_slot, is_deletion
from storage.sqlite_graph import GENERATION, SqliteGraphStore

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


def swap_in(db: sqlite3.Connection, rebuilt: Path, checkpoint: int) -> None:
    """Replace the graph with the rebuilt one and set the checkpoint, in one transaction:
    readers see the old graph or the new one, never a mix. The caller holds the gate."""
    db.execute("ATTACH DATABASE ? AS rebuilt", (str(rebuilt),))
    store = SqliteGraphStore(db)
    try:
        row = db.execute(
            "SELECT seq FROM rebuilt.checkpoints WHERE consumer = ?", (IDENTITY_CONSUMER,)
        ).fetchone()
        if (row[0] if row else 0) != checkpoint:
            raise sqlite3.DatabaseError(
                f"{rebuilt} is not the rebuild that replayed to {checkpoint}; nothing swapped"
            )
        store.begin()
        # Every profile id that ever resolved keeps resolving: an id the new rules no
        # longer produce redirects to wherever its oldest identifier now lives, and the
        # scorer hears it is gone. Changes the scorer has not taken yet are kept.
        db.execute("DROP TABLE IF EXISTS temp.old_ids")
        db.execute(
            "CREATE TEMP TABLE old_ids AS "
            "SELECT uid, anchor_kind, anchor_value FROM main.profiles UNION ALL "
            "SELECT r.uid, p.anchor_kind, p.anchor_value FROM main.profile_redirects r "
            "JOIN main.profiles p ON p.id = r.profile"
        )
        db.execute("DROP TABLE IF EXISTS temp.old_changes")
        db.execute("CREATE TEMP TABLE old_changes AS SELECT * FROM main.profile_changes")
        # Scores are keyed by profile row, and the rebuild numbered rows anew: each
        # score follows its profile id (the same person, as far as the new rules go).
        db.execute("DROP TABLE IF EXISTS temp.old_scores")
        db.execute(
            f"CREATE TEMP TABLE old_scores AS SELECT p.uid, {SCORE_COLUMNS} "
            "FROM main.profile_scores s JOIN main.profiles p ON p.id = s.profile"
        )
        db.execute("DELETE FROM main.profile_scores")
        # So are delivery states and outbox rows: they follow their profile id too.
        db.execute("DROP TABLE IF EXISTS temp.old_delivery")
        db.execute(
            "CREATE TEMP TABLE old_delivery AS SELECT p.uid, d.destination, d.acked, d.staged "
            "FROM main.destination_state d JOIN main.profiles p ON p.id = d.profile"
        )
        db.execute("DELETE FROM main.destination_state")
        # Deletion requests belong to no profile (storage/sqlite_deletions.py): one
        # queued by a version that gave it the erased profile's id gets its own now,
        # which no profile of the new graph can have.
        for row, payload in db.execute(
            f"SELECT id, payload FROM main.outbox WHERE profile > 0 AND {MAY_BE_DELETION}"
        ).fetchall():
            if is_deletion(bytes(payload)):
                slot = deletion_slot(db)
                db.execute("UPDATE main.outbox SET profile = ? WHERE id = ?", (slot, row))
        db.execute("DROP TABLE IF EXISTS temp.old_outbox")
        db.execute(
            "CREATE TEMP TABLE old_outbox AS SELECT o.id, p.uid FROM main.outbox o "
            "JOIN main.profiles p ON p.id = o.profile"
        )
        for table in GRAPH_TABLES:
            db.execute(f"DELETE FROM main.{table}")
            db.execute(f"INSERT INTO main.{table} SELECT * FROM rebuilt.{table}")
        # The events the merger holds are those the rebuild held.
        db.execute("DELETE FROM main.held WHERE component = 'identity'")
        db.execute(
            "INSERT INTO main.held (component, kind, key, error, attempts, body, held_at) "
            "SELECT component, kind, key, error, attempts, body, held_at FROM rebuilt.held"
        )
        db.execute(
            "INSERT INTO main.profile_redirects (uid, profile) "
            "SELECT o.uid, i.profile FROM temp.old_ids o JOIN main.identities i "
            "ON i.kind = o.anchor_kind AND i.value = o.anchor_value "
            "WHERE o.uid NOT IN (SELECT uid FROM main.profiles) "
            "ON CONFLICT (uid) DO NOTHING"
        )
        db.execute(
            "INSERT INTO main.profile_changes (uid, reasons) "
            "SELECT uid, reasons FROM temp.old_changes ORDER BY id"
        )
        db.execute(
            "INSERT INTO main.profile_changes (uid, reasons) "
            "SELECT uid, ? FROM temp.old_ids WHERE uid NOT IN (SELECT uid FROM main.profiles)",
            (int(Change.MERGED_AWAY),),
        )
        db.execute(
            f"INSERT INTO main.profile_scores (profile, {SCORE_COLUMNS}) "
            f"SELECT p.id, {SCORE_COLUMNS} FROM temp.old_scores o "
            "JOIN main.profiles p ON p.uid = o.uid"
        )
        db.execute(
            "INSERT INTO main.destination_state (destination, profile, acked, staged) "
            "SELECT o.destination, p.id, o.acked, o.staged FROM temp.old_delivery o "
            "JOIN main.profiles p ON p.uid = o.uid"
        )
        # Queued rows follow their live profile's id (not the id written on the row,
        # which a rename leaves behind); one whose profile id the new graph has not
        # goes: the profile that took its identifiers is rescored and queued afresh.
        db.execute("DELETE FROM temp.old_outbox WHERE uid NOT IN (SELECT uid FROM main.profiles)")
        db.execute(
            "DELETE FROM main.outbox WHERE profile > 0 "
            "AND id NOT IN (SELECT id FROM temp.old_outbox)"
        )
        # Through negative rows first: two rows may swap numbers, and (destination,
        # profile) must stay unique at every step. Deletion requests (negative) stay.
        db.execute(
            "UPDATE main.outbox SET profile = -profile - 4611686018427387904 WHERE profile > 0"
        )
        db.execute(
            "UPDATE main.outbox SET profile = (SELECT p.id FROM temp.old_outbox o "
            "JOIN main.profiles p ON p.uid = o.uid WHERE o.id = outbox.id) "
            "WHERE id IN (SELECT id FROM temp.old_outbox)"
        )
        db.execute("DROP TABLE temp.old_ids")
        db.execute("DROP TABLE temp.old_changes")
        db.execute("DROP TABLE temp.old_scores")
        db.execute("DROP TABLE temp.old_delivery")
        db.execute("DROP TABLE temp.old_outbox")
        store.set_checkpoint(checkpoint)
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (GENERATION,),
        )
        store.commit()
    finally:
        store.rollback()
        db.execute("DETACH DATABASE rebuilt")


def count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
