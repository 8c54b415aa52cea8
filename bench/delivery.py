"""Delivery of a backlog through one rate-limited webhook destination.

Stages N changed profiles' payloads (the mk_* traits a scored profile carries, with
its user id, email and anonymous id) for one webhook destination, due now, then runs
the DestinationActor in this process as the daemon does (its limiter, the
WebhookSender, its own SQLite connection, the storage's write gate) until every row
is sent. The payloads are built and staged in a child process, so the peak RSS
printed is delivery's own. The receiver is a minimal aiohttp server in a process of
its own, so its CPU does not share the actor's event loop: it answers 200 at once and
notes when each request arrived, and the rate and the windows are counted from those
arrivals, as the destination's API would count them.

Next to it, the limit measured in the same run: the same sender and receiver with no
rate limit, so a reader sees whether the limiter or the machine is what binds.

    .venv/bin/python -m bench.delivery [--rate 50] [--per 1] [--profiles 100000]
        [--batch-size 100] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from bisect import bisect_left
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
from aiohttp import web

from actors.delivery.actor import CACHE_KIB, DestinationActor
from actors.delivery.payload import Payload, encode
from actors.delivery.staging import stage_changes
from actors.delivery.status import DestinationStatus
from actors.destinations.webhook import WebhookDestination
from actors.destinations.webhook.sender import WebhookSender
from actors.metrics import Metrics
from actors.scoring.model import FIT_SEGMENTS, LIKELIHOOD_SEGMENTS, example
from actors.settings import dec_hook
from bench import measure
from daemon.config import StorageSection
from storage.scores import Score
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import connect
from storage.sqlite_outbox import SqliteOutboxStore

TARGET_SHARE = 0.95
"""The issue's target: at least 95% of the destination's limit, and never above it."""
LIMITED = "hook"
UNLIMITED = "unlimited"
UNLIMITED_RATE = 100_000
"""Requests a second for the run that measures the limit: more than any sender does."""
LIMIT_RECORDS = 20_000
"""Records in the run that measures the limit: a couple of hundred requests, a second
or so, enough for a steady rate."""
POLL = 0.01
"""Seconds between looks at the actor's count of records sent."""
REPORT = "report"
"""Asks the receiver for the arrivals so far (it then forgets them); anything else
stops it."""

# ---------------------------------------------------------------------------- payloads

_TITLES = (
    "CTO",
    "VP Engineering",
    "Head of Growth",
    "Engineering Manager",
    "Director of Marketing",
    "Software Engineer",
    "Senior Data Analyst",
    "Account Executive",
    "Consultant",
    "Student",
)
_COUNTRIES = ("US", "DE", "GB", "CA", "FR", "NL", "IN", "BR", "ES", "AU")
_INDUSTRIES = ("Software", "SaaS", "Financial Services", "Retail", "Healthcare", "Education")
_DOMAINS = ("gmail.com", "outlook.com", "acme.io", "globex.com", "initech.de", "umbrella.co.uk")


def _segment(score: int, thresholds: dict[str, float], names: tuple[str, ...]) -> str:
    return next((name for name in names[:-1] if score >= thresholds[name]), names[-1])


def payloads(count: int, seed: int) -> list[Payload]:
    """What the scorer stages for a profile whose scores changed, with the example
    model's segments, signals and grades."""
    rng = random.Random(seed)
    spec = example().spec
    fit_signals = [rule.signal for rule in spec.fit.rules]
    ltb_signals = [weight.signal for weight in spec.likelihood.events if weight.signal]
    made = []
    for n in range(count):
        fit = rng.randint(0, 100)
        ltb = min(100, int(rng.expovariate(1 / 20)))
        fit_segment = _segment(fit, spec.fit.segments, FIT_SEGMENTS)
        ltb_segment = _segment(ltb, spec.likelihood.segments, LIKELIHOOD_SEGMENTS)
        inputs = {
            "mk_job_title": rng.choice(_TITLES),
            "mk_country": rng.choice(_COUNTRIES),
            "mk_company_size": int(rng.lognormvariate(4.5, 1.6)) + 1,
            "mk_industry": rng.choice(_INDUSTRIES),
        }
        score = Score(
            fit_score=fit,
            fit_segment=fit_segment,
            fit_signals=rng.sample(fit_signals, rng.randint(1, 3)),
            ltb_score=ltb,
            ltb_segment=ltb_segment,
            ltb_signals=rng.sample(ltb_signals, rng.randint(1, 3)) if ltb else [],
            grade=spec.grade[fit_segment][LIKELIHOOD_SEGMENTS.index(ltb_segment)],
            # Each input only when the profile had the trait it reads.
            inputs={name: value for name, value in inputs.items() if rng.random() < 0.75},
        )
        made.append(
            Payload(
                f"prf_{rng.getrandbits(64):016x}",
                score.traits(),
                user_id=f"usr_{n:09d}",
                email=f"lead.{n}@{rng.choice(_DOMAINS)}",
                anonymous_id=f"{rng.getrandbits(64):016x}-{n:08x}",
            )
        )
    return made


