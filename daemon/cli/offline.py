"""Commands that work on the database file itself, so they work with the daemon
stopped too (`leadsync dlq`, `leadsync held`, a rebuild or a forget no daemon
answers): one way to open it, lock the data dir, migrate it, and say why not."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import closing, nullcontext
from pathlib import Path
from typing import TypeVar

import anyio

from actors.exit_codes import EXIT_STORAGE, EXIT_TEMPFAIL
from daemon.backend import backend_for, database_path
from daemon.config import LoadedConfig
from daemon.datadir import DAEMON, DataDirHeld, DataDirLock
from storage.backend import Backend
from storage.errors import StorageError
from storage.session import Session
from storage.transaction import transaction

_T = TypeVar("_T")


def database(loaded: LoadedConfig) -> Path:
    return database_path(loaded.config)


def existing_database(loaded: LoadedConfig) -> Path | None:
    """The database, if it exists; None, after saying where it was looked for (a
    command that works on the files creates nothing)."""
    path = database(loaded)
    if path.is_file():
        return path
    print(f"leadsync: no database at {path} (data_dir from {loaded.path})", file=sys.stderr)
    return None


def locked_database(loaded: LoadedConfig, role: str) -> tuple[Path, DataDirLock] | int:
    """For a command (`role`: its name) that asked the daemon first and nobody
    answered: the database, which must exist, with the data dir's lock held (release it
    when done); else the exit code, said why."""
    path = existing_database(loaded)
    if path is None:
        return EXIT_STORAGE
    lock = hold_data_dir(loaded, role, unanswered=True)
    return lock if isinstance(lock, int) else (path, lock)


def hold_data_dir(
    loaded: LoadedConfig, role: str, unanswered: bool = False, restoring: bool = False
) -> DataDirLock | int:
    """The data dir's lock (daemon/datadir.py), for a command (`role`: its name, which
    the lock file shows whoever finds it held) that changes the files with no daemon:
    held for its whole run, a daemon started meanwhile refuses to run. Else the exit
    code, said why: 75 if another process holds it (`unanswered`: the command asked the
    daemon first and nobody answered at the admin address), 73 if the lock file cannot
    be opened or (but for `restoring`) a restore did not finish."""
    from storage.sqlite_backup import unfinished_restore

    data_dir = loaded.config.daemon.data_dir
    try:
        lock = DataDirLock.take(data_dir, role)
    except OSError as exc:
        print(f"leadsync: cannot lock the data dir {data_dir}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except DataDirHeld as exc:
        if exc.role != DAEMON:
            print(
                f"leadsync: `leadsync {exc.role}` (pid {exc.holder}) is working on the data "
                f"dir {data_dir}; try again when it ends",
                file=sys.stderr,
            )
        elif unanswered:
            print(
                f"leadsync: a daemon holds the data dir {data_dir} (pid {exc.holder}) but does not "
                "answer at the admin address (still starting? another --admin URL?); "
                "try again",
                file=sys.stderr,
            )
        else:
            print(
                f"leadsync: a daemon holds the data dir {data_dir} (pid {exc.holder}); "
                "stop it first",
                file=sys.stderr,
            )
        return EXIT_TEMPFAIL
    unfinished = None if restoring else unfinished_restore(database(loaded))
    if unfinished is not None:
        lock.release()
        print(f"leadsync: {unfinished.refusal(str(loaded.path))}", file=sys.stderr)
        return EXIT_STORAGE
    return lock


def with_session(
    loaded: LoadedConfig, work: Callable[[Session], _T], write: bool = False
) -> _T | None:
    """`work` on a session over the database, in one write transaction if `write`;
    None, after saying why on stderr, if there is no database or it fails."""
    path = existing_database(loaded)
    if path is None:
        return None
    try:
        with (
            closing(backend_for(loaded.config).session()) as session,
            transaction(session) if write else nullcontext(),
        ):
            return work(session)
    except StorageError as exc:
        print(f"leadsync: cannot use {path}: {exc}", file=sys.stderr)
        return None


def migrate(loaded: LoadedConfig) -> None:
    """Bring the database to this version's schema, as the daemon does at start, for
    a command that then writes in it (a rebuild, a forget). Raises what opening it
    raises: StorageError."""
    anyio.run(_open_and_close, backend_for(loaded.config))


async def _open_and_close(backend: Backend) -> None:
    storage = await backend.open()
    await storage.close()
