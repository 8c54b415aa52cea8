"""The data lifecycle in SQLite: erasure over both files (storage/lifecycle.py), the
log's retention trim, and backup and restore of the pair.

Erasure deletes from the log, which is append-only for everyone else, so one rule
keeps the log's numbering intact: the newest event is never deleted, only emptied of
what it said (a tombstone). SQLite numbers a new row after the largest left, and a
deleted head would hand its number, already applied by the consumers, to the next
event, which they would then skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
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
from storage.sqlite_connect import chunks, log_path, marks, open_connection
from storage.sqlite_deletions import deletion_slot, is_deletion
from storage.sqlite_graph import GENERATION

TRIM_ROWS = 5_000
"""Events deleted by one retention transaction: the log's write lock, which group
commits wait for, is held for milliseconds."""
TRIM_CHUNKS = 100
"""Transactions of trimming per maintenance round; a first trim of a long log goes on
at the next round rather than in one sitting."""
CONSUMERS = ("identity", "scorer")
"""The log's consumers: an event is trimmed only once every one has applied it."""
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


class SqliteLifecycleStore:
    """`db`: a connection to the main file (storage.sqlite_graph.connect); `log`: a
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
        from storage.sqlite_connect import connect

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


def trim_events(log: sqlite3.Connection, before: str, upto: int, limit: int = TRIM_ROWS) -> int:
    """One transaction of retention: delete the oldest events received before `before`
    (ISO time, as received_at is written) and applied by every consumer (seq <= `upto`),
    at most `limit`, never the newest. Seq order is arrival order give or take the
    seconds a commit waits, so the oldest are found at the start of the table, and the
    first one too new ends the trim."""
    log.execute("BEGIN IMMEDIATE")
    try:
        head = int(log.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        last = 0
        for seq, received_at in log.execute(
            "SELECT seq, received_at FROM events ORDER BY seq LIMIT ?", (limit,)
        ).fetchall():
            if received_at >= before or seq > upto or seq >= head:
                break
            last = seq
        gone = log.execute("DELETE FROM events WHERE seq <= ?", (last,)).rowcount if last else 0
        log.execute("COMMIT")
        return int(gone)
    except BaseException:
        if log.in_transaction:
            log.execute("ROLLBACK")
        raise


def retention_cutoff(retain: float, now: float | None = None) -> str:
    """The received_at before which events are old enough to trim."""
    moment = datetime.fromtimestamp((time.time() if now is None else now) - retain, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Backup and restore -------------------------------------------------------------


class InUse(Exception):
    """A process (a running daemon, its merger) has the database open."""


class NotABackup(Exception):
    """The directory does not hold a usable pair of files."""


def pair(database: Path) -> tuple[Path, Path]:
    """The main file and the event log, in the order a backup copies them."""
    return database, log_path(database)


BACKUP_ATTEMPTS = 5
"""Copies of the pair a backup makes before giving up on a forget committing during
each (forgets take seconds and are rare: one retry is the most expected)."""


class BackupRaced(Exception):
    """Erasures committed during every copy of the pair; try again later."""


def backup(database: Path, target: Path, busy_timeout: float) -> list[Path]:
    """Copy both files into the directory `target` with SQLite's backup API, each in
    one read transaction (a consistent snapshot, writers carrying on meanwhile). The
    main file first, then the log: the log copied later holds every event the main
    file's consumers had applied, and every event acknowledged before the start.

    A forget committing between the two copies would leave a pair with the person's
    profile and no suppression but without their events: restored, they would be back
    for good. So the erasure marks (_erasure_mark) are read before the main copy and
    again after the log's, and the pair is copied again if they moved."""
    target.mkdir(parents=True, exist_ok=True)
    for source in pair(database):
        final = target / source.name
        if final.exists():
            raise FileExistsError(f"{final} exists; back up into an empty directory")
    parts = [(source, target / (source.name + ".part")) for source in pair(database)]
    for _ in range(BACKUP_ATTEMPTS):
        before = _erasure_mark(database, busy_timeout)
        for source, part in parts:
            _copy(source, part, busy_timeout)
        if _erasure_mark(database, busy_timeout) == before:
            break
    else:
        for _, part in parts:
            part.unlink(missing_ok=True)
        raise BackupRaced(f"a forget committed during each of {BACKUP_ATTEMPTS} copies; try again")
    made: list[Path] = []
    for source, part in parts:
        _fsync(part)
        final = target / source.name
        part.rename(final)
        made.append(final)
    _fsync(target)
    return made


