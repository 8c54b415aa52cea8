"""Identity merger throughput, memory and lookup latency.

Writes a synthetic event log (people with several devices, some of whom sign up or
leave an email) straight into a fresh database, then applies it with the same Graph
the identity actor runs, in the same batch size, while the WAL is checkpointed as in
the daemon: by the merger worker's own thread every few seconds, and by the log
writer's timer. Next to it, the limit measured in the same run: reading and
decoding the same log without merging anything. The log is written in a child
process, so the peak RSS reported is the merger's own.

    .venv/bin/python -m bench.identity [--events 1000000] [--people 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from actors.identity import worker
from actors.identity.pipeline import collector_paused
from actors.identity.settings import IdentitySection
from actors.messages import Event
from bench import measure
from daemon.config import StorageSection
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import connect, log_path
from storage.sqlite_graph import read_events

_decode = msgspec.json.Decoder(Event).decode


def person_events(rng: random.Random, person: int) -> list[Event]:
    """One person's trail: anonymous visits on 1-3 devices, perhaps an email, perhaps a login."""
    devices = [f"anon-{person}-{d}" for d in range(rng.choice((1, 1, 2, 2, 3)))]
    user = f"user-{person}" if rng.random() < 0.4 else None
    email = f"person{person}@company{person % 5000}.com" if rng.random() < 0.5 else None
    trail: list[Event] = []
    for n in range(5):
        device = rng.choice(devices)
        kind = "page" if n % 2 == 0 else "track"
        traits = None
        user_id = None
        if n == 2 and email:
            kind, traits = "identify", {"email": email, "title": rng.choice(("CTO", "Engineer"))}
        if n >= 3 and user:
            user_id = user
            if n == 3:
                kind, traits = "identify", {"plan": rng.choice(("trial", "pro"))}
        trail.append(
            Event(
                type=kind,  # type: ignore[arg-type]
                message_id=f"{person}-{n}",
                source="web",
                received_at="2026-06-01T00:00:00.000Z",
                timestamp="",
                user_id=user_id,
                anonymous_id=device,
                event="Viewed" if kind == "track" else None,
                name="Home" if kind == "page" else None,
                traits=traits,
            )
        )
    return trail


def write_log(path: Path, events: int, people: int, seed: int) -> int:
    rng = random.Random(seed)
    trails = [person_events(rng, p) for p in range(people)]
    cursors = [0] * people
    encode = msgspec.json.Encoder().encode
    db = sqlite3.connect(log_path(path))
    db.execute("PRAGMA synchronous = OFF")
    rows: list[tuple[str, str, str, str, bytes]] = []
    written = 0
    start = 1_780_000_000
    while written < events:
        person = rng.randrange(people)
        trail = trails[person]
        event = msgspec.structs.replace(
            trail[cursors[person] % len(trail)],
            message_id=f"{person}-{cursors[person]}",
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start + written)),
        )
        cursors[person] += 1
        rows.append(("web", event.message_id, event.type, event.received_at, encode(event)))
        written += 1
        if len(rows) == 50_000:
            _insert(db, rows)
    _insert(db, rows)
    db.close()
    return written


