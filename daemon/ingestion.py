"""The ingestion path as the daemon wires it: the log writer and every source over one
inbox, sharing the log's progress and the metrics.

The supervisor builds a fresh actor from `log_writer` or a source's factory at each
start and restart. Tests build them from the same object to serve the ingestion API
in process (tests/support/ingestion.py), so what they answer is wired as in the daemon.
"""

from __future__ import annotations

import anyio

from actors.lifecycle.suppressions import Suppressions
from actors.log_writer import LogWriter
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from actors.source_context import Limits, SourceHost
from actors.source_kinds import Build, kinds
from actors.submission import Submission
from daemon.config import Config
from storage.backend import Storage


class Ingestion:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        progress: LogProgress,
        metrics: Metrics,
        suppressions: Suppressions,
    ) -> None:
        self._config = config
        self._storage = storage
        self._progress = progress
        self._metrics = metrics
        self._suppressions = suppressions
        # Sized in requests; the pending-events bound the sources keep (SourceContext)
        # is what actually limits memory, this only has to be large enough never to
        # bind first.
        self.inbox = Mailbox[Submission](config.http.max_pending_events)
        """The log writer's: every source's submissions."""
        self.host = SourceHost(
            self.inbox,
            progress,
            metrics,
            Limits(config.http.max_pending_events, config.http.max_backlog),
            storage,
            config.daemon.shutdown_grace,
            config,
        )

    def log_writer(self) -> LogWriter:
        return LogWriter(
            self._storage,
            self.inbox,
            self._progress,
            self._metrics,
            self._config.storage.checkpoint_interval,
            self._suppressions,
        )

    async def sources(self) -> list[Build]:
        """The actors of every source, kind by kind (each kind starts all of its own).
        A kind that fails to (a plugin's bug, say) is CannotStartSources, naming it."""
        builds: list[Build] = []
        for kind_name, kind in kinds().items():
            named = {n: s for n, s in self._config.sources.items() if s.type == kind_name}
            if not named:
                continue
            try:
                with anyio.fail_after(START_TIMEOUT):
                    builds += await kind.start(named, self.host)
            except Exception as exc:
                what = ", ".join(f"sources.{name}" for name in named)
                raise CannotStartSources(
                    f"{what} (type {kind_name}) did not start: {type(exc).__name__}: {exc}"
                ) from exc
        return builds


START_TIMEOUT = 60.0
"""Seconds a source kind has to say which actors it runs (it may read the database)."""


class CannotStartSources(Exception):
    """A source kind's start failed: the daemon does not start without its sources."""
