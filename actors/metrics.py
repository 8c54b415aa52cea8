"""Prometheus metrics: one registry per daemon, every name prefixed `leadsync_`.

Counters and histograms are updated where things happen; values that already live
somewhere (queue depths, actor states, log positions) are read at scrape time by a
collector instead of being copied into gauges that could go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from actors import __version__
from actors.delivery.status import DestinationStatus
from actors.progress import LogStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ActorState(Protocol):
    """What the metrics read of each supervised actor (the supervisor's ActorStatus)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def queue_depth(self) -> int | None: ...
    @property
    def queue_capacity(self) -> int | None: ...


# `*_created` series double the scrape for no use on a long-running daemon.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_ingested = Counter(
            "leadsync_events_ingested",
            "Events committed to the log.",
            ["source", "type"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "leadsync_events_duplicate",
            "Events not stored again because their messageId was already in the log.",
            ["source"],
            registry=r,
        )
        self.events_suppressed = Counter(
            "leadsync_events_suppressed",
            "Events of forgotten people (leadsync forget), dropped and answered 200.",
            ["source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "leadsync_events_rejected",
            "Messages refused and quarantined (invalid or oversized), by the type they "
            'claimed ("unknown" if none).',
            ["source", "type"],
            registry=r,
        )
        self.requests = Counter(
            "leadsync_http_requests",
            "Ingestion API responses by endpoint and status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "leadsync_http_request_duration_seconds",
            "Ingestion API request latency, from first byte read to response.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.backpressure = Counter(
            "leadsync_http_backpressure",
            "Requests answered 429 because a backlog bound was reached.",
            ["reason"],
            registry=r,
        )
        self.http_bad_requests = Counter(
            "leadsync_http_bad_requests",
            "Connections ended on a request that could not be read, by listener (http, "
            "admin) and reason: malformed (answered 400), or header_timeout (its line and "
            "headers did not arrive within header_timeout; closed).",
            ["listener", "reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "leadsync_log_commit_duration_seconds",
            "Time to commit one group of requests to the event log.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.commit_events = Histogram(
            "leadsync_log_commit_events",
            "Events per group commit.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.storage_errors = Counter(
            "leadsync_storage_errors", "Database operations that failed.", ["operation"], registry=r
        )
        self.poison = Counter(
            "leadsync_poison",
            "Items (events, profiles, accounts, outbox records) set aside after failing "
            "every attempt, by the component that failed on them; `leadsync held list`.",
            ["component"],
            registry=r,
        )
        self.actor_restarts = Counter(
            "leadsync_actor_restarts", "Actor crashes followed by a restart.", ["actor"], registry=r
        )

        self.identity_events = Counter(
            "leadsync_identity_events",
            "Log events applied to the identity graph.",
            registry=r,
        )
        self.identity_merges = Counter(
            "leadsync_identity_merges", "Profiles merged into an older one.", registry=r
        )
        self.identity_links_dropped = Counter(
            "leadsync_identity_links_dropped",
            "Links between identifiers not followed because a rule forbids the merge "
            "(kind=user_id: two user ids on one device or event).",
            ["kind"],
            registry=r,
        )
        self.identity_recomputes = Counter(
            "leadsync_identity_recomputes",
            "Parts of the graph re-decided in event-time order after a rule fired.",
            registry=r,
        )
        self.identity_blocked = Counter(
            "leadsync_identity_blocked_identifiers",
            "Identifier values ignored as junk (blocklist, malformed or test emails).",
            registry=r,
        )
        self.identity_failures = Counter(
            "leadsync_identity_batch_failures",
            "Batches the merger failed on (a bug); it retries with backoff. Alert on it.",
            registry=r,
        )
        self.identity_batch_seconds = Histogram(
            "leadsync_identity_batch_duration_seconds",
            "Time to apply one batch of log events to the identity graph.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

        self.scoring_model = Info(
            "leadsync_scoring_model", "The scoring model version in use.", registry=r
        )
        self.scoring_fit_profiles = Counter(
            "leadsync_scoring_fit_profiles",
            "Changes taken off the to-do list (one per profile a merger batch changed) "
            "and rescored.",
            registry=r,
        )
        self.scoring_fit_seconds = Histogram(
            "leadsync_scoring_fit_duration_seconds",
            "Time to rescore one round of changed profiles.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.scoring_events_folded = Counter(
            "leadsync_scoring_events_read",
            "Log events read into the behavioural aggregates.",
            registry=r,
        )
        self.scoring_batch_profiles = Counter(
            "leadsync_scoring_batch_profiles",
            "Profiles scored by batch runs.",
            registry=r,
        )
        self.scoring_batch_seconds = Histogram(
            "leadsync_scoring_batch_duration_seconds",
            "Time of one batch run over every profile and account.",
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )

        self.destination_sent = Counter(
            "leadsync_destination_sent",
            "Profiles' payloads the destination acknowledged.",
            ["destination"],
            registry=r,
        )
        self.destination_requests = Counter(
            "leadsync_destination_requests",
            "Calls to the destination by outcome: ok, partial (some records refused), "
            "throttled (429), unavailable (5xx, timeout, connection), refused (400), "
            "failed (our sender raised on the records: a bug they set off).",
            ["destination", "outcome"],
            registry=r,
        )
        self.destination_failed = Counter(
            "leadsync_destination_failed",
            "Records whose send failed and was scheduled again.",
            ["destination"],
            registry=r,
        )
        self.destination_dead_lettered = Counter(
            "leadsync_destination_dead_lettered",
            "Records moved to the dead-letter table (see `leadsync dlq list`).",
            ["destination"],
            registry=r,
        )
        self.destination_lag = Histogram(
            "leadsync_destination_lag_seconds",
            "From the score being stored to the destination acknowledging it.",
            ["destination"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
            registry=r,
        )

    def watch(
        self, actors: Callable[[], Sequence[ActorState]], progress: Callable[[], LogStatus]
    ) -> None:
        """Read actor states and log positions at scrape time (a snapshot of each)."""
        self.registry.register(_LiveCollector(actors, progress))

    def watch_destinations(self, statuses: Callable[[], Mapping[str, DestinationStatus]]) -> None:
        """Read each destination's status at scrape time (a snapshot of each)."""
        self.registry.register(_DestinationCollector(statuses))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(
        self, actors: Callable[[], Sequence[ActorState]], progress: Callable[[], LogStatus]
    ) -> None:
        self._actors = actors
        self._progress = progress

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("leadsync_build", "Version of the running daemon.")
        info.add_metric([], {"version": __version__})
        yield info
        up = GaugeMetricFamily("leadsync_actor_up", "1 while the actor runs.", labels=["actor"])
        depth = GaugeMetricFamily(
            "leadsync_actor_queue_depth", "Messages waiting in the actor's inbox.", labels=["actor"]
        )
        capacity = GaugeMetricFamily(
            "leadsync_actor_queue_capacity", "Bound of the actor's inbox.", labels=["actor"]
        )
        for status in self._actors():
            up.add_metric([status.name], 1.0 if status.state == "running" else 0.0)
            if status.queue_depth is not None and status.queue_capacity is not None:
                depth.add_metric([status.name], status.queue_depth)
                capacity.add_metric([status.name], status.queue_capacity)
        yield up
        yield depth
        yield capacity
        p = self._progress()
        yield GaugeMetricFamily(
            "leadsync_log_head_sequence", "Sequence number of the newest logged event.", p.head
        )
        yield GaugeMetricFamily(
            "leadsync_log_pending_events", "Events accepted, waiting for their commit.", p.pending
        )
        yield GaugeMetricFamily(
            "leadsync_log_backlog_events",
            "Logged events the slowest consumer has not applied yet.",
            p.backlog,
        )
        lag = GaugeMetricFamily(
            "leadsync_log_consumer_lag_events",
            "Logged events each consumer has not applied yet.",
            labels=["consumer"],
        )
        for consumer, seq in p.consumers.items():
            lag.add_metric([consumer], max(p.head - seq, 0))
        yield lag


class _DestinationCollector(Collector):
    def __init__(self, statuses: Callable[[], Mapping[str, DestinationStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "queued": GaugeMetricFamily(
                "leadsync_destination_queued",
                "Outbox rows due or waiting for a retry.",
                labels=["destination"],
            ),
            "held": GaugeMetricFamily(
                "leadsync_destination_held",
                "Outbox rows waiting for the end of the batch run.",
                labels=["destination"],
            ),
            "dead_letters": GaugeMetricFamily(
                "leadsync_destination_dead_letters",
                "Rows in the dead-letter table.",
                labels=["destination"],
            ),
            "rate": GaugeMetricFamily(
                "leadsync_destination_rate",
                "Calls per second over the last rate-limit window.",
                labels=["destination"],
            ),
            "last_success_at": GaugeMetricFamily(
                "leadsync_destination_last_success_timestamp_seconds",
                "When the destination last acknowledged a record (Unix time).",
                labels=["destination"],
            ),
        }
        for name, status in self._statuses().items():
            for field, gauge in gauges.items():
                value = getattr(status, field)
                if value is not None:
                    gauge.add_metric([name], float(value))
        yield from gauges.values()
