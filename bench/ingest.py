"""Ingestion throughput through /v1/batch, next to the two limits that bound it.

A figure alone says little: 30,000 events/s is good or bad depending on what the disk
and the HTTP stack can do at all on the same machine. So the same run measures

- the real daemon (`python -m daemon run`, a subprocess) answering /v1/batch: events
  acknowledged with 200, which the API promises are committed (WAL, synchronous=FULL);
- an aiohttp server that reads the body and answers 200 (the HTTP ceiling: the daemon
  cannot answer faster than aiohttp can, on the same loop and the same payloads);
- stdlib sqlite3 inserting the rows the daemon stored into a fresh database of the
  same schema and PRAGMAs (the storage ceiling: no HTTP, no parsing, no event loop);

and prints the daemon's share of each; with --dedup, also what the dedup window costs
when full (bench/dedup.py: memory, a group commit's lookups, the start-up read-back).
Run from the repository root:

    .venv/bin/python bench/ingest.py [--clients 8] [--seconds 10 | --batches N] [--dedup]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python bench/ingest.py`), Python puts bench/ on the path, not the
# repository root that holds the packages this benchmark drives.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from actors.tracking_api import MAX_REQUEST_BYTES  # noqa: E402
from bench import dedup, measure, sqlite_limit  # noqa: E402
from bench.payloads import Payloads  # noqa: E402
from tests.support.daemon_process import WRITE_KEYS, DaemonProcess, free_port  # noqa: E402

TARGET_EVENTS_PER_SECOND = 30_000
TARGET_RSS_BYTES = 200 * 1024 * 1024


# ---------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    events: int = 0
    """Events in requests answered 200."""
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds per request answered 200."""
    failures: Counter[str] = field(default_factory=Counter)
    server_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    other_cpu_seconds: float = 0.0
    """CPU time of everything else on the machine meanwhile: noise in the figures."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def drive(
    url: str, payloads: Payloads, clients: int, seconds: float, batches: int | None, pid: int
) -> LoadResult:
    """`clients` keep-alive connections, each sending its next batch as soon as it has
    an answer; stops after `seconds`, or after `batches` requests in all when given."""
    result = LoadResult()
    auth = base64.b64encode(f"{WRITE_KEYS['backend']}:".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    deadline = float("inf") if batches is not None else time.perf_counter() + seconds
    sent = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and (batches is None or sent < batches):
            sent += 1
            body = payloads.take()
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError as exc:
                result.failures[type(exc).__name__] += 1
                continue
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
                result.events += payloads.batch_size
            else:
                result.failures[str(status)] += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        server_before, own_before, machine_before = (
            measure.cpu_seconds(pid),
            time.process_time(),
            _machine_busy_seconds(),
        )
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        result.seconds = time.perf_counter() - started
        result.server_cpu_seconds = measure.cpu_seconds(pid) - server_before
        result.client_cpu_seconds = time.process_time() - own_before
        result.other_cpu_seconds = (
            _machine_busy_seconds()
            - machine_before
            - result.server_cpu_seconds
            - result.client_cpu_seconds
        )
    return result


def _machine_busy_seconds() -> float:
    """CPU time spent by every process on the machine (all CPUs, idle and iowait excluded)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- null server


