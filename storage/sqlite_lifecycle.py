"""Erasure in SQLite, over both files (storage/lifecycle.py): finding what mentions
a person, and deleting it. Retention is storage/sqlite_retention.py; backup and
restore, storage/sqlite_backup.py.

Erasure deletes from the log, which is append-only for everyone else, so one rule
keeps the log's numbering intact: the newest event is never deleted, only emptied of
what it said (a tombstone). SQLite numbers a new row after the largest left, and a
deleted head would hand its number, already applied by the consumers, to the next
event, which they would then skip.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import msgspec

from storage.lifecycle import (
    SALT,
    Deletion,
    Erased,
    PartlyErased,
    Person,
    StrayMarks,
    Strays,
    identifier_hash,
)
from storage.log import StoredEvent
from storage.sqlite_connect import chunks, connect, log_path, marks, open_connection
from storage.sqlite_deletions import deletion_slot, is_deletion
from storage.sqlite_errors import translated
from storage.sqlite_graph import GENERATION

_encode = msgspec.json.Encoder().encode


def _tombstone(seq: int, source: str, received_at: str) -> bytes:
    """An erased head event: still an event (a consumer that has not read it reads
    one with no identifier, and skips it), saying nothing about anyone."""
    return _encode(
        {
            "type": "track",
            "messageId": f"erased-{seq}",
            "source": source,
            "receivedAt": received_at,
            "timestamp": received_at,
            "event": "(erased)",
        }
    )


@translated
class SqliteLifecycleStore:
    """`db`: a connection to the main file (storage.sqlite_connect.connect); `log`: a
    writable one to the event log's file. Both this object's alone."""

    def __init__(self, db: sqlite3.Connection, log: sqlite3.Connection) -> None:
        self._db = db
        self._log = log
        # SQLite's lower() folds ASCII only: a needle with other letters is matched
        # against the body folded as Python folds the needle (slower; rarely needed).
        for connection in (db, log):
            connection.create_function("py_lower", 1, _py_lower, deterministic=True)
            connection.create_function("py_fold", 1, _py_fold, deterministic=True)
            # What is deleted here is overwritten with zeros, not left in free space
            # for a copy of the file to carry (the build's default may be either).
            connection.execute("PRAGMA secure_delete = ON")

    @classmethod
    def open(cls, database: Path, busy_timeout: float) -> Self:
        db = connect(database, busy_timeout)
        try:
            return cls(db, open_connection(log_path(database), busy_timeout))
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()
        self._log.close()

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def begin_log(self) -> None:
        self._log.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self._log.in_transaction:
            self._log.execute("COMMIT")
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise PartlyErased(f"the event log was erased, the main file was not: {exc}") from exc

    def rollback(self) -> None:
        for db in (self._log, self._db):
            if db.in_transaction:
                db.execute("ROLLBACK")

    def salt(self) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (SALT,)).fetchone()
        return bytes.fromhex(row[0])

    def suppressed(self) -> set[bytes]:
        return {bytes(h) for (h,) in self._db.execute("SELECT hash FROM suppressions")}

    def person(self, kind: str, value: str) -> Person | None:
        row = self._db.execute(
            "SELECT profile FROM identities WHERE kind = ? AND value = ?", (kind, value)
        ).fetchone()
        return None if row is None else self.profile(int(row[0]))

    def profile(self, profile: int) -> Person | None:
        db = self._db
        row = db.execute("SELECT uid, user_id FROM profiles WHERE id = ?", (profile,)).fetchone()
        if row is None:
            return None
        uid, user_id = row
        held = db.execute(
            "SELECT id, kind, value FROM identities WHERE profile = ? ORDER BY first_ts, id",
            (profile,),
        ).fetchall()
        merged = [
            str(r[0])
            for r in db.execute("SELECT uid FROM profile_redirects WHERE profile = ?", (profile,))
        ]
        return Person(
            profile=int(profile),
            uid=str(uid),
            uids=[str(uid), *merged],
            identifiers=[(str(k), str(v)) for _, k, v in held],
            nodes=[int(n) for n, _, _ in held],
            user_id=user_id,
        )

    def home_events(self, nodes: Sequence[int]) -> list[int]:
        found: list[int] = []
        for chunk in chunks(nodes):
            found += [
                int(seq)
                for (seq,) in self._db.execute(
                    f"SELECT seq FROM profile_events WHERE node IN ({marks(chunk)})", chunk
                )
            ]
        return found

    def log_head(self) -> int:
        return int(self._log.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def events_mentioning(
        self, needles: Iterable[str], after: int, upto: int | None
    ) -> Iterator[StoredEvent]:
        bounds = (after, upto if upto is not None else 2**62)
        sql = "SELECT seq, source, body FROM events WHERE seq > ? AND seq <= ? AND ({found})"
        for seq, source, body in _mentioning(self._log, sql, bounds, needles):
            yield StoredEvent(int(seq), str(source), bytes(body))

    def events_between(self, after: int, upto: int | None) -> Iterator[StoredEvent]:
        rows = self._log.execute(
            "SELECT seq, source, body FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, upto if upto is not None else 2**62),
        )
        for seq, source, body in rows:
            yield StoredEvent(int(seq), str(source), bytes(body))

    def stray_marks(self) -> StrayMarks:
        def last(db: sqlite3.Connection, table: str) -> int:
            return int(db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])

        db = self._db
        return StrayMarks(
            held=last(db, "held"),
            quarantine=last(self._log, "quarantine"),
            outbox=last(db, "outbox"),
            dead_letters=last(db, "dead_letters"),
        )

    def held_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, bytes]]:
        sql = (
            "SELECT id, body FROM held WHERE id > ? AND kind = 'event' AND body IS NOT NULL "
            "AND ({found})"
        )
        for row_id, body in _mentioning(self._db, sql, (after.held,), needles, unescape=True):
            yield int(row_id), bytes(body)

    def quarantined_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, str, bytes]]:
        sql = "SELECT id, source, body FROM quarantine WHERE id > ? AND ({found})"
        quarantined = _mentioning(self._log, sql, (after.quarantine,), needles, unescape=True)
        for row_id, source, body in quarantined:
            yield int(row_id), str(source), bytes(body)

    def payloads_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[str, bytes]]:
        for table, mark in (("outbox", after.outbox), ("dead_letters", after.dead_letters)):
            sql = f"SELECT id, uid, payload FROM {table} WHERE id > ? AND ({{found}})"
            found = _mentioning(self._db, sql, (mark,), needles, "payload", unescape=True)
            for _, uid, payload in found:
                yield str(uid), bytes(payload)

    def erase(
        self,
        people: Sequence[Person],
        identifiers: Sequence[tuple[str, str]],
        events: Sequence[int],
        deletions: Sequence[Deletion],
        now: float,
        strays: Strays,
        given: tuple[str, str] | None = None,
    ) -> Erased:
        db = self._db
        erased = Erased()
        for person in people:
            self._erase_profile(person, deletions, now, erased)
        erased.intents = db.executemany(
            "DELETE FROM intent WHERE kind = ? AND value = ?", identifiers
        ).rowcount
        keys = [str(seq) for seq in events]
        erased.held += _delete(db, "DELETE FROM held WHERE kind = 'event' AND key IN", keys)
        erased.held += _delete(db, "DELETE FROM held WHERE id IN", strays.held)
        erased.events = self._erase_events(sorted(set(events)))
        erased.quarantined += _delete(
            self._log, "DELETE FROM quarantine WHERE id IN", strays.quarantined
        )
        # Payloads naming the person whose profile is gone (found by what they say).
        # Deletion requests stay, queued or dead-lettered: this forget's own (queued
        # above under the person's profile id) and an earlier one's are the only way
        # the destination hears of the erasure, and a dead letter can be replayed.
        letters = [
            row
            for uids in chunks(strays.uids)
            for row, payload in db.execute(
                f"SELECT id, payload FROM dead_letters WHERE uid IN ({marks(uids)})", uids
            )
            if not is_deletion(bytes(payload))
        ]
        erased.dead_letters += _delete(db, "DELETE FROM dead_letters WHERE id IN", letters)
        erased.queued += _delete(db, _STRAY_OUTBOX, strays.uids)
        erased.suppressed = self._suppress(identifiers, given, erased, now)
        # The merger's batch in flight and the scorer's round read before this: bumping
        # the graph's generation makes each throw its work away and read again.
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (GENERATION,),
        )
        return erased

    def _erase_profile(
        self, person: Person, deletions: Sequence[Deletion], now: float, erased: Erased
    ) -> None:
        db, profile = self._db, person.profile
        erased.profiles += 1
        # Every node the profile holds now, whatever was read before: a node left with
        # links or recorded events would hand them to the next identifier given its id.
        held = {
            int(n) for (n,) in db.execute("SELECT id FROM identities WHERE profile = ?", (profile,))
        }
        nodes = sorted(held | set(person.nodes))
        erased.identifiers += db.execute(
            "DELETE FROM identities WHERE profile = ?", (profile,)
        ).rowcount
        for chunk in chunks(nodes):
            where = marks(chunk)
            db.execute(f"DELETE FROM identity_links WHERE a IN ({where})", chunk)
            db.execute(f"DELETE FROM identity_links WHERE b IN ({where})", chunk)
            db.execute(f"DELETE FROM profile_events WHERE node IN ({where})", chunk)
        for uids in chunks(person.uids):
            where = marks(uids)
            db.execute(f"DELETE FROM identity_merges WHERE survivor IN ({where})", uids)
            db.execute(f"DELETE FROM identity_merges WHERE merged IN ({where})", uids)
            db.execute(f"DELETE FROM profile_changes WHERE uid IN ({where})", uids)
            erased.dead_letters += db.execute(
                f"DELETE FROM dead_letters WHERE uid IN ({where})", uids
            ).rowcount
            erased.held += db.execute(
                f"DELETE FROM held WHERE kind = 'profile' AND key IN ({where})", uids
            ).rowcount
        db.execute("DELETE FROM profile_redirects WHERE profile = ?", (profile,))
        erased.scores += db.execute(
            "DELETE FROM profile_scores WHERE profile = ?", (profile,)
        ).rowcount
        reached = {
            str(name)
            for (name,) in db.execute(
                "SELECT destination FROM destination_state WHERE profile = ?1 "
                "UNION SELECT destination FROM outbox WHERE profile = ?1",
                (profile,),
            )
        }
        erased.queued += db.execute("DELETE FROM outbox WHERE profile = ?", (profile,)).rowcount
        db.execute("DELETE FROM destination_state WHERE profile = ?", (profile,))
        db.execute("DELETE FROM profiles WHERE id = ?", (profile,))
        # A destination that never heard of the person is told nothing.
        for deletion in deletions:
            if deletion.profile == profile and deletion.destination in reached:
                row = (deletion.destination, deletion_slot(db), person.uid, deletion.payload)
                db.execute(
                    "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, "
                    "due_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*row, deletion.hash, now, now),
                )
                erased.deletions.append(deletion.destination)

    def _erase_events(self, seqs: Sequence[int]) -> int:
        log = self._log
        head = int(log.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        gone = 0
        for chunk in chunks([s for s in seqs if s != head]):
            gone += log.execute(f"DELETE FROM events WHERE seq IN ({marks(chunk)})", chunk).rowcount
        if head in seqs:
            source, received = log.execute(
                "SELECT source, received_at FROM events WHERE seq = ?", (head,)
            ).fetchone()
            log.execute(
                "UPDATE events SET message_id = ?, type = 'track', body = ? WHERE seq = ?",
                (f"erased-{head}", _tombstone(head, source, received), head),
            )
            gone += 1
        return gone

    def _suppress(
        self,
        identifiers: Sequence[tuple[str, str]],
        given: tuple[str, str] | None,
        erased: Erased,
        now: float,
    ) -> int:
        db = self._db
        salt = self.salt()
        request = db.execute(
            "INSERT INTO erasures (erased_at, identifiers, events, profiles) VALUES (?, ?, ?, ?)",
            (now, len(identifiers), erased.events, erased.profiles),
        ).lastrowid
        if given is not None:
            # A repeated request: the earlier forget's group joins this one, so that one
            # unforget lifts them all.
            db.execute(
                "UPDATE suppressions SET request = ? WHERE request = "
                "(SELECT request FROM suppressions WHERE hash = ?)",
                (request, identifier_hash(salt, *given)),
            )
        return db.executemany(
            "INSERT INTO suppressions (hash, request, kind) VALUES (?, ?, ?) "
            "ON CONFLICT (hash) DO NOTHING",
            [(identifier_hash(salt, k, v), request, k) for k, v in identifiers],
        ).rowcount

    def unsuppress(self, hashed: bytes) -> list[bytes]:
        db = self._db
        row = db.execute("SELECT request FROM suppressions WHERE hash = ?", (hashed,)).fetchone()
        if row is None:
            return []
        lifted = [
            bytes(h)
            for (h,) in db.execute("SELECT hash FROM suppressions WHERE request = ?", (row[0],))
        ]
        db.execute("DELETE FROM suppressions WHERE request = ?", (row[0],))
        return lifted


_STRAY_OUTBOX = "DELETE FROM outbox WHERE profile >= 0 AND uid IN"
"""A deletion request (a negative profile id, storage/sqlite_deletions.py) stays."""


def _delete(db: sqlite3.Connection, statement: str, keys: Sequence[object]) -> int:
    """`statement` ("DELETE ... WHERE column IN") for the keys, a chunk at a time."""
    return sum(
        db.execute(f"{statement} ({marks(chunk)})", chunk).rowcount for chunk in chunks(keys)
    )


def _terms(needles: Iterable[str]) -> list[str]:
    return sorted({term for needle in needles for term in _spellings(needle)})


def _spellings(value: str) -> set[str]:
    """A value as it may appear inside the JSON of a body, case folded: escaped as
    msgspec writes it (UTF-8 as is), and as clients may have sent it (characters
    beyond ASCII as \\uXXXX, a slash as \\/); events are logged as they came."""
    raw = _encode(value).decode()[1:-1]
    found = {raw.lower()}
    if not value.isascii():
        found.add(json.dumps(value)[1:-1].lower())
    if "/" in value:
        found |= {term.replace("/", "\\/") for term in found}
    return found


def _containing(terms: Sequence[str], column: str = "body", fold: str | None = None) -> str:
    """SQL true for a column that contains any of the terms (one parameter each),
    folded the way the terms were: by SQLite's lower() where that is enough, which
    folds ASCII only, else by `fold` (a Python function; py_lower by default). A term
    with a "k" needs Python's too: the Kelvin sign folds to it."""
    return " OR ".join(
        f"instr({fold}({column}), ?) > 0"
        if fold is not None
        else f"instr(lower(CAST({column} AS TEXT)), ?) > 0"
        if term.isascii() and "k" not in term
        else f"instr(py_lower({column}), ?) > 0"
        for term in terms
    )


