"""The open-loop load generator, in a process of its own.

Open loop, as a site's many independent clients behave: batch n is due at start +
n * batch_size / rate, whatever became of the batches before, and goes out on one of
a pool of keep-alive connections (it waits for a free one when all are busy, and
that wait counts in its latency). A closed loop of a few clients would slow down
with the daemon and measure its own round trip instead of the daemon at the rate.

In its own process so that its CPU is not the sampler's and shows on its own in
/proc; its bodies are made (bench/steady/traffic.py) before the clock starts, and a
send only stamps a number into a template. It notes, per second of the schedule,
the events acknowledged, the answers that were not 200, and each request's latency
from the moment it was due; and how late the schedule itself ran, so that a
generator that cannot keep up says so instead of offering less than asked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import aiohttp

from bench.payloads import Payloads
from bench.steady.traffic import Mix, Traffic

STOP = "stop"
LATE_SECONDS = 0.1
"""A send launched this long after it was due is late."""
LATE_SHARE = 0.01
"""More than this share of sends late: the generator fell behind its schedule."""
NICE = -5
"""The generator's scheduling priority (when allowed): on a machine shared with other
work its clock must hold. It takes the same CPU whatever its priority; only its
wake-ups come sooner."""
IN_FLIGHT_SECONDS = 5.0
"""Sends in flight are bounded by this many seconds of the schedule; past it a due
send is not made and counted as `unsent` (a client's queue overflowing)."""


@dataclass(frozen=True)
class Plan:
    url: str
    write_key: str
    rate: float
    """Events a second offered."""
    seconds: float
    batch_size: int = 100
    connections: int = 64
    people: int = 100_000
    new_share: float = 0.1
    templates: int = 1024
    seed: int = 7


@dataclass
class Record:
    """What the generator saw, per second of the schedule (index = second)."""

    acked: list[int] = field(default_factory=list)
    """Events in requests answered 200."""
    refused: list[int] = field(default_factory=list)
    """Requests answered 429."""
    errors: list[int] = field(default_factory=list)
    """Requests answered anything else, failed to connect, or not sent (`unsent`)."""
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies: list[list[float]] = field(default_factory=list)
    """Seconds from due to answered, of each request answered 200."""
    sent: int = 0
    unsent: int = 0
    """Sends not made: IN_FLIGHT_SECONDS of the schedule were waiting for answers (the
    daemon answered slower than the rate)."""
    max_late: float = 0.0
    """The latest a send was launched after it was due, in seconds."""
    late_sends: int = 0
    """Sends launched more than LATE_SECONDS after due."""
    seconds: float = 0.0
    """From the first due time to the last answer."""
    offered_seconds: float = 0.0
    """Of the schedule that was run (less than planned when stopped early)."""
    cpu_seconds: float = 0.0
    stopped_early: bool = False
    mean_event_bytes: float = 0.0
    mix: Mix | None = None

    @property
    def behind(self) -> bool:
        """The schedule itself ran late: the generator, not the daemon, set the pace."""
        return self.late_sends > LATE_SHARE * max(self.sent + self.unsent, 1)

    def _grow(self, second: int) -> None:
        while len(self.acked) <= second:
            self.acked.append(0)
            self.refused.append(0)
            self.errors.append(0)
            self.latencies.append([])


async def offer(plan: Plan, payloads: Payloads, record: Record, stop: Connection) -> None:
    auth = base64.b64encode(f"{plan.write_key}:".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    interval = plan.batch_size / plan.rate
    total = int(plan.seconds / interval)
    bound = max(plan.connections * 2, int(IN_FLIGHT_SECONDS / interval))
    in_flight: set[asyncio.Task[None]] = set()
    record._grow(max(math.ceil(plan.seconds) - 1, 0))

    async def send(session: aiohttp.ClientSession, body: bytes, due: float, second: int) -> None:
        try:
            async with session.post(plan.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = type(exc).__name__
        else:
            if status == 200:
                record.acked[second] += plan.batch_size
                record.latencies[second].append(time.perf_counter() - due)
                return
            if status == 429:
                record.refused[second] += 1
                return
            kind = str(status)
        record.errors[second] += 1
        record.error_kinds[kind] = record.error_kinds.get(kind, 0) + 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=plan.connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.05
        next_look = start
        n = 0
        while n < total:
            now = time.perf_counter()
            if now >= next_look:
                next_look = now + 0.25
                if stop.poll():
                    record.stopped_early = True
                    break
            while n < total and start + n * interval <= now:
                due = start + n * interval
                late = now - due
                record.max_late = max(record.max_late, late)
                record.late_sends += late > LATE_SECONDS
                second = int(n * interval)
                n += 1
                if len(in_flight) >= bound:
                    record.unsent += 1
                    record.errors[second] += 1
                    record.error_kinds["unsent"] = record.unsent
                    continue
                task = asyncio.create_task(send(session, payloads.take(), due, second))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                record.sent += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))
        record.offered_seconds = n * interval
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)
        record.seconds = time.perf_counter() - start


def generate(plan: Plan, pipe: Connection) -> None:
    """The child's body: make the bodies, say "ready", wait for "go", offer the load,
    send the Record back. A STOP on the pipe ends the load early."""
    traffic = Traffic(plan.batch_size, plan.templates, plan.people, plan.new_share, seed=plan.seed)
    payloads = Payloads(plan.batch_size, plan.seed, traffic.templates)
    record = Record(mean_event_bytes=payloads.mean_event_bytes, mix=traffic.mix)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    pipe.send("ready")
    if pipe.recv() != "go":
        return
    cpu = time.process_time()
    asyncio.run(offer(plan, payloads, record, pipe))
    record.cpu_seconds = time.process_time() - cpu
    pipe.send(record)


class Generator:
    """This process's end of `generate`."""

    def __init__(self, plan: Plan) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=generate, args=(plan, child), daemon=True)
        self.process.start()
        child.close()
        if self._pipe.recv() != "ready":
            raise RuntimeError("the load generator did not start")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def go(self) -> None:
        self._pipe.send("go")

    def stop(self) -> None:
        """End the load early (the run is decided)."""
        self._pipe.send(STOP)

    def record(self) -> Record:
        """Waits for the load to end."""
        record = self._pipe.recv()
        assert isinstance(record, Record)
        self.process.join(30)
        return record

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
