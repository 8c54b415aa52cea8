"""What the dedup window costs when full: memory, a group commit's lookups, the merges
at a slice's end, and reading the window back from the log at start.

The window holds what the daemon logs in `window` seconds: at its sustained maximum,
the merger's rate (~22,000 events/s) for the whole window plus one burst that fills
`http.max_backlog` (past it ingestion answers 429). Time is simulated: the structure
(storage/recent_messages.py) is fed group commits as the log writer feeds it.

    .venv/bin/python -m bench.dedup [--rate 22000] [--window 600] [--backlog 1000000]
    (or bench/ingest.py --dedup, after its HTTP runs)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from actors.tracking_api import iso
from bench import measure
from storage.recent_messages import RecentMessages
from storage.sqlite import SqliteStorage
from storage.sqlite_connect import log_path

BURST_RATE = 77_000
"""Events/s the daemon takes in while the backlog fills (its peak on /v1/batch)."""


@dataclass
class Figures:
    held: int
    nbytes: int
    rss_growth: int
    """Peak RSS of this process over what it was before the window was built."""
    fill_seconds: float
    slowest_advance: float
    """The longest a group commit waited for the window (a partition's merge)."""
    lookups: dict[int, tuple[float, float]]
    """Events a group commit -> (p50, p99) seconds to look them all up."""
    readback_events: int
    readback_seconds: float

    def lines(self) -> Iterator[str]:
        yield (
            f"dedup window full: {self.held:,} fingerprints, {self.nbytes / 2**20:.0f} MB held "
            f"({self.nbytes / max(1, self.held):.1f} B each), peak RSS +"
            f"{self.rss_growth / 2**20:.0f} MB; filled in {self.fill_seconds:.1f} s"
        )
        yield f"  slowest group commit wait for a merge: {self.slowest_advance * 1000:.1f} ms"
        for events, (p50, p99) in self.lookups.items():
            yield (
                f"  lookup of a group commit of {events:,} events: p50 {p50 * 1e6:,.0f} us, "
                f"p99 {p99 * 1e6:,.0f} us ({p50 / events * 1e9:,.0f} ns an event)"
            )
        if self.readback_events:
            rate = self.readback_events / self.readback_seconds
            yield (
                f"  start-up read-back: {self.readback_events:,} logged events in "
                f"{self.readback_seconds:.1f} s ({rate:,.0f}/s; a full window of "
                f"{self.held:,} would take ~{self.held / rate:.0f} s)"
            )


def fill(
    rate: int, window: float, backlog: int, commit: int
) -> tuple[RecentMessages, float, float]:
    """Feed `window` plus a slice of simulated time, at `rate` in commits of `commit`
    events, with a burst of `backlog` at BURST_RATE after the first slice."""
    rng = random.Random(1)
    recent = RecentMessages(window)
    now, burst, slowest = 0.0, backlog, 0.0
    started = time.perf_counter()
    while now < window + recent.span:
        busy = burst > 0 and now >= recent.span
        count = commit
        now += count / (BURST_RATE if busy else rate)
        if busy:
            burst -= count
        before = time.perf_counter()
        recent.advance(now)
        slowest = max(slowest, time.perf_counter() - before)
        recent.add([rng.getrandbits(64) - (1 << 63) for _ in range(count)])
    return recent, time.perf_counter() - started, slowest


def lookups(recent: RecentMessages, events: int, rounds: int) -> tuple[float, float]:
    rng = random.Random(2)
    times = []
    for _ in range(rounds):
        wanted = [rng.getrandbits(64) - (1 << 63) for _ in range(events)]
        started = time.perf_counter()
        recent.seen(wanted)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def prefill(path: Path, events: int, body_bytes: int, seconds: float) -> None:
    """Log `events` events into the database at `path` (made if need be), received
    evenly over the last `seconds`, and move the consumers' checkpoints past them: a
    window as full as that, with nothing left for the merger to do."""
    measure.migrate(path)
    body, start, step = b"x" * body_bytes, datetime.now(UTC), timedelta(seconds=seconds)
    rows = (
        (
            "backend",
            f"{i:08x}-{random.getrandbits(64):016x}",
            "track",
            iso(start - step + step * (i / events)),
            body,
        )
        for i in range(events)
    )
    now = iso(start)
    with closing(sqlite3.connect(log_path(path))) as db, db:
        db.executemany(
            "INSERT INTO events (source, message_id, type, received_at, body) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        [(head,)] = db.execute("SELECT max(seq) FROM events").fetchall()
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO checkpoints (consumer, seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            [(consumer, head, now) for consumer in ("identity", "scorer")],
        )


def readback(events: int, body_bytes: int) -> float:
    """Seconds for SqliteStorage.open to read `events` logged events back."""
    with tempfile.TemporaryDirectory(prefix="leadsync-dedup-") as temp:
        path = Path(temp) / "leadsync.db"
        prefill(path, events, body_bytes, 60.0)
        started = time.perf_counter()
        asyncio.run(_open_close(path))
        return time.perf_counter() - started


async def _open_close(path: Path) -> None:
    await (await SqliteStorage.open(path)).close()


def run(args: argparse.Namespace) -> Figures:
    rss_before = measure.status_bytes(os.getpid(), "VmRSS")
    recent, seconds, slowest = fill(args.rate, args.window, args.backlog, args.commit_events)
    figures = Figures(
        held=len(recent),
        nbytes=recent.nbytes,
        rss_growth=measure.status_bytes(os.getpid(), "VmHWM") - rss_before,
        fill_seconds=seconds,
        slowest_advance=slowest,
        lookups={n: lookups(recent, n, 500) for n in (args.commit_events, 5_000)},
        readback_events=args.readback_events,
        readback_seconds=0.0,
    )
    del recent
    if args.readback_events:
        figures.readback_seconds = readback(args.readback_events, args.body_bytes)
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=int, default=22_000, help="sustained events/s")
    parser.add_argument("--window", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="http.max_backlog")
    parser.add_argument("--commit-events", type=int, default=400, help="events a group commit")
    parser.add_argument(
        "--readback-events",
        type=int,
        default=1_000_000,
        help="events logged for the start-up read-back (0: skip it)",
    )
    parser.add_argument("--body-bytes", type=int, default=530, help="bytes of each logged body")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    add_arguments(parser)
    for line in run(parser.parse_args()).lines():
        print(line)


if __name__ == "__main__":
    main()