def stage(path: Path, destination: str, count: int, seed: int) -> float:
    """Runs in a child process. Seconds to encode the payloads and stage them, due
    now, in one transaction."""
    made = payloads(count, seed)
    db = connect(path, StorageSection().busy_timeout)
    try:
        store = SqliteOutboxStore(db)
        started = time.perf_counter()
        now = time.time()
        rows = [(row, payload.profile, *encode(payload)) for row, payload in enumerate(made)]
        store.begin()
        stage_changes(store, destination, rows, now, now)
        store.commit()
        seconds = time.perf_counter() - started
        # The daemon's timer would have checkpointed by the time the actor reads.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    return seconds


# ---------------------------------------------------------------------------- receiver


class _Record(msgspec.Struct):
    id: str
    """The delivery id: one payload of one profile, the same on every send of it."""


class _Body(msgspec.Struct):
    profiles: list[_Record]


_records = msgspec.json.Decoder(_Body).decode


@dataclass
class Arrivals:
    times: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic arrival, records) of each request."""
    distinct: int = 0
    """Delivery ids received, each counted once: fewer than the records if some
    payload arrived twice."""


def receive(pipe: Connection) -> None:
    """The destination, in a process of its own: sends its port down `pipe`, then
    answers every POST 200 at once, noting when it arrived and what it held."""
    asyncio.run(_serve(pipe))


async def _serve(pipe: Connection) -> None:
    times: list[tuple[float, int]] = []
    ids: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        at = time.monotonic()
        records = _records(await request.read()).profiles
        times.append((at, len(records)))
        ids.update(record.id for record in records)
        return web.Response()

    # A webhook call carries up to 1,000,000 payload bytes, plus its own keys.
    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    pipe.send(runner.addresses[0][1])
    while await asyncio.to_thread(pipe.recv) == REPORT:
        # Plain data: this module is __mp_main__ here, a class of it would not unpickle.
        pipe.send((times.copy(), len(ids)))
        times.clear()
        ids.clear()
    await runner.cleanup()


class Receiver:
    """This process's end of `receive`."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=receive, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self.url = f"http://127.0.0.1:{self._pipe.recv()}/hook"

    def arrivals(self) -> Arrivals:
        """Every request since the last call."""
        self._pipe.send(REPORT)
        times, distinct = self._pipe.recv()
        return Arrivals(times, distinct)

    def close(self) -> None:
        self._pipe.send("stop")
        self._process.join()


# ---------------------------------------------------------------------------- delivery


@dataclass
class Run:
    requests: int
    """The limit: at most `requests` calls in any window of `per` seconds."""
    per: float
    staged: int
    seconds: float
    """From the actor ready to the last record settled."""
    status: DestinationStatus
    rss_start: int
    rss_end: int
    arrivals: Arrivals = field(default_factory=Arrivals)

    @property
    def times(self) -> list[float]:
        return sorted(at for at, _ in self.arrivals.times)

    @property
    def requests_made(self) -> int:
        return len(self.arrivals.times)

    @property
    def received(self) -> int:
        return sum(records for _, records in self.arrivals.times)

    def part_full(self, batch_size: int) -> int:
        return sum(1 for _, records in self.arrivals.times if records < batch_size)

    def first_to_last(self) -> float:
        times = self.times
        return (len(times) - 1) / (times[-1] - times[0])

    def per_elapsed(self) -> float:
        return self.requests_made / self.seconds

    def sustained(self) -> float | None:
        """Requests a second over whole windows, whatever their phase: R over the mean
        time from an arrival to the R-th after it (None if R or fewer arrived)."""
        times, r = self.times, self.requests
        gaps = [later - earlier for earlier, later in zip(times[:-r], times[r:], strict=True)]
        return self.requests / statistics.fmean(gaps) if gaps else None

    def most_in_window(self) -> int:
        """The most arrivals within any [t, t + per)."""
        times = self.times
        return max(bisect_left(times, at + self.per) - i for i, at in enumerate(times))


def destination(
    url: str, requests: int, per: float, batch_size: int, concurrency: int
) -> WebhookDestination:
    settings = {
        "url": url,
        "secret": "bench-secret",
        "rate": {"requests": requests, "per": per},
        "batch_size": batch_size,
        "concurrency": concurrency,
    }
    return msgspec.convert(settings, WebhookDestination, dec_hook=dec_hook)


