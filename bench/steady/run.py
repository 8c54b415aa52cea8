"""One run of the real daemon at one offered rate: the daemon (`python -m daemon run`
on free ports, its own temporary directory) with the example model, a realtime
webhook destination (to a sink in a process of its own) and a batch file
destination; the load generator; a sample every second; the verdict.

The verdict (`Judge`): a run is sustained when, for the whole run, no request was
answered anything but 200 and every lag stayed under LAG_LIMIT seconds: the merger's
and the scorer fold's (events behind the log's head, over the offered rate), the
rescoring to-do list's (how long its oldest row has waited, to the second), and
the realtime destination's (score stored to acknowledged, as the daemon reports it).
The batch destination is shown, not judged: it holds rows until a batch run by design.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import measure
from bench.steady.load import Generator, Plan, Record
from bench.steady.observe import FOLD, MERGER, Observer, Sample, merger_workers
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess

LAG_LIMIT = 5.0
"""Seconds of events each lag must stay under, for the whole run (the issue's bound)."""
REALTIME, BATCH = "hook", "files"
"""The two destinations' names."""
LAGS = ("merger", "scorer fold", "rescoring to-do", "realtime destination")


@dataclass(frozen=True)
class Settings:
    """Everything about a run but its rate and length."""

    batch_size: int = 100
    connections: int = 64
    people: int = 100_000
    new_share: float = 0.1
    templates: int = 1024
    batch_interval: str = "4h"
    hook_rate: int = 100
    """The realtime destination's calls a second (up to 100 records each): above what
    the rescoring sends, so its lag is the daemon's and not the configured limit's."""
    seed: int = 7


def daemon_config(settings: Settings, sink_url: str, files: Path) -> str:
    return f"""
[scoring]
batch_interval = "{settings.batch_interval}"

[destinations.{REALTIME}]
type = "webhook"
mode = "realtime"
url = "{sink_url}"
secret = "bench-secret"

[destinations.{REALTIME}.rate]
requests = {settings.hook_rate}
per = "1s"

[destinations.{BATCH}]
type = "file"
mode = "batch"
path = "{files}"
rotate_interval = "5m"
"""


@dataclass
class Judge:
    """Each lag of each sample against LAG_LIMIT, and the answers against 200."""

    rate: float
    exceeded: dict[str, float] = field(default_factory=dict)
    """Which lag first passed LAG_LIMIT (or "429", "errors": the first such answer), and
    when (seconds into the load)."""
    _newest: list[tuple[int, float]] = field(default_factory=list)
    """(newest to-do id, the first sample that saw it), ascending: when each row came."""

    def lags(self, sample: Sample) -> dict[str, float]:
        """Each lag in seconds, as judged."""
        lags = {
            "merger": sample.lag(MERGER) / self.rate,
            "scorer fold": sample.lag(FOLD) / self.rate,
            "rescoring to-do": self._todo_age(sample),
        }
        realtime = sample.destinations.get(REALTIME)
        lags["realtime destination"] = (realtime.lag or 0.0) if realtime is not None else 0.0
        return lags

    def _todo_age(self, sample: Sample) -> float:
        """How long the oldest row on the to-do list has waited: it came no later than
        the first sample whose newest id reached its id. Ids grow while the list holds
        rows (a new row's id is the largest plus one); one that empties starts again."""
        if sample.todo_ids is None:
            return 0.0
        oldest, newest = sample.todo_ids
        if not newest:
            self._newest.clear()
            return 0.0
        if self._newest and newest < self._newest[-1][0]:
            self._newest.clear()
        if not self._newest or newest > self._newest[-1][0]:
            self._newest.append((newest, sample.at))
        came = bisect.bisect_left(self._newest, (oldest, -math.inf))
        return sample.at - self._newest[min(came, len(self._newest) - 1)][1]

    def see(self, sample: Sample) -> dict[str, float]:
        lags = self.lags(sample)
        for name, seconds in lags.items():
            if seconds >= LAG_LIMIT and name not in self.exceeded:
                self.exceeded[name] = sample.at
        if sample.refused and "429" not in self.exceeded:
            self.exceeded["429"] = sample.at
        if sample.errors and "errors" not in self.exceeded:
            self.exceeded["errors"] = sample.at
        return lags

    @property
    def failed(self) -> bool:
        return bool(self.exceeded)


@dataclass
class RunResult:
    rate: float
    seconds: float
    settings: Settings
    record: Record
    samples: list[Sample]
    lags: list[dict[str, float]]
    """Each sample's lags in seconds, as judged."""
    exceeded: dict[str, float]
    peak_rss: int
    worker_peak_rss: int
    exit_code: int | None
    load: tuple[tuple[float, float, float], tuple[float, float, float]]
    """os.getloadavg() as the run began and as it ended."""
    backpressure: dict[str, float] = field(default_factory=dict)
    """429s by the bound that was reached (leadsync_http_backpressure_total)."""

    @property
    def refused(self) -> int:
        return sum(self.record.refused)

    @property
    def errors(self) -> int:
        return sum(self.record.errors)

    @property
    def generator_behind(self) -> bool:
        return self.record.behind

    @property
    def sustained(self) -> bool:
        """No request refused, no lag over the limit, and the rate really offered."""
        return not (self.exceeded or self.refused or self.errors or self.generator_behind)

    def verdict(self) -> str:
        if self.sustained:
            return "sustained"
        reasons = [f"{name} at {at:.0f} s" for name, at in self.exceeded.items()]
        if self.refused and "429" not in self.exceeded:
            reasons.append(f"{self.refused:,} answered 429")
        if self.record.unsent:
            reasons.append(
                f"{self.record.unsent:,} requests not sent (answers slower than the rate)"
            )
        if self.errors > self.record.unsent and "errors" not in self.exceeded:
            reasons.append(f"{self.errors - self.record.unsent:,} errors")
        if self.generator_behind:
            reasons.append("the generator fell behind its schedule")
        return "NOT sustained: " + "; ".join(reasons)


def run_once(
    settings: Settings,
    rate: float,
    seconds: float,
    sink_url: str,
    stop_on_failure: bool = False,
    warm: Path | None = None,
) -> RunResult:
    """The daemon at `rate` events/s offered for `seconds`, on a copy of the data dir of
    `warm` (bench/steady/warm.py) when given, else on an empty one; with
    `stop_on_failure`, the load ends as soon as the run cannot be sustained (a search's
    steps)."""
    with tempfile.TemporaryDirectory(prefix="leadsync-sustained-") as temp:
        directory = Path(temp)
        scores = (warm if warm is not None else directory / "var") / "scores"
        daemon = DaemonProcess(directory, daemon_config(settings, sink_url, scores))
        if warm is not None:
            shutil.copytree(warm / "var", directory / "var")
        plan = Plan(
            url=f"{daemon.url}/v1/batch",
            write_key=WRITE_KEYS["backend"],
            rate=rate,
            seconds=seconds,
            batch_size=settings.batch_size,
            connections=settings.connections,
            people=settings.people,
            new_share=settings.new_share,
            templates=settings.templates,
            seed=settings.seed,
        )
        generator = Generator(plan)
        try:
            daemon.start()
            assert daemon.process is not None
            pid = daemon.process.pid
            observer = Observer(daemon.admin_url, daemon.database, pid, generator.pid)
            judge = Judge(rate)
            samples: list[Sample] = []
            lags: list[dict[str, float]] = []
            load_before = os.getloadavg()
            observer.started = time.perf_counter()
            generator.go()
            samples.append(observer.sample())
            lags.append(judge.see(samples[0]))
            end = observer.started + seconds
            tick = observer.started
            while True:
                tick += 1.0
                time.sleep(max(0.0, tick - time.perf_counter()))
                sample = observer.sample()
                samples.append(sample)
                lags.append(judge.see(sample))
                if time.perf_counter() >= end:
                    break
                if stop_on_failure and judge.failed:
                    generator.stop()
                    break
            record = generator.record()
            final = observer.sample()
            samples.append(final)
            lags.append(judge.see(final))
            workers = merger_workers(pid)
            peak_rss = measure.status_bytes(pid, "VmHWM")
            worker_peak = sum(measure.status_bytes(w, "VmHWM") for w in workers)
            backpressure = observer.backpressure()
            observer.close()
            load_after = os.getloadavg()
            try:
                code: int | None = daemon.terminate(timeout=60)
            except Exception:
                code = None
        finally:
            daemon.stop_quietly()
            generator.close()
    return RunResult(
        rate,
        seconds,
        settings,
        record,
        samples,
        lags,
        judge.exceeded,
        peak_rss,
        worker_peak,
        code,
        (load_before, load_after),
        backpressure,
    )
