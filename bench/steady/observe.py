"""What the bench reads from the running daemon every second, from outside, as an
operator would: the admin API's /status (the log's head, each consumer's checkpoint,
each destination's queue and lag), the scorer's to-do list from the database file
(read-only; /status does not show it), and RSS and CPU from /proc."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import urllib.request
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measure
from storage.sqlite_connect import uri

MERGER, FOLD = "identity", "scorer"
"""The consumers' names in /status (storage.graph.IDENTITY_CONSUMER,
storage.scores.SCORER_CONSUMER)."""
REFUSED, ERRORS = "refused", "errors"
_REQUESTS = "leadsync_http_requests_total{"
_BACKPRESSURE = "leadsync_http_backpressure_total{"
_CODE = re.compile(r'code="([^"]*)"')
_REASON = re.compile(r'reason="([^"]*)"')


@dataclass(frozen=True)
class Outbox:
    """One destination in /status."""

    queued: int
    held: int
    sent: int
    lag: float | None
    """Seconds from score stored to acknowledged, of the oldest record of its last call."""


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds since the load began."""
    head: int
    applied: dict[str, int]
    """Each consumer's checkpoint."""
    todo_ids: tuple[int, int] | None
    """The scorer's to-do list (profiles the merger changed, not yet rescored): the ids
    of its oldest and newest rows, (0, 0) when empty, None when it could not be read."""
    refused: int
    """Ingestion API answers so far that were 429."""
    errors: int
    """Ingestion API answers so far that were neither 200 nor 429."""
    committing: float
    """Seconds the log writer has spent in group commits so far: its share of the time
    is what the scorer's fold waits on (it defers while that passes one half, for
    FOLD_WAIT_LIMIT at most)."""
    destinations: dict[str, Outbox]
    daemon_rss: int
    worker_rss: int
    """Of the daemon's child processes that run the merger (its spawned workers)."""
    cpu: dict[str, float]
    """Cumulative CPU seconds: daemon, worker, generator, machine (every process)."""
    status_seconds: float
    """How long /status took to answer."""

    @property
    def todo(self) -> int:
        """Rows on the to-do list."""
        if not self.todo_ids or not self.todo_ids[1]:
            return 0
        return self.todo_ids[1] - self.todo_ids[0] + 1

    def lag(self, consumer: str) -> int:
        """Events between the log's head and the consumer's checkpoint."""
        return max(self.head - self.applied.get(consumer, 0), 0)


def children(pid: int) -> list[int]:
    """The direct children of a process (every thread's)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def merger_workers(daemon_pid: int) -> list[int]:
    """The daemon's children that multiprocessing spawned (the merger's worker), not
    its resource tracker."""
    workers = []
    for child in children(daemon_pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.append(child)
    return workers


def rss(pid: int) -> int:
    try:
        return measure.status_bytes(pid, "VmRSS")
    except (OSError, LookupError):
        return 0


def cpu(pid: int) -> float:
    try:
        return measure.cpu_seconds(pid)
    except OSError:
        return 0.0


def machine_cpu_seconds() -> float:
    """CPU time spent by every process on the machine (idle and iowait excluded)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Observer:
    """Takes a `Sample` of one daemon."""

    def __init__(self, admin_url: str, database: Path, daemon_pid: int, generator_pid: int) -> None:
        self._status_url = admin_url + "/status"
        self._metrics_url = admin_url + "/metrics"
        self._database = database
        self._daemon = daemon_pid
        self._generator = generator_pid
        self._db: sqlite3.Connection | None = None
        self._generator_cpu = 0.0
        self.started = time.perf_counter()

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self._status_url, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
        return body

    def _todo(self) -> tuple[int, int] | None:
        """The oldest and newest ids on the scorer's to-do list: a queue by integer id,
        taken oldest first, read off the primary key. One short read-only statement on
        a connection of the bench's."""
        try:
            if self._db is None:
                self._db = sqlite3.connect(
                    uri(self._database, readonly=True), uri=True, isolation_level=None, timeout=1
                )
            low, high = self._db.execute("SELECT min(id), max(id) FROM profile_changes").fetchone()
        except sqlite3.Error:
            return None
        return (0, 0) if low is None else (int(low), int(high))

    def metrics(self) -> dict[str, float]:
        """The counters the bench follows, from /metrics: the ingestion API's answers that
        were 429 (REFUSED) and neither 200 nor 429 (ERRORS), the log writer's time in
        commits (measure.COMMIT_SECONDS), and 429s by the bound that was reached
        ("backpressure:REASON")."""
        figures = {REFUSED: 0.0, ERRORS: 0.0, measure.COMMIT_SECONDS: 0.0}
        with urllib.request.urlopen(self._metrics_url, timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == measure.COMMIT_SECONDS:
                figures[name] = float(value)
            elif name.startswith(_REQUESTS) and (code := _CODE.search(name)):
                if code[1] == "429":
                    figures[REFUSED] += float(value)
                elif code[1] != "200":
                    figures[ERRORS] += float(value)
            elif name.startswith(_BACKPRESSURE) and (reason := _REASON.search(name)):
                figures[f"backpressure:{reason[1]}"] = float(value)
        return figures

    def backpressure(self) -> dict[str, float]:
        """429s so far by the bound that was reached (pending events, backlog)."""
        return {
            name.partition(":")[2]: value
            for name, value in self.metrics().items()
            if name.startswith("backpressure:")
        }

    def _generator_seconds(self) -> float:
        """The generator's CPU; once it has exited, what it had last."""
        with suppress(OSError):
            self._generator_cpu = measure.cpu_seconds(self._generator)
        return self._generator_cpu

    def sample(self) -> Sample:
        asked = time.perf_counter()
        status = self.status()
        took = time.perf_counter() - asked
        workers = merger_workers(self._daemon)
        metrics = self.metrics()
        return Sample(
            at=asked - self.started,
            head=int(status["events_stored"]),
            applied={name: int(c["applied"]) for name, c in status["consumers"].items()},
            todo_ids=self._todo(),
            refused=int(metrics[REFUSED]),
            errors=int(metrics[ERRORS]),
            committing=metrics[measure.COMMIT_SECONDS],
            destinations={
                name: Outbox(int(d["queued"]), int(d["held"]), int(d["sent"]), d["lag"])
                for name, d in status["destinations"].items()
            },
            daemon_rss=rss(self._daemon),
            worker_rss=sum(rss(w) for w in workers),
            cpu={
                "daemon": cpu(self._daemon),
                "worker": sum(cpu(w) for w in workers),
                "generator": self._generator_seconds(),
                "machine": machine_cpu_seconds(),
            },
            status_seconds=took,
        )

    def close(self) -> None:
        if self._db is not None:
            with closing(self._db):
                self._db = None
