"""The supervision tree: restarts, escalation, start order, and a drain that loses nothing."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio
import msgspec
import pytest

from actors.exit_codes import EXIT_GRACE_EXCEEDED, EXIT_SOFTWARE
from actors.runtime import Actor, Mailbox
from actors.settings import Duration
from daemon.config import RestartPolicy
from daemon.supervisor import ActorSpec, Incarnations, Supervisor

FAST = RestartPolicy(
    max_restarts=3, window=Duration(10), backoff_initial=Duration(0.01), backoff_max=Duration(0.05)
)


class Recorder(Actor):
    """Consumes its mailbox; crashes on the message "boom"."""

    def __init__(self, mailbox: Mailbox[str], seen: list[str], journal: list[str]) -> None:
        super().__init__("recorder")
        self._mailbox = mailbox
        self._seen = seen
        self._journal = journal

    async def run(self, ready: Callable[[], None]) -> None:
        self._journal.append("recorder started")
        ready()
        async for item in self._mailbox.receiver:
            if item == "boom":
                raise RuntimeError("boom")
            await anyio.sleep(0.001)
            self._seen.append(item)
        self._journal.append("recorder drained")


class Listener(Actor):
    """Stands in for a source or the admin server: runs until stop().

    A `gate` holds it in start-up (binding, say) until the test opens it; `entered` is
    set once it is there, so a test acts during a start-up on cue rather than by time.
    """

    def __init__(
        self,
        name: str,
        journal: list[str],
        delay_ready: float = 0.0,
        gate: anyio.Event | None = None,
        entered: anyio.Event | None = None,
    ) -> None:
        super().__init__(name)
        self._journal = journal
        self._delay_ready = delay_ready
        self._gate = gate
        self._entered = entered
        self._stop = anyio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Callable[[], None]) -> None:
        if self._entered is not None:
            self._entered.set()
        if self._gate is not None:
            await self._gate.wait()
        await anyio.sleep(self._delay_ready)
        self._journal.append(f"{self.name} started")
        ready()
        await self._stop.wait()
        self._journal.append(f"{self.name} stopped")


class Tally(msgspec.Struct, frozen=True):
    seen: int = 0


class Counter(Actor):
    """Counts its mailbox's items in the status it shows; crashes on "boom"."""

    def __init__(self, mailbox: Mailbox[str], status: Tally) -> None:
        super().__init__("counter")
        self._mailbox = mailbox
        self._status = status

    def status(self) -> Tally:
        return self._status

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        async for item in self._mailbox.receiver:
            if item == "boom":
                raise RuntimeError("boom")
            self._status = Tally(self._status.seen + 1)


class AlwaysCrashes(Actor):
    def __init__(self, runs: list[int]) -> None:
        super().__init__("crasher")
        self._runs = runs

    async def run(self, ready: Callable[[], None]) -> None:
        self._runs.append(1)
        ready()
        raise ValueError("broken on purpose")


class IgnoresStop(Actor):
    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await anyio.sleep_forever()


async def test_starts_in_order_and_stops_sources_first_then_workers_then_services() -> None:
    journal: list[str] = []
    seen: list[str] = []
    mailbox: Mailbox[str] = Mailbox(100)
    supervisor = Supervisor(FAST, grace=5)
    supervisor.add(ActorSpec("admin", lambda: Listener("admin", journal), role="service"))
    # The worker is slow to become ready; the source must not start before it is.
    supervisor.add(ActorSpec("recorder", lambda: Recorder(mailbox, seen, journal), mailbox=mailbox))
    supervisor.add(ActorSpec("source", lambda: Listener("source", journal, 0.05), role="source"))

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            assert await supervisor.run() == 0

        tg.start_soon(run)
        await supervisor.ready.wait()
        for i in range(50):
            await mailbox.send(f"m{i}")
        supervisor.shutdown()

    assert journal == [
        "admin started",
        "recorder started",
        "source started",
        "source stopped",
        "recorder drained",
        "admin stopped",
    ]
    # Everything queued before the stop was handled: the drain lost nothing.
    assert seen == [f"m{i}" for i in range(50)]
    assert all(s.state == "stopped" for s in supervisor.statuses())