def serve_null(port: int) -> None:
    """The HTTP ceiling: set up as the daemon's listener, with a handler that only
    reads the body. Runs in its own process, as the daemon does."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"success":true}', content_type="application/json")

    async def main() -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES + 1)
        app.router.add_post("/v1/{endpoint}", handler)
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"null server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"null server not listening on {port} after {timeout}s")


# ---------------------------------------------------------------------------- report


@dataclass
class Report:
    clients: int
    batch_size: int
    mean_event_bytes: float
    daemon: LoadResult
    daemon_rows: int
    backlog: int
    """Logged events the slowest consumer (the identity merger) had not applied yet."""
    commits: dict[str, float]
    peak_rss: int
    null: LoadResult | None
    sqlite: dict[str, float]
    stored_row_bytes: float

    @property
    def durable(self) -> bool:
        return self.daemon_rows == self.daemon.events

    def lines(self) -> Iterator[str]:
        yield (
            f"leadsync ingest: /v1/batch, {self.clients} clients, {self.batch_size} events a "
            f"batch, ~{self.mean_event_bytes:.0f} B an event; {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        )
        yield ""
        yield (
            f"{'':40}{'events/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'server':>8}{'client':>8}"
            f"{'other':>7}{'daemon/limit':>14}"
        )
        daemon_rate = self.daemon.events_per_second
        runs = [("daemon /v1/batch (200 = committed)", self.daemon)]
        if self.null is not None:
            runs.append(("limit: aiohttp handler doing nothing", self.null))
        for label, run in runs:
            ratio = "" if run is self.daemon else f"{daemon_rate / run.events_per_second:.2f}"
            yield (
                f"{label:40}{run.events_per_second:>9,.0f}{run.percentile(0.5) * 1000:>8.1f}"
                f"{run.percentile(0.99) * 1000:>8.1f}{_share(run.server_cpu_seconds, run):>8}"
                f"{_share(run.client_cpu_seconds, run):>8}{_share(run.other_cpu_seconds, run):>7}"
                f"{ratio:>14}"
            )
        for label, rate in self.sqlite.items():
            yield f"{'limit: sqlite3 alone, ' + label:40}{rate:>9,.0f}{daemon_rate / rate:>53.2f}"
        yield ""
        yield (
            "server, client, other: CPU of the server process, of this client, and of "
            "everything else on the machine (noise; should be ~0%), 100% = one core"
        )
        if self.sqlite:
            yield (
                f"sqlite3 alone: the rows the daemon stored (~{self.stored_row_bytes:.0f} B "
                "bodies) inserted again into a fresh file, same schema, PRAGMAs and INSERT, "
                "executemany of 100 rows, no HTTP, no parsing, no event loop; 100 rows a commit "
                "= an fsync per request (no group commit); "
                f"{self.clients * self.batch_size} rows = the largest group {self.clients} "
                "clients can form; one transaction = no fsync to speak of"
            )
        yield ""
        yield (
            f"daemon: {self.daemon.events:,} events acknowledged, {self.daemon_rows:,} rows in "
            f"the events table ({'durable' if self.durable else 'MISMATCH'}); non-200 answers: "
            f"{dict(self.daemon.failures) or 'none'}; peak RSS {self.peak_rss / 2**20:.0f} MB"
        )
        groups = self.commits[measure.COMMITS]
        if groups:
            busy = self.commits[measure.COMMIT_SECONDS]
            events = self.commits[measure.COMMIT_EVENTS]
            yield (
                f"daemon group commits: {groups:,.0f}, {events / groups:.0f} events and "
                f"{busy / groups * 1000:.1f} ms each on average; the log writer was committing "
                f"{busy / self.daemon.seconds:.0%} of the time"
            )
        yield (
            f"consumers: {self.backlog:,} of the events logged not yet applied (backlog) when "
            "the load stopped"
        )
        if self.null is not None and self.null.failures:
            yield f"null handler non-200 answers: {dict(self.null.failures)}"
        speed = "met" if daemon_rate >= TARGET_EVENTS_PER_SECOND else "NOT met"
        memory = "met" if self.peak_rss < TARGET_RSS_BYTES else "NOT met"
        yield (
            f"target >= {TARGET_EVENTS_PER_SECOND:,} events/s: {speed}; "
            f"target RSS < {TARGET_RSS_BYTES // 2**20} MB: {memory}"
        )


def _share(cpu_seconds: float, run: LoadResult) -> str:
    return f"{cpu_seconds / run.seconds:.0%}" if run.seconds else "-"


# ---------------------------------------------------------------------------- main


def measure_null(args: argparse.Namespace, payloads: Payloads) -> LoadResult:
    port = free_port()
    null = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--null-server-port", str(port)]
    )
    try:
        _wait_listening(port, null)
        print(f"aiohttp null handler: {args.clients} clients ...", flush=True)
        url = f"http://127.0.0.1:{port}/v1/batch"
        return asyncio.run(drive(url, payloads, args.clients, args.seconds, args.batches, null.pid))
    finally:
        null.terminate()
        null.wait(10)


@dataclass
class Burst:
    """One daemon's closed-loop run (`measure_burst`)."""

    result: LoadResult
    rows: int
    """Rows in the event log once the load stopped (less any logged before)."""
    backlog: int
    commits: dict[str, float]
    peak_rss: int
    database: Path
    """The daemon's database, left for the sqlite3 limit to read its rows."""