def _copy(source: Path, part: Path, busy_timeout: float) -> None:
    part.unlink(missing_ok=True)
    with (
        closing(open_connection(source, busy_timeout)) as src,
        closing(sqlite3.connect(part)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file


def _erasure_mark(database: Path, busy_timeout: float) -> tuple[int, str | None]:
    """What every forget moves in the main file: the last erasure's id and the graph's
    generation (an unmigrated file has no erasures yet). Read under the main file's
    write lock, which a forget holds from before its log commits until its main file
    does: a forget whose log commit the log copy saw is seen here too."""
    with closing(open_connection(database, busy_timeout)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            erasure = 0
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'erasures'").fetchone():
                erasure = db.execute("SELECT coalesce(max(id), 0) FROM erasures").fetchone()[0]
            row = db.execute("SELECT value FROM meta WHERE key = ?", (GENERATION,)).fetchone()
        finally:
            db.execute("ROLLBACK")
    return int(erasure), None if row is None else str(row[0])


def check_backup(source: Path, database: Path) -> None:
    """Refuse a directory without both files, or with files SQLite finds damaged, or
    whose log ends before what its main file's consumers applied."""
    main, events = (source / p.name for p in pair(database))
    for path in (main, events):
        if not path.is_file():
            raise NotABackup(f"{path} is missing; a backup holds {main.name} and {events.name}")
    try:
        with closing(sqlite3.connect(f"{main.absolute().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("ATTACH DATABASE ? AS log", (f"{events.absolute().as_uri()}?mode=ro",))
            for schema in ("main", "log"):
                problem = db.execute(f"PRAGMA {schema}.quick_check").fetchone()[0]
                if problem != "ok":
                    raise NotABackup(f"{source}: {schema} file damaged: {problem}")
            head = db.execute("SELECT coalesce(max(seq), 0) FROM log.events").fetchone()[0]
            applied = db.execute("SELECT coalesce(max(seq), 0) FROM main.checkpoints").fetchone()
            if applied[0] > head:
                raise NotABackup(
                    f"{source}: the log ends at {head} but consumers applied up to "
                    f"{applied[0]}: the two files are not from one backup"
                )
    except sqlite3.Error as exc:
        raise NotABackup(f"{source}: {exc}") from None


def in_use(database: Path) -> bool:
    """Whether any process has either file open: in WAL mode every connection holds a
    lock that an exclusive-mode transaction cannot get past, the daemon's merger
    process included."""
    for path in pair(database):
        if not path.exists():
            continue
        with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            try:
                db.execute("BEGIN EXCLUSIVE")
                db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                return True
    return False


def restore(source: Path, database: Path) -> Path:
    """Put the backup in `source` in place of the data dir's pair; the files it replaces
    (with their WAL and shared-memory files, which must not meet the new ones) go to a
    directory of their own beside them, returned. The caller made sure no process has
    them open.

    Crash-safe: the data dir holds the old pair, complete, until the marker
    (unfinished_restore) is written; from then on the daemon refuses to start until
    the restore is finished (finish_restore, from the parts, without `source`) or
    abandoned (abandon_restore). The new files are copied in as parts, complete and
    fsynced, first; the old main files are hard-linked aside (the WAL folded into them
    first), so both stay in the data dir until each part replaces its file in one
    rename. A failure before the marker removes the parts and the aside directory.

    Run again while a marker is there, the restore copies `source` in anew and keeps
    the marker's aside directory: it already holds the pair from before the first try."""
    check_backup(source, database)
    folder = database.parent
    folder.mkdir(parents=True, exist_ok=True)
    earlier = unfinished_restore(database)
    if earlier is not None and earlier.aside is not None and earlier.aside.is_dir():
        _copy_parts(source, database)
        _write_marker(database, source, earlier.aside)
        _place_parts(database)
        return earlier.aside
    aside = _new_aside(folder)
    moved: list[tuple[Path, Path]] = []
    try:
        _copy_parts(source, database)
        for path in pair(database):
            if path.exists():
                _checkpoint(path)
                _link_or_copy(path, aside / path.name)
            for suffix in ("-wal", "-shm"):
                old = path.with_name(path.name + suffix)
                if old.exists():
                    old.rename(aside / old.name)
                    moved.append((aside / old.name, old))
        _fsync(aside)
        _write_marker(database, source, aside)
    except BaseException:
        # Nothing replaced yet: the data dir goes back to how it was (the marker too,
        # should only the fsync after writing it have failed).
        _marker(database).unlink(missing_ok=True)
        for part in _parts(database):
            part.unlink(missing_ok=True)
        for there, back in moved:
            there.rename(back)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    _place_parts(database)
    return aside


def finish_restore(database: Path) -> Unfinished:
    """End the restore the marker records, from the parts it left (each complete and
    fsynced before the marker was written; one missing has replaced its file already):
    the backup it came from is not needed."""
    unfinished = unfinished_restore(database)
    if unfinished is None:
        raise NoUnfinishedRestore(f"no restore of {database} is unfinished")
    _place_parts(database)
    return unfinished


def abandon_restore(database: Path) -> Unfinished:
    """Undo the restore the marker records: the files set aside before it go back in
    place (a file with none aside did not exist before, and goes), the parts and the
    marker are removed, and the aside directory with them. Run again after a crash, it
    does the same: the aside files stay until the marker is gone."""
    unfinished = unfinished_restore(database)
    if unfinished is None:
        raise NoUnfinishedRestore(f"no restore of {database} is unfinished")
    aside = unfinished.aside
    if aside is None or not aside.is_dir():
        raise FileNotFoundError(
            f"the files the restore replaced are not in {aside or 'a directory it recorded'}; "
            "finish it instead (`leadsync restore --finish`)"
        )
    folder = database.parent
    for path in pair(database):
        for suffix in ("-wal", "-shm"):  # the restored file's, should anything have opened it
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        old = aside / path.name
        if old.exists():
            back = path.with_name(path.name + ".abandoning")
            back.unlink(missing_ok=True)
            _link_or_copy(old, back)
            os.replace(back, path)
        else:
            path.unlink(missing_ok=True)
    for part in _parts(database):
        part.unlink(missing_ok=True)
    _fsync(folder)
    _marker(database).unlink()
    _fsync(folder)
    shutil.rmtree(aside, ignore_errors=True)
    return unfinished


class NoUnfinishedRestore(Exception):
    """--finish or --abandon with no restore left unfinished."""


def _parts(database: Path) -> list[Path]:
    return [path.with_name(path.name + ".restoring") for path in pair(database)]


def _copy_parts(source: Path, database: Path) -> None:
    folder = database.parent
    for path, part in zip(pair(database), _parts(database), strict=True):
        part.unlink(missing_ok=True)  # a crash's leftover
        shutil.copyfile(source / path.name, part)
        _owned_like(part, path if path.exists() else folder)
        _fsync(part)
    _fsync(folder)


def _write_marker(database: Path, source: Path, aside: Path) -> None:
    marker = _marker(database)
    text = _encode({"source": str(source.absolute()), "aside": aside.name})
    temporary = marker.with_name(marker.name + ".new")
    temporary.write_bytes(text + b"\n")
    _fsync(temporary)
    os.rename(temporary, marker)
    _fsync(database.parent)


def _place_parts(database: Path) -> None:
    """Rename each part left over its file, then remove the marker."""
    folder = database.parent
    for part, path in zip(_parts(database), pair(database), strict=True):
        if part.exists():
            os.replace(part, path)
    _fsync(folder)
    _marker(database).unlink()
    _fsync(folder)


def _new_aside(folder: Path) -> Path:
    """A new before-restore-<time> directory (-2, -3, ... for a restore run again within
    the same second, after one cut short)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):
        aside = folder / (f"before-restore-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            aside.mkdir()
            return aside
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: too many before-restore-{stamp}-* directories")


class Unfinished(msgspec.Struct, frozen=True):
    """A restore that did not end: the backup it came from, and the directory holding
    the files it replaces (None for a marker from before it was recorded)."""

    source: str
    aside: Path | None

    def refusal(self, config: str) -> str:
        """Why nothing may start, and the two ways out."""
        where = f" (the files it replaces are in {self.aside})" if self.aside else ""
        return (
            f"a restore from {self.source} did not finish{where}: the data dir may hold one "
            f"file of each pair; run `leadsync restore --finish --config {config}` to complete "
            f"it (the backup is not needed) or `leadsync restore --abandon --config {config}` "
            "to put the old files back"
        )


def unfinished_restore(database: Path) -> Unfinished | None:
    """The restore that did not end, if one did not: the data dir may then hold one
    file of each pair, and nothing may start on it."""
    try:
        text = _marker(database).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        recorded = msgspec.json.decode(text, type=dict[str, str])
        aside = recorded.get("aside")
        return Unfinished(recorded.get("source", "?"), database.parent / aside if aside else None)
    except msgspec.DecodeError:  # a marker holding only the source's path
        return Unfinished(text or "?", None)


def _marker(database: Path) -> Path:
    return database.with_name(database.name + ".restore-unfinished")


def _checkpoint(path: Path) -> None:
    """Fold a file's WAL into it, so that the file alone holds all it committed."""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError(f"{path}: cannot checkpoint its WAL (in use?)")


def _link_or_copy(path: Path, target: Path) -> None:
    try:
        os.link(path, target)
    except OSError:  # a file system without hard links
        shutil.copy2(path, target)
        _fsync(target)


def _owned_like(path: Path, model: Path) -> None:
    """Give a restored file the owner, group and mode of the one it replaces (or of the
    data dir): root restoring for a service user must not leave files the daemon
    cannot write. Not root, the owner cannot change, and stays the caller's."""
    st = model.stat()
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)
    if path.is_file() and model.is_file():
        os.chmod(path, stat.S_IMODE(st.st_mode))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
