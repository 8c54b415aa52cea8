"""A data dir's two files, in process: events logged as the tracking API logs them,
the merger's own worker applying them on cue, and rows read back across both files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors import logs
from actors.identity import worker
from actors.identity.settings import IdentitySection
from actors.lifecycle.forget import forget
from daemon.config import Config
from storage.lifecycle import Erased
from storage.log import AppendRequest, Rejected
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import log_path
from storage.sqlite_lifecycle import SqliteLifecycleStore
from tests.support.graph import records


def log_events(
    path: Path, messages: list[dict[str, Any]], rejected: list[bytes] | None = None
) -> None:
    """Log the messages (and quarantine `rejected` bodies as refused at the door)."""

    async def append() -> None:
        storage = await SqliteStorage.open(path)
        try:
            requests = [AppendRequest(s, "now", e) for s, e in map(records, messages)]
            if rejected:
                refused = [Rejected(None, "a test's", body) for body in rejected]
                requests.append(AppendRequest("web", "now", [], refused))
            await storage.append(requests)
        finally:
            await storage.close()

    asyncio.run(append())


def start_merger(
    path: Path, monkeypatch: pytest.MonkeyPatch, rules: IdentitySection | None = None
) -> Iterator[Callable[[], None]]:
    """The merger's worker on `path`; calling what this yields applies the whole log."""
    log_events(path, [])
    monkeypatch.setattr(logs, "configure", lambda *_: None)
    monkeypatch.setattr(worker, "_state", None)
    checkpoint = [worker.start(SqliteBackend(path), rules or Config().identity, "warning", "json")]

    def apply_all() -> None:
        while (applied := worker.apply_next(checkpoint[0])) is not None:
            checkpoint[0] = applied.checkpoint

    try:
        yield apply_all
    finally:
        assert worker._state is not None
        worker._state.close()


def remaining(path: Path, sql: str, *args: object) -> list[Any]:
    """Rows of either file (the log's tables as log.*)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("ATTACH DATABASE ? AS log", (str(log_path(path)),))
        return db.execute(sql, args).fetchall()


def forgotten(path: Path, identifier: tuple[str, str], config: Config | None = None) -> Erased:
    """`forget` run on the files at `path`, as with the daemon stopped."""
    store = SqliteLifecycleStore.open(path, 5)
    try:
        return forget(store, identifier, config or Config(), time.time())
    finally:
        store.close()


def salt_of(path: Path) -> bytes:
    """The key of the suppression hashes in the database at `path`."""
    [(value,)] = remaining(path, "SELECT value FROM meta WHERE key = 'suppression_salt'")
    return bytes.fromhex(value)