async def test_a_crash_restarts_the_actor_and_its_inbox_keeps_the_rest() -> None:
    journal: list[str] = []
    seen: list[str] = []
    restarts: list[str] = []
    mailbox: Mailbox[str] = Mailbox(100)
    supervisor = Supervisor(FAST, grace=5, on_restart=restarts.append)
    supervisor.add(ActorSpec("recorder", lambda: Recorder(mailbox, seen, journal), mailbox=mailbox))
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await supervisor.ready.wait()
        for item in ["a", "b", "boom", "c", "d"]:
            await mailbox.send(item)
        with anyio.fail_after(5):
            while len(seen) < 4:
                await anyio.sleep(0.01)
        [status] = supervisor.statuses()
        assert status.state == "running"
        assert status.restarts == 1
        assert status.last_error == "RuntimeError: boom"
        supervisor.shutdown()

    # Only the message being handled when it crashed is gone; the new instance
    # read the same inbox.
    assert seen == ["a", "b", "c", "d"]
    assert restarts == ["recorder"]
    assert journal.count("recorder started") == 2


async def test_a_restarted_actor_shows_on_from_the_status_the_crashed_one_ended_with() -> None:
    mailbox: Mailbox[str] = Mailbox(100)
    counter = Incarnations(lambda status: Counter(mailbox, status), Counter.status, Tally())
    supervisor = Supervisor(FAST, grace=5)
    supervisor.add(ActorSpec("counter", counter, mailbox=mailbox))
    assert counter.status() == Tally()  # before any actor is made

    async def until(seen: int) -> None:
        with anyio.fail_after(5):
            while counter.status().seen < seen:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await supervisor.ready.wait()
        for item in ["a", "b"]:
            await mailbox.send(item)
        await until(2)
        before = counter.status()
        for item in ["boom", "c"]:
            await mailbox.send(item)
        await until(3)
        assert supervisor.statuses()[0].restarts == 1
        supervisor.shutdown()
    assert counter.status() == Tally(3)  # counted on by the new actor, not from 0
    assert before == Tally(2)  # a snapshot read earlier stays as it was


async def test_restart_intensity_exceeded_stops_the_daemon_with_a_failure_code() -> None:
    runs: list[int] = []
    journal: list[str] = []
    supervisor = Supervisor(FAST, grace=5)
    supervisor.add(ActorSpec("admin", lambda: Listener("admin", journal), role="service"))
    supervisor.add(ActorSpec("crasher", lambda: AlwaysCrashes(runs)))
    with anyio.fail_after(5):
        code = await supervisor.run()
    assert code == EXIT_SOFTWARE
    # max_restarts=3 means three restarts are tolerated and the fourth crash escalates.
    assert len(runs) == FAST.max_restarts + 1
    states = {s.name: s.state for s in supervisor.statuses()}
    assert states == {"admin": "stopped", "crasher": "failed"}
    assert "admin stopped" in journal


async def test_backoff_grows_between_restarts() -> None:
    policy = RestartPolicy(
        max_restarts=4, window=Duration(10), backoff_initial=Duration(0.05), backoff_max=Duration(1)
    )
    times: list[float] = []

    class Timed(AlwaysCrashes):
        async def run(self, ready: Callable[[], None]) -> None:
            times.append(anyio.current_time())
            await super().run(ready)

    supervisor = Supervisor(policy, grace=5)
    supervisor.add(ActorSpec("crasher", lambda: Timed([])))
    with anyio.fail_after(5):
        await supervisor.run()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05, 0.1, 0.2, 0.4: each wait at least the configured backoff, and growing.
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.4], strict=True):
        assert gap >= expected * 0.9
    assert gaps == sorted(gaps)


async def test_an_actor_that_ignores_stop_is_cancelled_after_the_grace_period() -> None:
    supervisor = Supervisor(FAST, grace=0.2)
    supervisor.add(ActorSpec("stuck", lambda: IgnoresStop("stuck")))
    async with anyio.create_task_group() as tg:
        codes: list[int] = []

        async def run() -> None:
            codes.append(await supervisor.run())

        tg.start_soon(run)
        await supervisor.ready.wait()
        supervisor.shutdown()
    assert codes == [EXIT_GRACE_EXCEEDED]


