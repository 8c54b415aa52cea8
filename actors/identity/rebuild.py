"""`leadsync identity rebuild`: the graph recomputed from the whole event log.

After a rule change the graph reflects the old rules for every event already applied.
Rebuilding replays the log into a scratch database beside the real one and swaps the
result in with one transaction. It is safe while the daemon runs: the identity actor
notices the new checkpoint at its next batch (StaleCheckpoint) and reads on from
there, and lookups see the old graph until the swap, the new one after.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from actors.identity import isolate
from actors.identity.extract import Extractor
from actors.identity.pipeline import Graph
from actors.identity.settings import IdentitySection
from storage.ownership import owned_like_directory
from storage.sqlite_connect import connect, log_path
from storage.sqlite_graph import SqliteGraphStore
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_rebuild import count, scratch, swap_in


@dataclass(frozen=True)
class RebuildReport:
    events: int
    profiles_before: int
    profiles_after: int
    merges: int
    links_dropped: int
    seconds: float


def rebuild(
    database: Path,
    rules: IdentitySection,
    busy_timeout: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> RebuildReport:
    """`gate` is held for the swap (the daemon's write gate, when it runs this)."""
    started = time.monotonic()
    with exclusive(database):
        handle, name = tempfile.mkstemp(prefix=database.name + ".rebuild-", dir=database.parent)
        os.close(handle)
        scratch_path = Path(name)
        try:
            return _rebuild(database, scratch_path, rules, busy_timeout, progress, gate, started)
        finally:
            scratch_path.unlink(missing_ok=True)


class RebuildCancelled(Exception):
    """Raised by a progress callback to abandon a rebuild; nothing is swapped in."""


class RebuildRunning(Exception):
    """Another rebuild of this database is under way; one at a time."""


class LockUnavailable(sqlite3.OperationalError):
    """The rebuild lock's file cannot be opened (made by root for a service user, say).
    A storage error like the database's own: the daemon answers 503 with it, the
    commands exit 73, as for any failure of the files."""


@contextmanager
def exclusive(database: Path) -> Iterator[None]:
    """One rebuild of `database` at a time (and no forget during one: it would be
    undone by the swap of a graph replayed from events read before it). Made by root
    (`sudo leadsync forget`), the lock file gets the data dir's owner, so the daemon's
    user can open it afterwards."""
    path = database.with_name(database.name + ".rebuild-lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LockUnavailable(
            f"cannot open {path}: {exc.strerror or exc} (give it the daemon's user, "
            "or remove it while no rebuild or forget runs)"
        ) from None
    try:
        try:
            # A chown the file system refuses (NFS root_squash, FUSE) is ignored there:
            # the flock works whoever owns the file. Any other failure is the lock's.
            owned_like_directory(fd, database.parent)
        except OSError as exc:
            raise LockUnavailable(f"cannot give {path} the data dir's owner: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RebuildRunning(f"a rebuild of {database} is already running") from None
        yield
    finally:
        os.close(fd)


def _rebuild(
    database: Path,
    scratch_path: Path,
    rules: IdentitySection,
    busy_timeout: float,
    progress: Callable[[int, int], None],
    gate: Callable[[], AbstractContextManager[None]],
    started: float,
) -> RebuildReport:
    db = connect(database, busy_timeout)
    work = scratch(scratch_path, log_path(database))
    try:
        before = count(db, "profiles")
        total = int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        graph = Graph(SqliteGraphStore(work), rules, Extractor(rules))
        done = merges = dropped = 0
        # To the log's head as it is when each batch is read: events logged while
        # rebuilding are included, and the swap's checkpoint says where it stopped. An
        # event the merger fails on is held in the scratch file, and the swap brings
        # the merger's held events over with the graph.
        # Closed before `work` is, should `progress` cancel: a commit in flight ends first.
        applied = isolate.apply_resilient(
            graph, SqliteHeldStore(work), isolate.attempts(), db, 0, rules.batch_size, math.inf
        )
        with closing(applied) as results:
            for result in results:
                merges += result.merges
                dropped += sum(result.dropped.values())
                done = result.checkpoint
                progress(done, max(total, done))
        work.close()
        with gate():
            swap_in(db, scratch_path, done)
        return RebuildReport(
            events=done,
            profiles_before=before,
            profiles_after=count(db, "profiles"),
            merges=merges,
            links_dropped=dropped,
            seconds=time.monotonic() - started,
        )
    finally:
        work.close()
        db.close()
