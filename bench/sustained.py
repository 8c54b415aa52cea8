"""Sustained throughput: the whole pipeline under a steady open-loop load, not a burst
at the door.

The real daemon (`python -m daemon run`, a subprocess on free ports) with the example
scoring model, a realtime webhook destination (to an aiohttp sink in a process of its
own) and a batch file destination, starting on a copy of a data dir that already
knows the returning people (bench/steady/warm.py), is sent a fixed rate of events for
a set time: /v1/batch bodies of a busy site's identify, track and page calls over a
population of people and a stream of first-time visitors (bench/steady/traffic.py),
offered open loop by a generator in a process of its own (bench/steady/load.py).
Every second the bench samples the daemon from outside (bench/steady/observe.py),
and reports:

- events acknowledged a second, requests answered 429 and other errors, latency;
- each consumer's lag over time: the merger and the scorer's fold (events behind the
  log's head, and seconds of events at the offered rate), the rescoring to-do list,
  the realtime destination's lag and each destination's queued rows;
- RSS of the daemon and of the merger's worker process;
- the generator's own CPU, and whether it kept its schedule;

as a table of 10-second windows, a summary, and a PNG chart (`--chart`).

`--find` searches for the sustainable rate: the highest offered rate at which, for the
whole run, no request is refused and every lag stays under 5 seconds of events
(bench/steady/run.py says how each lag is judged). Steps of `--step-seconds` go up or
down by `--step` from the first `--rate`, then halve the gap down to `--resolution`;
a step ends as soon as it fails; the rate found is then confirmed for `--seconds`.
Beside it, measured in the same run: the burst figure (bench/ingest.py's daemon run:
closed loop, 8 clients, 10 s) and the raw-sqlite3 insert limit on the rows that run
stored. Run from the repository root:

    .venv/bin/python bench/sustained.py [--rate 30000 ...] [--seconds 600] [--chart PATH]
    .venv/bin/python bench/sustained.py --find [--rate 30000] [--step-seconds 60]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python bench/sustained.py`), Python puts bench/ on the path, not the
# repository root that holds the packages this benchmark drives.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench import ingest, sqlite_limit  # noqa: E402
from bench.payloads import Payloads  # noqa: E402
from bench.realtime import Receiver  # noqa: E402
from bench.steady import chart, report  # noqa: E402
from bench.steady import warm as warm_up  # noqa: E402
from bench.steady.run import RunResult, Settings, run_once  # noqa: E402

BURST_CLIENTS = 8
BURST_SECONDS = 10.0
"""bench/ingest.py's defaults: the burst figure is that bench's."""


@dataclass
class Limits:
    burst: ingest.Burst
    sqlite: dict[str, float]


@dataclass
class Search:
    steps: list[RunResult] = field(default_factory=list)
    found: float = 0.0
    confirmation: RunResult | None = None


def chart_path(requested: str | None, rate: float, several: bool) -> Path:
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="leadsync-sustained-")) / f"sustained-{rate:.0f}.png"
    path = Path(requested)
    return path.with_name(f"{path.stem}-{rate:.0f}{path.suffix}") if several else path


def show(result: RunResult, path: Path | None) -> None:
    print()
    for line in report.summary(result):
        print(line)
    for line in report.table(result):
        print(line)
    if path is not None:
        print(f"  chart: {chart.draw(result, path)}")
    print(flush=True)


def find(args: argparse.Namespace, settings: Settings, sink: str, warm: Path | None) -> Search:
    """Up or down by --step from the first --rate, then bisection to --resolution."""
    search = Search()

    def holds(rate: float) -> bool:
        print(f"step {len(search.steps) + 1}: {rate:,.0f} events/s ...", flush=True)
        result = run_once(settings, rate, args.step_seconds, sink, True, warm)
        search.steps.append(result)
        print(f"  {report.acknowledged_rate(result):,.0f} acknowledged/s; {result.verdict()}")
        return result.sustained

    rate = args.rate[0]
    good, bad = 0.0, float("inf")
    if holds(rate):
        good = rate
        while good + args.step <= args.max_rate:
            if not holds(good + args.step):
                bad = good + args.step
                break
            good += args.step
    else:
        bad = rate
        while bad - args.step > 0:
            if holds(bad - args.step):
                good = bad - args.step
                break
            bad -= args.step
    while bad != float("inf") and good and bad - good > args.resolution:
        middle = round((good + bad) / 2 / 100) * 100
        if holds(middle):
            good = middle
        else:
            bad = middle
    search.found = good
    if good and args.confirm:
        print(f"confirming {good:,.0f} events/s for {args.seconds:.0f} s ...", flush=True)
        search.confirmation = run_once(settings, good, args.seconds, sink, True, warm)
    return search


def measure_limits(args: argparse.Namespace) -> Limits:
    print(f"burst: bench/ingest.py's daemon run, {BURST_CLIENTS} clients ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="leadsync-bench-") as temp:
        directory = Path(temp)
        burst = ingest.measure_burst(
            directory, Payloads(args.batch_size), BURST_CLIENTS, BURST_SECONDS
        )
        print("sqlite3 alone ...", flush=True)
        rows = sqlite_limit.stored_rows(burst.database, args.sqlite_rows)
        rates = sqlite_limit.limits(directory, rows, BURST_CLIENTS * args.batch_size)
    return Limits(burst, rates)


def closing_lines(search: Search | None, limits: Limits | None) -> Iterator[str]:
    if search is not None:
        steps = ", ".join(f"{s.rate:,.0f} {'yes' if s.sustained else 'no'}" for s in search.steps)
        yield f"search steps (sustained?): {steps}"
        confirmation = search.confirmation
        if confirmation is None:
            how = "not confirmed (--no-confirm)"
        elif confirmation.sustained:
            how = f"confirmed for {confirmation.seconds:.0f} s"
        else:
            how = f"NOT confirmed for {confirmation.seconds:.0f} s: {confirmation.verdict()}"
        step = search.steps[0].seconds if search.steps else 0
        yield (
            f"sustainable rate: {search.found:,.0f} events/s (held for {step:.0f} s steps; {how})"
        )
    if limits is not None:
        burst = limits.burst.result
        yield (
            f"burst: {burst.events_per_second:,.0f} events/s acknowledged (bench/ingest.py: "
            f"{BURST_CLIENTS} closed-loop clients, {BURST_SECONDS:.0f} s, p99 "
            f"{burst.percentile(0.99) * 1000:.0f} ms; non-200: {dict(burst.failures) or 'none'})"
        )
        for label, rate in limits.sqlite.items():
            yield f"limit: sqlite3 alone, {label}: {rate:,.0f} events/s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[30_000.0],
        help="events/s offered; several: one run each (with --find: where the search starts)",
    )
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="length of a run (default 600)"
    )
    parser.add_argument("--chart", help="PNG path (default: in a new temporary directory)")
    parser.add_argument("--find", action="store_true", help="search for the sustainable rate")
    parser.add_argument("--step", type=float, default=5_000.0, help="--find: first steps")
    parser.add_argument(
        "--step-seconds", type=float, default=60.0, help="--find: length of a step (default 60)"
    )
    parser.add_argument(
        "--resolution", type=float, default=1_000.0, help="--find: stop when the gap is this"
    )
    parser.add_argument("--max-rate", type=float, default=150_000.0, help="--find: at most")
    parser.add_argument(
        "--no-confirm",
        dest="confirm",
        action="store_false",
        help="--find: no full-length run at the rate found",
    )
    parser.add_argument(
        "--no-limits", action="store_true", help="skip the burst and raw-sqlite3 figures"
    )
    parser.add_argument("--sqlite-rows", type=int, default=200_000)
    defaults = Settings()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--connections", type=int, default=defaults.connections, help="keep-alive connections"
    )
    parser.add_argument(
        "--people", type=int, default=defaults.people, help="returning people (default 100,000)"
    )
    parser.add_argument(
        "--new-share",
        type=float,
        default=defaults.new_share,
        help="share of events from first-time visitors (default 0.1)",
    )
    parser.add_argument(
        "--batch-interval",
        default=defaults.batch_interval,
        help='[scoring] batch_interval (default "4h", the daemon\'s: no batch run in a run)',
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="start each run on an empty data dir, not one that knows the returning people",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def main() -> int:
    args = _parser().parse_args()
    settings = Settings(
        batch_size=args.batch_size,
        connections=args.connections,
        people=args.people,
        new_share=args.new_share,
        batch_interval=args.batch_interval,
        seed=args.seed,
    )
    print(
        f"leadsync sustained: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; /v1/batch of {settings.batch_size} events, "
        f"{settings.people:,} returning people, {settings.new_share:.0%} of events from "
        f"first-time visitors; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    sink = Receiver()
    search = None
    kept = tempfile.TemporaryDirectory(prefix="leadsync-sustained-warm-")
    try:
        warm = (
            None
            if args.no_warmup
            else warm_up.prepare(settings, sink.url + "/nothing", Path(kept.name))
        )
        if args.find:
            search = find(args, settings, sink.url + "/nothing", warm)
            final = search.confirmation or (search.steps[-1] if search.steps else None)
            if final is not None:
                show(final, chart_path(args.chart, final.rate, False))
        else:
            for rate in args.rate:
                print(f"{rate:,.0f} events/s for {args.seconds:.0f} s ...", flush=True)
                result = run_once(settings, rate, args.seconds, sink.url + "/nothing", warm=warm)
                show(result, chart_path(args.chart, rate, len(args.rate) > 1))
    finally:
        sink.close()
        kept.cleanup()
    limits = None if args.no_limits else measure_limits(args)
    for line in closing_lines(search, limits):
        print(line)
    print(f"load average now: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
