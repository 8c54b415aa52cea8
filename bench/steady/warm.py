"""A daemon's data dir that already knows the returning people, made once for a whole
invocation: each run starts on a copy of it.

A fresh daemon would meet the population during the run itself, creating a profile,
scoring it and staging it for both destinations the first time each person shows up:
a transient of some 100,000 rows in the first minutes that a site running all day does
not have. So a daemon with the run's own configuration takes one event for each
device of each person (bench/steady/traffic.py `Traffic.warmup`), closed loop as fast
as it answers, until every consumer and the realtime destination have caught up;
then it stops cleanly and its data dir is kept.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench import ingest
from bench.payloads import Payloads
from bench.steady.observe import FOLD, MERGER
from bench.steady.run import REALTIME, Settings, daemon_config
from bench.steady.traffic import Traffic
from tests.support.daemon_process import DaemonProcess

CLIENTS = 8
CAUGHT_UP_WITHIN = 900.0
"""Seconds the warm-up daemon gets to apply what it took."""


def prepare(settings: Settings, sink_url: str, directory: Path) -> Path:
    """The warmed daemon's directory, under `directory` (the caller's, kept while the
    runs copy it: `run_once(..., warm=)`). Its file destination writes to `scores`
    beside its data dir, where every run's will too: a destination writing to another
    directory is a new destination to the daemon, queued every scored profile again."""
    home = directory / "warm"
    home.mkdir()
    daemon = DaemonProcess(home, daemon_config(settings, sink_url, home / "scores"))
    traffic = Traffic(
        settings.batch_size, 0, settings.people, settings.new_share, seed=settings.seed
    )
    bodies = traffic.warmup(settings.batch_size)
    events = sum(body.count(b'"messageId"') for body in bodies)
    print(f"warm-up: {settings.people:,} people, {events:,} events ...", flush=True)
    try:
        daemon.start()
        assert daemon.process is not None
        started = time.perf_counter()
        payloads = Payloads(settings.batch_size, settings.seed, bodies)
        sent = asyncio.run(
            ingest.drive(
                f"{daemon.url}/v1/batch",
                payloads,
                CLIENTS,
                float("inf"),
                len(bodies),
                daemon.process.pid,
            )
        )
        if sent.failures:
            raise RuntimeError(f"the warm-up was refused: {dict(sent.failures)}")
        _caught_up(daemon)
        print(f"warm-up: done in {time.perf_counter() - started:.0f} s", flush=True)
        code = daemon.terminate(timeout=120)
        if code != 0:
            raise RuntimeError(f"the warm-up daemon exited with {code}:\n{daemon.log()}")
    finally:
        daemon.stop_quietly()
    return home


def _caught_up(daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + CAUGHT_UP_WITHIN
    while time.monotonic() < deadline:
        status = daemon.admin("/status")[1]
        head = int(status["events_stored"])
        behind = [
            name
            for name in (MERGER, FOLD)
            if int(status["consumers"].get(name, {}).get("applied", 0)) < head
        ]
        if not behind and not status["destinations"][REALTIME]["queued"]:
            todo = daemon.query("SELECT count(*) FROM profile_changes")[0][0]
            if not todo:
                return
        time.sleep(1)
    raise TimeoutError(f"the warm-up daemon did not catch up in {CAUGHT_UP_WITHIN:.0f} s")