@pytest.mark.parametrize("role", ["source", "service"])
async def test_a_listener_stopped_during_backoff_is_not_restarted(role: str) -> None:
    runs: list[int] = []
    supervisor = Supervisor(
        RestartPolicy(max_restarts=10, backoff_initial=Duration(30), backoff_max=Duration(30)),
        grace=5,
    )
    supervisor.add(ActorSpec("crasher", lambda: AlwaysCrashes(runs), role=role))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await supervisor.ready.wait()
        with anyio.fail_after(2):
            while supervisor.statuses()[0].state != "backoff":
                await anyio.sleep(0.01)
        with anyio.fail_after(2):  # the 30 s backoff must not delay the stop
            supervisor.shutdown()
            while supervisor.statuses()[0].state != "stopped":
                await anyio.sleep(0.01)
    assert runs == [1]


async def test_a_stop_while_starting_does_not_wait_for_actors_that_never_started() -> None:
    journal: list[str] = []
    starting, gate = anyio.Event(), anyio.Event()
    supervisor = Supervisor(FAST, grace=60)
    supervisor.add(
        ActorSpec("slow", lambda: Listener("slow", journal, gate=gate, entered=starting))
    )
    supervisor.add(ActorSpec("source", lambda: Listener("source", journal), role="source"))

    async def stop_while_slow_starts() -> None:
        await starting.wait()
        supervisor.shutdown()
        gate.set()  # slow gets ready only after the stop was asked for

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_while_slow_starts)
        # Waiting for the source that never started would take the 60 s grace.
        with anyio.fail_after(30):
            assert await supervisor.run() == 0
    assert anyio.current_time() - started < 30
    assert journal == ["slow started", "slow stopped"]


async def test_a_crash_while_draining_is_not_reported_as_a_clean_stop() -> None:
    mailbox = Mailbox[str](10)
    supervisor = Supervisor(FAST, grace=5)
    supervisor.add(ActorSpec("recorder", lambda: Recorder(mailbox, [], []), mailbox=mailbox))
    async with anyio.create_task_group() as tg:

        async def crash_during_drain() -> None:
            await supervisor.ready.wait()
            for item in ("boom", "boom", "boom", "boom", "a"):
                await mailbox.send(item)
            supervisor.shutdown()

        tg.start_soon(crash_during_drain)
        with anyio.fail_after(5):
            code = await supervisor.run()
    assert code == EXIT_SOFTWARE


async def test_an_actor_counts_as_running_only_once_it_says_it_is_ready() -> None:
    """/readyz reads these states: a listener still binding is not ready."""
    supervisor = Supervisor(FAST, grace=5)
    starting, gate = anyio.Event(), anyio.Event()
    supervisor.add(ActorSpec("slow", lambda: Listener("slow", [], gate=gate, entered=starting)))
    seen: list[str] = []

    async def watch() -> None:
        await starting.wait()
        seen.append(supervisor.statuses()[0].state)
        gate.set()
        await supervisor.ready.wait()
        seen.append(supervisor.statuses()[0].state)
        supervisor.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        with anyio.fail_after(5):
            await supervisor.run()
    assert seen == ["starting", "running"]


async def test_actors_added_and_retired_while_running_and_a_retired_one_never_starts() -> None:
    journal: list[str] = []
    supervisor = Supervisor(RestartPolicy(), grace=5)
    supervisor.add(ActorSpec("admin", lambda: Listener("admin", journal), role="service"))
    # Retired before the tree got to start it (a reload during start-up).
    starting, gate = anyio.Event(), anyio.Event()
    slow = ActorSpec("slow", lambda: Listener("slow", journal, gate=gate, entered=starting))
    late = ActorSpec("late", lambda: Listener("late", journal))
    supervisor.add(slow)
    supervisor.add(late)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        with anyio.fail_after(5):
            await starting.wait()
            async with anyio.create_task_group() as retiring:
                # Retiring waits for the tree to pass "late", which is after "slow".
                retiring.start_soon(supervisor.retire, "late")
                await late.stop_requested.wait()
                gate.set()
            await supervisor.ready.wait()
            await supervisor.start(ActorSpec("added", lambda: Listener("added", journal)))
            assert "added started" in journal
            await supervisor.retire("added")
        assert [s.name for s in supervisor.statuses()] == ["admin", "slow"]
        supervisor.shutdown()
    assert "late started" not in journal
    assert journal.index("added stopped") < journal.index("slow stopped")
