"""The identity graph in SQLite, through the stdlib's synchronous driver.

The identity actor runs a whole batch in one worker thread: hundreds of small reads
and writes that would each cost a thread hop through aiosqlite cost microseconds
here. Its connection is its own; the write lock is SQLite's (BEGIN IMMEDIATE waits
up to the busy timeout while the log writer commits).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from storage.base import (
    Account,
    Activity,
    Anchor,
    Link,
    Merge,
    Node,
    Profile,
    Stamped,
    StoredEvent,
)
from storage.migrations import MIGRATIONS

CONSUMER = "identity"
_CHUNK = 500
"""Values per `IN (...)`: well under SQLite's limit on bound parameters."""

_encode = msgspec.json.Encoder().encode
_activity = msgspec.json.Decoder(Activity).decode
_kinds = msgspec.json.Decoder(dict[str, int]).decode
_traits = msgspec.json.Decoder(dict[str, Stamped]).decode
_T = TypeVar("_T")

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


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection for one worker thread at a time (the actor hops between threads)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    db.execute("PRAGMA synchronous = FULL")
    return db


class SqliteGraphStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def checkpoint(self) -> int:
        row = self._db.execute(
            "SELECT seq FROM checkpoints WHERE consumer = ?", (CONSUMER,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_checkpoint(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (consumer, seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, "
            "updated_at = excluded.updated_at",
            (CONSUMER, seq, datetime.now(UTC).isoformat()),
        )

    def nodes_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Node]:
        nodes: list[Node] = []
        by_kind: dict[str, list[str]] = {}
        for kind, value in keys:
            by_kind.setdefault(kind, []).append(value)
        for kind, values in by_kind.items():
            for chunk in _chunks(values):
                nodes += map(
                    _node,
                    self._db.execute(
                        "SELECT id, kind, value, profile, first_ts, activity FROM identities "
                        f"WHERE kind = ? AND value IN ({_marks(chunk)})",
                        (kind, *chunk),
                    ),
                )
        return nodes

    def nodes_by_id(self, ids: Sequence[int]) -> list[Node]:
        return self._select(
            "SELECT id, kind, value, profile, first_ts, activity FROM identities WHERE id IN ",
            ids,
            _node,
        )

    def node_ids_of_profiles(self, profiles: Sequence[int]) -> list[int]:
        return self._select(
            "SELECT id FROM identities WHERE profile IN ", profiles, lambda row: int(row[0])
        )

    def profiles(self, ids: Sequence[int]) -> list[Profile]:
        return self._select(
            "SELECT id, uid, anchor_ts, anchor_kind, anchor_value, kinds, activity, user_id "
            "FROM profiles WHERE id IN ",
            ids,
            _profile,
        )

    def new_profile(self, uid: str, anchor: Anchor) -> int:
        self._db.execute("DELETE FROM profile_redirects WHERE uid = ?", (uid,))
        cursor = self._db.execute(
            "INSERT INTO profiles (uid, anchor_ts, anchor_kind, anchor_value, kinds, activity) "
            "VALUES (?, ?, ?, ?, '{}', '{}')",
            (uid, *anchor),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def new_node(self, kind: str, value: str, profile: int, first_ts: str) -> int:
        cursor = self._db.execute(
            "INSERT INTO identities (kind, value, profile, first_ts, activity) "
            "VALUES (?, ?, ?, ?, '{}')",
            (kind, value, profile, first_ts),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def save(self, nodes: Sequence[Node], profiles: Sequence[Profile]) -> None:
        self._db.executemany(
            "UPDATE identities SET profile = ?, first_ts = ?, activity = ? WHERE id = ?",
            [(n.profile, n.first_ts, _encode(n.activity), n.id) for n in nodes],
        )
        # A profile can take a uid another profile gave up earlier in the same batch
        # (a re-split); release uids first so the UNIQUE constraint sees the end state.
        self._db.executemany(
            "UPDATE profiles SET uid = '~' || id WHERE id = ?", [(p.id,) for p in profiles]
        )
        self._db.executemany(
            "UPDATE profiles SET uid = ?, anchor_ts = ?, anchor_kind = ?, anchor_value = ?, "
            "user_id = ?, account_id = ?, kinds = ?, activity = ? WHERE id = ?",
            [
                (
                    p.uid,
                    *p.anchor,
                    p.user_id,
                    None if p.activity.account is None else p.activity.account.value,
                    _encode(p.kinds),
                    _encode(p.activity),
                    p.id,
                )
                for p in profiles
            ],
        )
        self._db.executemany(
            "DELETE FROM profile_redirects WHERE uid = ?", [(p.uid,) for p in profiles]
        )

    def delete_profiles(self, ids: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM profiles WHERE id = ?", [(i,) for i in ids])

    def redirect(self, uid: str, profile: int) -> None:
        self._db.execute(
            "INSERT INTO profile_redirects (uid, profile) VALUES (?, ?) "
            "ON CONFLICT (uid) DO UPDATE SET profile = excluded.profile",
            (uid, profile),
        )

    def repoint(self, old: int, new: int) -> None:
        self._db.execute("UPDATE identities SET profile = ? WHERE profile = ?", (new, old))
        self._db.execute("UPDATE profile_redirects SET profile = ? WHERE profile = ?", (new, old))

    def link(self, a: int, b: int, ts: str, seq: int) -> bool:
        a, b = min(a, b), max(a, b)
        row = self._db.execute(
            "SELECT ts FROM identity_links WHERE a = ? AND b = ?", (a, b)
        ).fetchone()
        if row is not None and row[0] <= ts:
            return False
        self._db.execute(
            "INSERT INTO identity_links (a, b, ts, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (a, b) DO UPDATE SET ts = excluded.ts, seq = excluded.seq",
            (a, b, ts, seq),
        )
        return True

    def links_of(self, nodes: Sequence[int]) -> list[Link]:
        links: set[Link] = set()
        for chunk in _chunks(nodes):
            marks = _marks(chunk)
            links.update(
                Link(a, b, ts)
                for a, b, ts in self._db.execute(
                    f"SELECT a, b, ts FROM identity_links WHERE a IN ({marks}) "
                    f"UNION ALL SELECT a, b, ts FROM identity_links WHERE b IN ({marks})",
                    (*chunk, *chunk),
                )
            )
        return list(links)

    def accounts(self, group_ids: Sequence[str]) -> list[Account]:
        return self._select(
            "SELECT group_id, first_seen, last_seen, traits FROM accounts WHERE group_id IN ",
            group_ids,
            lambda row: Account(row[0], row[1], row[2], _traits(row[3])),
        )

    def save_accounts(self, accounts: Sequence[Account]) -> None:
        self._db.executemany(
            "INSERT INTO accounts (group_id, first_seen, last_seen, traits) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET first_seen = excluded.first_seen, "
            "last_seen = excluded.last_seen, traits = excluded.traits",
            [(a.group_id, a.first_seen, a.last_seen, _encode(a.traits)) for a in accounts],
        )

    def add_profile_events(self, rows: Sequence[tuple[int, int]]) -> None:
        self._db.executemany(
            "INSERT INTO profile_events (node, seq) VALUES (?, ?) ON CONFLICT DO NOTHING", rows
        )

    def record_merges(self, merges: Sequence[Merge]) -> None:
        self._db.executemany(
            "INSERT INTO identity_merges (survivor, merged, reason, seq, message_id) "
            "VALUES (?, ?, ?, ?, ?)",
            [(m.survivor, m.merged, m.reason, m.seq, m.message_id) for m in merges],
        )

    def mark_changed(self, changes: Sequence[tuple[str, int, int]]) -> None:
        self._db.executemany(
            "INSERT INTO profile_changes (uid, reasons, seq) VALUES (?, ?, ?) "
            "ON CONFLICT (uid) DO UPDATE SET reasons = profile_changes.reasons | "
            "excluded.reasons, seq = excluded.seq",
            changes,
        )

    def _select(self, sql: str, keys: Sequence[Any], make: Any) -> list[Any]:
        rows: list[Any] = []
        for chunk in _chunks(keys):
            rows += map(make, self._db.execute(f"{sql}({_marks(chunk)})", chunk))
        return rows


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: Sequence[object]) -> str:
    return ",".join("?" * len(chunk))


def _node(row: tuple[Any, ...]) -> Node:
    id_, kind, value, profile, first_ts, activity = row
    return Node(id_, kind, value, profile, first_ts, _activity(activity))


def _profile(row: tuple[Any, ...]) -> Profile:
    id_, uid, anchor_ts, anchor_kind, anchor_value, kinds, activity, user_id = row
    return Profile(
        id_,
        uid,
        (anchor_ts, anchor_kind, anchor_value),
        _kinds(kinds),
        _activity(activity),
        user_id,
    )


def read_events(db: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    return [
        StoredEvent(seq, source, body)
        for seq, source, body in db.execute(
            "SELECT seq, source, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
    ]


def scratch(path: Path) -> sqlite3.Connection:
    """An empty database of the same schema to rebuild the graph in, beside the real one.

    Nothing in it matters until it is swapped in, so it skips the fsyncs."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = MEMORY")
    db.execute("PRAGMA synchronous = OFF")
    for script in MIGRATIONS:
        db.executescript(script)
    return db


def swap_in(db: sqlite3.Connection, rebuilt: Path, checkpoint: int) -> None:
    """Replace the graph with the rebuilt one and set the checkpoint, in one transaction:
    readers see the old graph or the new one, never a mix."""
    db.execute("ATTACH DATABASE ? AS rebuilt", (str(rebuilt),))
    try:
        store = SqliteGraphStore(db)
        with store.transaction():
            for table in GRAPH_TABLES:
                db.execute(f"DELETE FROM main.{table}")
                db.execute(f"INSERT INTO main.{table} SELECT * FROM rebuilt.{table}")
            store.set_checkpoint(checkpoint)
    finally:
        db.execute("DETACH DATABASE rebuilt")


def count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