async def deliver(path: Path, name: str, config: WebhookDestination, staged: int) -> Run:
    """Runs the destination's actor until every staged row is settled."""
    pid = os.getpid()
    rss_start = measure.status_bytes(pid, "VmRSS")
    busy_timeout = StorageSection().busy_timeout
    storage = await SqliteStorage.open(path, busy_timeout=busy_timeout)
    actor = DestinationActor(
        name,
        config,
        WebhookSender(config),
        SqliteBackend(path, busy_timeout=busy_timeout),
        storage.write_gate,
        Metrics(),
    )
    calls = staged / (config.batch_size or WebhookSender.max_batch)
    # Three times as long as the limit needs, and a minute: only a stuck actor meets it.
    deadline = calls / config.rate.requests * config.rate.per * 3 + 60
    try:
        async with anyio.create_task_group() as tg:
            ready = anyio.Event()
            tg.start_soon(actor.run, ready.set)
            await ready.wait()
            started = time.perf_counter()
            with anyio.fail_after(deadline):
                # The count the daemon's /status reads (the actor signals nothing), then
                # the outbox itself: a record sent twice is counted twice.
                while True:
                    status = actor.status()
                    if status.sent + status.dead_lettered >= staged:
                        left = await anyio.to_thread.run_sync(queued, path, name)
                        if not left:
                            break
                    await anyio.sleep(POLL)
            seconds = time.perf_counter() - started
            rss_end = measure.status_bytes(pid, "VmRSS")
            actor.stop()
    finally:
        await storage.close()
    return Run(
        config.rate.requests,
        config.rate.per,
        staged,
        seconds,
        actor.status(),
        rss_start,
        rss_end,
    )


# ---------------------------------------------------------------------------- report


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def _share(rate: float, limit: float) -> str:
    return f"{rate:,.1f}/s ({rate / limit:.1%} of the limit)"


@dataclass
class Report:
    profiles: int
    batch_size: int
    concurrency: int
    staging_seconds: float
    run: Run
    limit: Run
    database_bytes: int
    """After staging, checkpointed."""
    peak_rss: int
    outbox_left: int
    dead_letters: int

    def lines(self) -> Iterator[str]:
        run = self.run
        allowed = run.requests / run.per
        yield (
            f"leadsync delivery: {self.profiles:,} changed profiles to one webhook destination "
            f"(aiohttp receiver on loopback, a process of its own), limit {run.requests:,} "
            f"requests per {run.per:g} s, batches of {self.batch_size}, concurrency "
            f"{self.concurrency}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}"
        )
        sustained = run.sustained()
        most = run.most_in_window()
        reached = sustained is not None and sustained >= TARGET_SHARE * allowed
        records_rate = run.received / run.seconds
        rows = [
            (
                "staging (encode + stage, one transaction)",
                f"{self.profiles:,} rows in {self.staging_seconds:.2f} s "
                f"({self.profiles / self.staging_seconds:,.0f} rows/s)",
            ),
            ("limit R / T", f"{run.requests:,} per {run.per:g} s = {allowed:,.1f}/s"),
            ("requests made (at the receiver)", f"{run.requests_made:,}"),
            (
                "records delivered (receiver / actor)",
                f"{run.received:,} / {run.status.sent:,} of {run.staged:,} staged; "
                f"dead letters {run.status.dead_lettered:,}",
            ),
            (
                "records per request",
                f"{run.received / run.requests_made:.1f} mean; {run.part_full(self.batch_size):,} "
                f"requests carried fewer than {self.batch_size}",
            ),
            (
                "records/s (records / elapsed)",
                f"{records_rate:,.0f} ({records_rate / (allowed * self.batch_size):.1%} of R/T "
                "full batches)",
            ),
            (
                "distinct records at the receiver",
                f"{run.arrivals.distinct:,} ({run.received - run.arrivals.distinct:,} "
                "arrived more than once)",
            ),
            ("elapsed (actor ready -> last row settled)", f"{run.seconds:.2f} s"),
            ("requests/s, first to last arrival", _share(run.first_to_last(), allowed)),
            ("requests/s, requests / elapsed", _share(run.per_elapsed(), allowed)),
            (
                "requests/s, sustained (see below)",
                "n/a (R or fewer requests)" if sustained is None else _share(sustained, allowed),
            ),
            (f"most arrivals in any {run.per:g} s window", f"{most:,} (limit {run.requests:,})"),
            (
                f"target >= {TARGET_SHARE:.0%} of the limit (sustained)",
                "met" if reached else "NOT met",
            ),
            ("target never above the limit", "met" if most <= run.requests else "NOT met"),
            ("database after staging (both runs' rows)", _megabytes(self.database_bytes)),
            ("peak RSS (this process, limited run)", _megabytes(self.peak_rss)),
            (
                "RSS over the delivery",
                f"{_megabytes(run.rss_start)} -> {_megabytes(run.rss_end)} "
                f"({(run.rss_end - run.rss_start) / 2**20:+,.1f} MB; the actor's SQLite "
                f"connection caches up to {CACHE_KIB // 1024} MB of pages)",
            ),
            (
                "outbox rows left / dead letters (sqlite3)",
                f"{self.outbox_left:,} / {self.dead_letters:,}",
            ),
            (
                f"limit: no rate limit, {self.limit.staged:,} records",
                f"{self.limit.first_to_last():,.0f} requests/s first to last arrival, "
                f"{self.limit.per_elapsed():,.0f} / elapsed "
                f"({self.limit.first_to_last() / allowed:,.1f}x R/T); "
                f"{self.limit.requests_made:,} requests, {self.limit.received:,} records, "
                f"{self.limit.arrivals.distinct:,} distinct",
            ),
        ]
        yield ""
        for name, value in rows:
            yield f"{name:<46}{value}"
        yield ""
        yield (
            "First to last arrival and requests / elapsed can flatter a limiter that sends "
            "in bursts: a run spanning k windows may hold R x (k + 1) requests without any "
            f"window holding more than R. Sustained: R over the mean time from an arrival to "
            f"the R-th after it, the rate over whole windows whatever their phase; the "
            f"{TARGET_SHARE:.0%} target is judged on it. The limiter holds a slot from a "
            "call's start until T after its response, so it allows R / (T + latency)."
        )