def _insert(db: sqlite3.Connection, rows: list[tuple[str, str, str, str, bytes]]) -> None:
    db.executemany(
        "INSERT INTO events (source, message_id, type, received_at, body) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    db.commit()
    rows.clear()


def read_limit(path: Path, batch: int) -> float:
    """Reading and decoding the log with nothing applied: the floor under the merger."""
    db = connect(path, 5)
    started = time.perf_counter()
    after = 0
    while events := read_events(db, after, batch):
        for event in events:
            _decode(event.body)
        after = events[-1].seq
    db.close()
    return time.perf_counter() - started


def merge(path: Path, rules: IdentitySection) -> tuple[float, int, list[float]]:
    """Seconds, events applied, and each batch's write phase (what the scorer and the
    destinations wait for)."""
    stop = threading.Event()
    timers = [
        threading.Thread(target=worker.checkpoint_every, args=(SqliteBackend(path), stop)),
        threading.Thread(target=checkpoints, args=(path, stop)),
    ]
    for timer in timers:
        timer.start()
    # A TRUNCATE checkpoint holds the write lock while it copies the WAL, which can
    # take longer than the daemon's busy timeout (the actor then retries the batch).
    merger = worker.Merger.open(SqliteBackend(path, busy_timeout=60), rules)
    writes: list[float] = []
    started = time.perf_counter()
    applied = 0
    try:
        # As the worker runs them, without its pause every RUN_SECONDS to report.
        with collector_paused():
            for result in merger.graph.apply_all(merger.log.batches(0, rules.batch_size), 0):
                writes.append(result.write_seconds)
                applied += result.applied + result.without_identity
        merger.close()
    finally:
        stop.set()
        for timer in timers:
            timer.join()
    return time.perf_counter() - started, applied, writes


def checkpoints(path: Path, stop: threading.Event) -> None:
    """What the daemon's log writer does on its timer (storage.maintain)."""
    db = sqlite3.connect(path, timeout=5)
    while not stop.wait(StorageSection().checkpoint_interval):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    db.close()


async def lookups(path: Path, people: int, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    storage = await SqliteStorage.open(path)
    db = sqlite3.connect(path)
    identifiers = db.execute(
        "SELECT kind, value FROM identities ORDER BY random() LIMIT ?", (count,)
    ).fetchall()
    db.close()
    rng.shuffle(identifiers)
    latencies = []
    for kind, value in identifiers:
        started = time.perf_counter()
        view = await storage.profile(kind, value, 10)
        latencies.append(time.perf_counter() - started)
        assert view is not None
    await storage.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=IdentitySection().batch_size)
    args = parser.parse_args()
    rules = IdentitySection(batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "leadsync.db"
        measure.migrate(path)
        print(f"writing {args.events:,} events for {args.people:,} people ...", flush=True)
        writer = multiprocessing.get_context("fork").Process(
            target=write_log, args=(path, args.events, args.people, args.seed)
        )
        writer.start()
        writer.join()
        limit = read_limit(path, rules.batch_size)
        rss_before = measure.peak_rss()
        seconds, applied, writes = merge(path, rules)
        rss = measure.peak_rss()
        db = sqlite3.connect(path)
        profile_count = db.execute("SELECT count(*) FROM profiles").fetchone()[0]
        identity_count = db.execute("SELECT count(*) FROM identities").fetchone()[0]
        merges = db.execute("SELECT count(*) FROM identity_merges").fetchone()[0]
        db.close()
        latencies = asyncio.run(lookups(path, args.people, args.lookups, args.seed))
        size = path.stat().st_size + log_path(path).stat().st_size

    rate = applied / seconds
    limit_rate = applied / limit
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    rows = [
        ("identity merger", f"{rate:,.0f} events/s ({seconds:.1f}s for {applied:,})"),
        ("limit: read + decode the log", f"{limit_rate:,.0f} events/s"),
        ("ratio to the limit", f"{rate / limit_rate:.2f}"),
        (
            f"write phase per batch of {rules.batch_size:,}",
            f"p50 {statistics.median(writes) * 1000:.0f} / max {max(writes) * 1000:.0f} ms",
        ),
        ("peak RSS", f"{rss / 2**20:.0f} MB (before merging {rss_before / 2**20:.0f} MB)"),
        ("profiles / identifiers / merges", f"{profile_count:,} / {identity_count:,} / {merges:,}"),
        ("database size", f"{size / 2**20:.0f} MB"),
        ("lookup p50 / p99", f"{p50:.2f} / {p99:.2f} ms ({len(latencies):,} lookups)"),
    ]
    print()
    for name, value in rows:
        print(f"{name:<34}{value}")


if __name__ == "__main__":
    main()
