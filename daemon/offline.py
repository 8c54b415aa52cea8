"""Commands that work on the database file itself, so they work with the daemon
stopped too (`leadsync dlq`, `leadsync held`): one way to open it and say why not."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

from daemon.config import LoadedConfig
from storage.base import Transactional

_S = TypeVar("_S", bound=Transactional)
_T = TypeVar("_T")


def database(loaded: LoadedConfig) -> Path:
    from daemon.app import DATABASE_NAME  # the app module is heavy; few commands need it

    return Path(loaded.config.daemon.data_dir) / DATABASE_NAME


def with_store(
    loaded: LoadedConfig,
    make: Callable[[sqlite3.Connection], _S],
    work: Callable[[_S], _T],
    write: bool = False,
) -> _T | None:
    """`work` on a store over the database, in one write transaction if `write`;
    None, after saying why on stderr, if there is no database or it fails."""
    from storage.base import transaction
    from storage.sqlite_graph import connect

    path = database(loaded)
    if not path.is_file():
        print(f"leadsync: no database at {path} (data_dir from {loaded.path})", file=sys.stderr)
        return None
    db = connect(path, loaded.config.storage.busy_timeout)
    try:
        store = make(db)
        with transaction(store) if write else nullcontext():
            return work(store)
    except sqlite3.Error as exc:
        print(f"leadsync: cannot use {path}: {exc}", file=sys.stderr)
        return None
    finally:
        db.close()