def queued(path: Path, destination: str) -> int:
    """Outbox rows of `destination`, settled or not yet."""
    db = sqlite3.connect(path)
    try:
        (rows,) = db.execute(
            "SELECT count(*) FROM outbox WHERE destination = ?", (destination,)
        ).fetchone()
    finally:
        db.close()
    return int(rows)


def count_left(path: Path) -> tuple[int, int]:
    """(outbox rows, dead letters), every destination."""
    db = sqlite3.connect(path)
    try:
        outbox, dead = db.execute(
            "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM dead_letters)"
        ).fetchone()
    finally:
        db.close()
    return int(outbox), int(dead)


# ---------------------------------------------------------------------------- main


def main() -> None:
    defaults = {f.name: f.default for f in msgspec.structs.fields(WebhookDestination)}
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rate", type=int, default=50, help="R: requests a window allows")
    parser.add_argument("--per", type=float, default=1.0, help="T: the window, in seconds")
    parser.add_argument("--profiles", type=int, default=100_000, help="the backlog")
    parser.add_argument("--batch-size", type=int, default=WebhookSender.max_batch)
    parser.add_argument(
        "--concurrency", type=int, default=defaults["concurrency"], help="calls in flight"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    limit_records = min(args.profiles, LIMIT_RECORDS)

    with tempfile.TemporaryDirectory(prefix="leadsync-bench-") as directory:
        path = Path(directory) / "leadsync.db"
        measure.migrate(path)
        print(f"staging {args.profiles:,} payloads ...", flush=True)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            staging = pool.submit(stage, path, LIMITED, args.profiles, args.seed).result()
            pool.submit(stage, path, UNLIMITED, limit_records, args.seed + 1).result()
        database_bytes = path.stat().st_size
        receiver = Receiver()
        try:
            limited = destination(
                receiver.url, args.rate, args.per, args.batch_size, args.concurrency
            )
            print(f"delivering at most {args.rate} requests per {args.per:g} s ...", flush=True)
            run = asyncio.run(deliver(path, LIMITED, limited, args.profiles))
            peak_rss = measure.peak_rss()
            run.arrivals = receiver.arrivals()
            print("the limit: the same with no rate limit ...", flush=True)
            free = destination(receiver.url, UNLIMITED_RATE, 1.0, args.batch_size, args.concurrency)
            limit = asyncio.run(deliver(path, UNLIMITED, free, limit_records))
            limit.arrivals = receiver.arrivals()
        finally:
            receiver.close()
        outbox_left, dead_letters = count_left(path)

    report = Report(
        args.profiles,
        args.batch_size,
        args.concurrency,
        staging,
        run,
        limit,
        database_bytes,
        peak_rss,
        outbox_left,
        dead_letters,
    )
    print()
    for line in report.lines():
        print(line)


if __name__ == "__main__":
    main()
