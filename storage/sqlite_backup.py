"""Backup and restore of the pair of files (the main file and the event log), safe
while the daemon runs, and crash-safe to restore."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from storage.sqlite_connect import log_path, open_connection
from storage.sqlite_errors import translating
from storage.sqlite_graph import GENERATION

_encode = msgspec.json.Encoder().encode


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


@translating
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


@translating
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


@translating
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


@translating
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


@translating
def finish_restore(database: Path) -> Unfinished:
    """End the restore the marker records, from the parts it left (each complete and
    fsynced before the marker was written; one missing has replaced its file already):
    the backup it came from is not needed."""
    unfinished = unfinished_restore(database)
    if unfinished is None:
        raise NoUnfinishedRestore(f"no restore of {database} is unfinished")
    _place_parts(database)
    return unfinished


@translating
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


@translating
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