TERMS_A_QUERY = 200
"""Needles matched by one statement: SQLite parses a chain of ORs as a tree whose
depth it caps at 1,000, and a person can have thousands of identifiers."""


def _mentioning(
    db: sqlite3.Connection,
    sql: str,
    params: tuple[object, ...],
    needles: Iterable[str],
    column: str = "body",
    unescape: bool = False,
) -> Iterator[tuple[Any, ...]]:
    """The rows of `sql` (its "{found}" the containment test) that contain any needle,
    each once (keyed by the first column), for as many needles as there are.
    `unescape`: the column holds what a client sent, whose JSON may escape anything
    (\\u00C9, \\u0026, \\/): it is compared unescaped, with the values as they are."""
    terms = sorted({n.lower() for n in needles}) if unescape else _terms(needles)
    seen: set[object] = set()
    for start in range(0, len(terms), TERMS_A_QUERY):
        chunk = terms[start : start + TERMS_A_QUERY]
        found = _containing(chunk, column, "py_fold" if unescape else None)
        for row in db.execute(sql.format(found=found), (*params, *chunk)):
            if start == 0 or row[0] not in seen:
                seen.add(row[0])
                yield tuple(row)


_ESCAPED = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SHORT = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _unescaped(match: re.Match[str]) -> str:
    escape = match.group(1)
    if len(escape) == 5:
        return chr(int(escape[1:], 16))
    return _SHORT.get(escape, escape)


def _py_fold(body: bytes | str | None) -> str | None:
    """A client's JSON text with its escapes undone, folded as Python folds."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    return None if body is None else _ESCAPED.sub(_unescaped, body).lower()


def _py_lower(body: bytes | str | None) -> str | None:
    """A body folded as Python folds (bytes that are not UTF-8 replaced, not refused)."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    return None if body is None else body.lower()