def measure_burst(
    directory: Path,
    payloads: Payloads,
    clients: int,
    seconds: float,
    batches: int | None = None,
    daemon_config: str = "",
    prefill: int = 0,
    before_start: Callable[[DaemonProcess], None] | None = None,
) -> Burst:
    """The real daemon in `directory`/daemon, `clients` closed-loop clients for
    `seconds` (or `batches` requests); `before_start` prepares its files (a prefill of
    `prefill` events)."""
    (directory / "daemon").mkdir()
    daemon = DaemonProcess(directory / "daemon", daemon_config)
    if before_start is not None:
        before_start(daemon)
    try:
        started = time.perf_counter()
        daemon.start(wait=False)
        daemon.wait_ready(timeout=600)
        print(f"daemon ready in {time.perf_counter() - started:.1f} s", flush=True)
        assert daemon.process is not None
        pid = daemon.process.pid
        print(f"daemon: {clients} clients ...", flush=True)
        url = f"{daemon.url}/v1/batch"
        result = asyncio.run(drive(url, payloads, clients, seconds, batches, pid))
        # Read while the daemon still runs: every 200 must already be committed.
        rows = daemon.query("SELECT count(*) FROM events")[0][0] - prefill
        backlog = int(daemon.admin("/status")[1]["backlog_events"])
        commits = measure.commit_figures(daemon.admin("/metrics")[1])
        peak_rss = measure.status_bytes(pid, "VmHWM")
        code = daemon.terminate()
        if code != 0:
            raise RuntimeError(f"daemon exited with {code}:\n{daemon.log()}")
    finally:
        daemon.stop_quietly()
    return Burst(result, rows, backlog, commits, peak_rss, daemon.database)


def run(args: argparse.Namespace) -> Report:
    payloads = Payloads(args.batch_size)
    null = None if args.daemon_only else measure_null(args, payloads)

    def prefill(daemon: DaemonProcess) -> None:
        if args.prefill:
            print(f"logging {args.prefill:,} events before the daemon starts ...", flush=True)
            dedup.prefill(daemon.database, args.prefill, args.body_bytes, args.window)

    with tempfile.TemporaryDirectory(prefix="leadsync-bench-") as temp:
        directory = Path(temp)
        burst = measure_burst(
            directory,
            payloads,
            args.clients,
            args.seconds,
            args.batches,
            args.daemon_config.replace("\\n", "\n"),
            args.prefill,
            prefill,
        )
        sample = (
            [] if args.daemon_only else sqlite_limit.stored_rows(burst.database, args.sqlite_rows)
        )
        if sample:
            print("sqlite3 alone ...", flush=True)
        sqlite_rates = sqlite_limit.limits(directory, sample, args.clients * args.batch_size)
    return Report(
        clients=args.clients,
        batch_size=args.batch_size,
        mean_event_bytes=payloads.mean_event_bytes,
        daemon=burst.result,
        daemon_rows=burst.rows,
        backlog=burst.backlog,
        commits=burst.commits,
        peak_rss=burst.peak_rss,
        null=null,
        sqlite=sqlite_rates,
        stored_row_bytes=sum(len(row[4]) for row in sample) / len(sample) if sample else 0.0,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each HTTP run (default 10)"
    )
    parser.add_argument(
        "--batches", type=int, help="send this many batches per HTTP run instead of timing it"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="events a batch")
    parser.add_argument(
        "--sqlite-rows",
        type=int,
        default=200_000,
        help="how many of the stored rows the sqlite3 limit inserts again (default 200,000)",
    )
    parser.add_argument(
        "--daemon-only",
        action="store_true",
        help="skip both limits (quicker, for comparing changes to the daemon)",
    )
    parser.add_argument(
        "--daemon-config",
        default="",
        metavar="TOML",
        help='extra daemon.toml tables, e.g. "[identity]\\nbatch_size = 500"',
    )
    parser.add_argument(
        "--dedup", action="store_true", help="then the dedup window's cost when full"
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="events logged before the daemon starts, over the last --window seconds: "
        "a full dedup window",
    )
    dedup.add_arguments(parser)
    parser.add_argument("--null-server-port", type=int, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.null_server_port is not None:
        serve_null(args.null_server_port)
        return 0
    report = run(args)
    print()
    for line in report.lines():
        print(line)
    if args.dedup:
        print("dedup window ...", flush=True)
        for line in dedup.run(args).lines():
            print(line)
    return 0 if report.durable else 1


if __name__ == "__main__":
    sys.exit(main())
