"""The identity graph in SQLite, through the stdlib's synchronous driver.

The identity actor runs a whole batch in one worker thread: hundreds of small reads
and writes that would each cost a thread hop through aiosqlite cost microseconds
here. Its connection is its own; the write lock is SQLite's (BEGIN IMMEDIATE waits
up to the busy timeout while the log writer commits).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from storage.graph import IDENTITY_CONSUMER, Account, Activity, Link, Merge, Node, Profile, Stamped
from storage.log import StoredEvent
from storage.sqlite_connect import Transactions, chunks, marks
from storage.sqlite_errors import translated, translating

GENERATION = "identity_graph_generation"

_encode = msgspec.json.Encoder().encode
_activity = msgspec.json.Decoder(Activity).decode
_kinds = msgspec.json.Decoder(dict[str, int]).decode
_traits = msgspec.json.Decoder(dict[str, Stamped]).decode


@translated
class LogConsumerStore(Transactions):
    """What every synchronous consumer of the log shares: its own write transactions,
    and its checkpoint, committed in them with the state the batch produced."""

    consumer: str

    def checkpoint(self) -> int:
        row = self._db.execute(
            "SELECT seq FROM checkpoints WHERE consumer = ?", (self.consumer,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_checkpoint(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (consumer, seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, "
            "updated_at = excluded.updated_at",
            (self.consumer, seq, datetime.now(UTC).isoformat()),
        )

    def generation(self) -> int:
        return int(self.meta(GENERATION) or 0)

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _select(self, sql: str, keys: Sequence[Any], make: Any) -> list[Any]:
        """`sql` ending in "IN ", run for `keys` a chunk at a time, each row through `make`."""
        return list(map(make, self._rows(sql, keys)))

    def _rows(self, sql: str, keys: Sequence[Any]) -> Iterator[Any]:
        """The rows of `_select`, read as they are consumed."""
        for chunk in chunks(keys):
            yield from self._db.execute(f"{sql}({marks(chunk)})", chunk)


@translated
class SqliteGraphStore(LogConsumerStore):
    consumer = IDENTITY_CONSUMER

    def nodes_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Node]:
        nodes: list[Node] = []
        for kind, values in by_kind(keys).items():
            for chunk in chunks(values):
                nodes += map(
                    _node,
                    self._db.execute(
                        "SELECT id, kind, value, profile, first_ts FROM identities "
                        f"WHERE kind = ? AND value IN ({marks(chunk)})",
                        (kind, *chunk),
                    ),
                )
        return nodes

    def nodes_by_id(self, ids: Sequence[int]) -> list[Node]:
        return self._select(
            "SELECT id, kind, value, profile, first_ts FROM identities WHERE id IN ",
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

    def next_ids(self) -> tuple[int, int]:
        node = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM identities").fetchone()
        # AUTOINCREMENT: a deleted profile's id is never handed out again, so an id a
        # scorer or destination still holds cannot come to mean someone else.
        profile = self._db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'profiles'), 0),"
            " coalesce((SELECT max(id) FROM profiles), 0)) + 1"
        ).fetchone()
        return int(node[0]), int(profile[0])

    def insert(self, nodes: Sequence[Node], profiles: Sequence[Profile]) -> None:
        self._db.executemany(
            "INSERT INTO identities (id, kind, value, profile, first_ts) VALUES (?, ?, ?, ?, ?)",
            [(n.id, n.kind, n.value, n.profile, n.first_ts) for n in nodes],
        )
        self._db.executemany(
            "INSERT INTO profiles (id, uid, anchor_ts, anchor_kind, anchor_value, user_id, "
            "account_id, kinds, activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.id, p.uid, *_profile_columns(p)) for p in profiles],
        )
        self._forget_redirects(profiles)

    def update(
        self,
        nodes: Sequence[Node],
        moved: Sequence[Node],
        profiles: Sequence[Profile],
        renamed: Sequence[Profile],
    ) -> None:
        # Only what can have changed is set: naming an indexed column in SET rewrites
        # its index entry even when the value is the same.
        self._db.executemany(
            "UPDATE identities SET first_ts = ? WHERE id = ?", [(n.first_ts, n.id) for n in nodes]
        )
        self._db.executemany(
            "UPDATE identities SET profile = ?, first_ts = ? WHERE id = ?",
            [(n.profile, n.first_ts, n.id) for n in moved],
        )
        # A renamed profile may take a uid another gave up in the same batch; release
        # the old ones first so the UNIQUE constraint only sees the end state.
        self._db.executemany(
            "UPDATE profiles SET uid = '~' || id WHERE id = ?", [(p.id,) for p in renamed]
        )
        self._db.executemany(
            "UPDATE profiles SET anchor_ts = ?, anchor_kind = ?, anchor_value = ?, user_id = ?, "
            "account_id = ?, kinds = ?, activity = ? WHERE id = ?",
            [(*_profile_columns(p), p.id) for p in profiles],
        )
        self._db.executemany(
            "UPDATE profiles SET uid = ?, anchor_ts = ?, anchor_kind = ?, anchor_value = ?, "
            "user_id = ?, account_id = ?, kinds = ?, activity = ? WHERE id = ?",
            [(p.uid, *_profile_columns(p), p.id) for p in renamed],
        )
        self._forget_redirects(renamed)

    def _forget_redirects(self, profiles: Sequence[Profile]) -> None:
        """A live profile's uid is no longer a retired one."""
        self._db.executemany(
            "DELETE FROM profile_redirects WHERE uid = ?", [(p.uid,) for p in profiles]
        )

    def delete_profiles(self, ids: Sequence[int]) -> None:
        rows = [(i,) for i in ids]
        self._db.executemany("DELETE FROM profiles WHERE id = ?", rows)
        # A profile's scores go with it (its survivor has its own), and so does what
        # was queued for it: the survivor is rescored and queued in its own right.
        self._db.executemany("DELETE FROM profile_scores WHERE profile = ?", rows)
        self._db.executemany("DELETE FROM outbox WHERE profile = ?", rows)

    def redirect(self, redirects: Sequence[tuple[str, int]]) -> None:
        self._db.executemany(
            "INSERT INTO profile_redirects (uid, profile) VALUES (?, ?) "
            "ON CONFLICT (uid) DO UPDATE SET profile = excluded.profile",
            redirects,
        )

    def repoint(
        self, nodes: Sequence[tuple[int, int]], redirects: Sequence[tuple[int, int]]
    ) -> None:
        self._db.executemany("UPDATE identities SET profile = ?2 WHERE profile = ?1", nodes)
        self._db.executemany(
            "UPDATE profile_redirects SET profile = ?2 WHERE profile = ?1", redirects
        )

    def links_between(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
        found: dict[tuple[int, int], str] = {}
        for chunk in chunks(pairs):
            values = ",".join(["(?, ?)"] * len(chunk))
            flat = [end for pair in chunk for end in pair]
            # Joined, not `(a, b) IN (VALUES ...)`: SQLite answers that with a scan of
            # the whole table, once per chunk.
            for a, b, ts in self._db.execute(
                f"SELECT l.a, l.b, l.ts FROM (VALUES {values}) AS v CROSS JOIN identity_links "
                "AS l ON l.a = v.column1 AND l.b = v.column2",
                flat,
            ):
                found[(a, b)] = ts
        return found

    def save_links(self, links: Sequence[tuple[int, int, str, int]]) -> None:
        self._db.executemany(
            "INSERT INTO identity_links (a, b, ts, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (a, b) DO UPDATE SET ts = excluded.ts, seq = excluded.seq "
            "WHERE excluded.ts < identity_links.ts",
            links,
        )

    def links_of(self, nodes: Sequence[int]) -> list[Link]:
        links: set[Link] = set()
        for chunk in chunks(nodes):
            placeholders = marks(chunk)
            links.update(
                Link(a, b, ts)
                for a, b, ts in self._db.execute(
                    f"SELECT a, b, ts FROM identity_links WHERE a IN ({placeholders}) "
                    f"UNION ALL SELECT a, b, ts FROM identity_links WHERE b IN ({placeholders})",
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

    def home_events(self, nodes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        return self._rows(
            "SELECT pe.node, e.body FROM profile_events pe JOIN events e ON e.seq = pe.seq "
            "WHERE pe.node IN ",
            nodes,
        )

    def count_home_events(self, nodes: Sequence[int]) -> int:
        return sum(
            count
            for (count,) in self._rows("SELECT count(*) FROM profile_events WHERE node IN ", nodes)
        )

    def record_merges(self, merges: Sequence[Merge]) -> None:
        self._db.executemany(
            "INSERT INTO identity_merges (survivor, merged, reason, seq, message_id) "
            "VALUES (?, ?, ?, ?, ?)",
            [(m.survivor, m.merged, m.reason, m.seq, m.message_id) for m in merges],
        )

    def mark_changed(self, changes: Sequence[tuple[str, int]]) -> None:
        self._db.executemany("INSERT INTO profile_changes (uid, reasons) VALUES (?, ?)", changes)


def by_kind(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """(kind, value) keys as values per kind: one `kind = ? AND value IN (...)` each."""
    grouped: dict[str, list[str]] = {}
    for kind, value in keys:
        grouped.setdefault(kind, []).append(value)
    return grouped


def _node(row: tuple[Any, ...]) -> Node:
    return Node(*row)


def _profile_columns(p: Profile) -> tuple[object, ...]:
    """Every column but id and uid, in table order."""
    account = None if p.activity.account is None else p.activity.account.value
    return (*p.anchor, p.user_id, account, _encode(p.kinds), _encode(p.activity))


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


@translating
def read_events(db: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    return [
        StoredEvent(seq, source, body)
        for seq, source, body in db.execute(
            "SELECT seq, source, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
    ]


@translating
def read_batches(
    db: sqlite3.Connection, after: int, size: int, until: float = math.inf
) -> Iterator[list[StoredEvent]]:
    """The log after `after`, `size` events a batch, to its head as it is when each
    batch is read, or until the clock (time.perf_counter) passes `until`."""
    while events := read_events(db, after, size):
        yield events
        after = events[-1].seq
        if time.perf_counter() >= until:
            return
