"""The storage backend the daemon and its commands open, built from daemon.toml's
`data_dir` and `[storage]` in this one place."""

from __future__ import annotations

from pathlib import Path

from daemon.config import Config
from storage.sqlite_backend import SqliteBackend

DATABASE_NAME = "leadsync.db"


def database_path(config: Config) -> Path:
    return Path(config.daemon.data_dir) / DATABASE_NAME


def backend_for(config: Config) -> SqliteBackend:
    settings = config.storage
    return SqliteBackend(
        database_path(config),
        busy_timeout=settings.busy_timeout,
        journal_size_limit=settings.journal_size_limit,
        dedup_window=settings.dedup_window,
        retain_events=settings.retain_events,
    )
