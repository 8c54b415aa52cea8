"""The supervisor: starts actors in dependency order, restarts them, stops them in order.

Restart policy is OTP's: a crashed actor restarts after an exponential backoff; more
than `max_restarts` crashes within `window` seconds means restarting is not helping,
so the supervisor escalates: it stops everything and the daemon exits non-zero, and
systemd restarts the whole process. An actor that raises `Fatal` (a listener whose
port is taken) is not restarted at all: the daemon stops with that failure's code.

Shutdown order matters for durability. Sources stop first (no new input is accepted),
then every other actor in start order has its inbox closed and drains it, so what was
accepted reaches the log and every checkpoint is written; service actors (admin) stop
last, so health stays observable until the end.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.abc
import msgspec
import structlog

from actors.exit_codes import EXIT_GRACE_EXCEEDED, EXIT_SOFTWARE
from actors.runtime import Actor, Fatal, Mailbox
from daemon.config import RestartPolicy

log = structlog.get_logger(__name__)

Role = Literal["source", "worker", "service"]
State = Literal["starting", "running", "backoff", "stopping", "stopped", "failed"]
A = TypeVar("A", bound=Actor)
S = TypeVar("S")


@dataclass
class ActorSpec:
    """How to make an actor, and what the supervisor knows about it between restarts."""

    name: str
    factory: Callable[[], Actor]
    role: Role = "worker"
    mailbox: Mailbox[Any] | None = None
    state: State = "starting"
    restarts: int = 0
    last_error: str | None = None
    current: Actor | None = None
    crash_times: deque[float] = field(default_factory=deque)
    started: anyio.Event = field(default_factory=anyio.Event)
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)

    def request_stop(self) -> None:
        self.stop_requested.set()
        if self.mailbox is not None:
            self.mailbox.close()
        elif self.current is not None:
            self.current.stop()


class ActorStatus(msgspec.Struct, frozen=True):
    """One actor as the supervisor saw it when `statuses()` was called."""

    name: str
    role: Role
    state: State
    restarts: int
    queue_depth: int | None
    queue_capacity: int | None
    last_error: str | None


class Incarnations(Generic[A, S]):
    """One supervised actor across its restarts, for those who read its status.

    Called, it is the ActorSpec's factory: each new actor starts from the status the
    one before it ended with, so counts and the last error live on through a crash.
    `status()` is the latest actor's snapshot, `first` until there is one; during a
    backoff, the one that crashed.
    """

    def __init__(self, make: Callable[[S], A], status: Callable[[A], S], first: S) -> None:
        self._make = make
        self._status = status
        self._first = first
        self._latest: A | None = None

    def __call__(self) -> A:
        self._latest = self._make(self.status())
        return self._latest

    def status(self) -> S:
        return self._first if self._latest is None else self._status(self._latest)


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy,
        grace: float,
        on_restart: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._policy = policy
        self._grace = grace
        self._on_restart = on_restart
        self._specs: list[ActorSpec] = []
        self._running: anyio.abc.TaskGroup | None = None
        self._shutdown = anyio.Event()
        self._exit_code = 0
        self.ready = anyio.Event()

    def add(self, spec: ActorSpec) -> None:
        """Register in start order: an actor starts once those before it are ready."""
        self._specs.append(spec)

    async def start(self, spec: ActorSpec) -> None:
        """Add an actor to a running tree (a destination added by a reload); returns
        once it is ready, or has stopped trying."""
        if self._running is None or self.stopping:
            log.warning("not started: the daemon is stopping", actor=spec.name)
            return
        self._specs.append(spec)
        self._running.start_soon(self._supervise, spec)
        await _first_of(spec.started, spec.finished)

    async def retire(self, name: str) -> None:
        """Stop one actor for good (draining its inbox) and forget it."""
        for spec in self._specs:
            if spec.name == name:
                if spec.current is not None or not spec.finished.is_set():
                    spec.request_stop()
                    await spec.finished.wait()
                self._specs.remove(spec)
                return

    def shutdown(self, exit_code: int = 0) -> None:
        # Also while already stopping: a crash during the drain must not exit 0.
        self._exit_code = self._exit_code or exit_code
        self._shutdown.set()

    @property
    def stopping(self) -> bool:
        return self._shutdown.is_set()

    def statuses(self) -> list[ActorStatus]:
        """A snapshot of every actor, for /status, /readyz and /metrics."""
        return [
            ActorStatus(
                s.name,
                s.role,
                s.state,
                s.restarts,
                s.mailbox.depth() if s.mailbox else None,
                s.mailbox.capacity if s.mailbox else None,
                s.last_error,
            )
            for s in self._specs
        ]

    async def run(self) -> int:
        """Run every actor until shutdown; return the process exit code."""
        async with anyio.create_task_group() as tg:
            self._running = tg
            for spec in list(self._specs):
                tg.start_soon(self._supervise, spec)
                await _first_of(spec.started, spec.finished, self._shutdown)
                if self._shutdown.is_set():
                    break
            else:
                self.ready.set()
                log.info("all actors ready", actors=[s.name for s in self._specs])
            await self._shutdown.wait()
            with anyio.move_on_after(self._grace) as deadline:
                await self._stop_all()
            if deadline.cancelled_caught:
                log.error(
                    "shutdown grace exceeded; cancelling what is left",
                    grace=self._grace,
                    unfinished=[s.name for s in self._specs if not s.finished.is_set()],
                )
                self._exit_code = self._exit_code or EXIT_GRACE_EXCEEDED
            tg.cancel_scope.cancel()
        return self._exit_code

    async def _stop_all(self) -> None:
        order = (
            [s for s in self._specs if s.role == "source"]
            + [s for s in self._specs if s.role == "worker"]
            + [s for s in self._specs if s.role == "service"]
        )
        for spec in order:
            if spec.current is None and not spec.finished.is_set():
                continue  # a stop came while starting: this one never started
            log.info("stopping actor", actor=spec.name)
            spec.request_stop()
            await spec.finished.wait()

    async def _supervise(self, spec: ActorSpec) -> None:
        try:
            while True:
                if spec.stop_requested.is_set() and spec.mailbox is None:
                    return  # retired before it ever ran (a reload during start-up)
                spec.current = spec.factory()
                spec.state = "stopping" if spec.stop_requested.is_set() else "starting"

                def ready(spec: ActorSpec = spec) -> None:
                    # "running" once it serves, so /readyz is not ready while a
                    # restarted listener is still binding its port.
                    if spec.state == "starting":
                        spec.state = "running"
                    spec.started.set()

                try:
                    await spec.current.run(ready)
                    if spec.stop_requested.is_set():
                        return
                    # Only a stop request ends an actor; ending on its own is a bug.
                    crash: Exception = RuntimeError("actor returned before it was asked to stop")
                except Fatal as exc:
                    self._fatal(spec, exc)
                    return
                except Exception as exc:
                    crash = exc
                if not self._crashed(spec, crash):
                    return
                spec.state = "backoff"
                with anyio.move_on_after(self._backoff(spec)):
                    await spec.stop_requested.wait()  # a stop cuts the backoff short
                if spec.stop_requested.is_set() and spec.mailbox is None:
                    return  # nothing queued to drain, so no reason to come back
        finally:
            if spec.state != "failed":
                spec.state = "stopped"
            spec.current = None
            spec.finished.set()

    def _backoff(self, spec: ActorSpec) -> float:
        """Doubles with each crash still inside the window, so a long-healthy actor
        that crashes once restarts at once-ish, and a flapping one slows down."""
        exponent = max(len(spec.crash_times) - 1, 0)
        return float(min(self._policy.backoff_initial * 2**exponent, self._policy.backoff_max))

    def _fatal(self, spec: ActorSpec, exc: Fatal) -> None:
        """No restart, no traceback: the message says it all."""
        spec.state = "failed"
        spec.last_error = str(exc)
        log.critical(str(exc), actor=spec.name, exit_code=exc.exit_code)
        self.shutdown(exc.exit_code)

    def _crashed(self, spec: ActorSpec, exc: BaseException) -> bool:
        """Count a crash; return False when the actor must not be restarted."""
        now = time.monotonic()
        spec.restarts += 1
        spec.last_error = f"{type(exc).__name__}: {exc}"
        spec.crash_times.append(now)
        while spec.crash_times and spec.crash_times[0] < now - self._policy.window:
            spec.crash_times.popleft()
        self._on_restart(spec.name)
        log.error(
            "actor crashed",
            actor=spec.name,
            restarts=spec.restarts,
            exc_info=exc,
        )
        if len(spec.crash_times) > self._policy.max_restarts:
            spec.state = "failed"
            log.critical(
                "restart intensity exceeded; stopping the daemon",
                actor=spec.name,
                max_restarts=self._policy.max_restarts,
                window=self._policy.window,
            )
            self.shutdown(EXIT_SOFTWARE)
            return False
        return True


async def _first_of(*events: anyio.Event) -> None:
    """Wait until any one of the events is set."""
    async with anyio.create_task_group() as tg:

        async def wait_for(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait_for, event)
