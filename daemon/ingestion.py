"""The ingestion path as the daemon wires it: the log writer and the HTTP source over
one inbox, sharing the log's progress and the metrics.

The supervisor builds a fresh actor from `log_writer` or `http_source` at each start
and restart. Tests build the two from the same object to serve the ingestion API in
process (tests/support/ingestion.py), so what they answer is wired as in the daemon.
"""

from __future__ import annotations

from actors.http_source import HttpSourceActor
from actors.lifecycle import Suppressions
from actors.log_writer import LogWriter, Submission
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox
from daemon.config import Config
from storage.backend import Storage


class Ingestion:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        write_keys: dict[str, str],
        progress: LogProgress,
        metrics: Metrics,
        suppressions: Suppressions,
    ) -> None:
        self._config = config
        self._storage = storage
        self._write_keys = write_keys
        self._progress = progress
        self._metrics = metrics
        self._suppressions = suppressions
        # Sized in requests; the pending-events bound in the HTTP source is what
        # actually limits memory, this only has to be large enough never to bind first.
        self.inbox = Mailbox[Submission](config.http.max_pending_events)
        """The log writer's: every source's submissions."""

    def log_writer(self) -> LogWriter:
        return LogWriter(
            self._storage,
            self.inbox,
            self._progress,
            self._metrics,
            self._config.storage.checkpoint_interval,
            self._suppressions,
        )

    def http_source(self) -> HttpSourceActor:
        """The one actor for every `type = "http"` source (one listener)."""
        return HttpSourceActor(
            self._config.http,
            self._config.sources,
            self._write_keys,
            self.inbox,
            self._progress,
            self._metrics,
            self._config.daemon.shutdown_grace,
        )
