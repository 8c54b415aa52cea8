"""The daemon: open storage, build the supervision tree, run it until a signal.

Start order is dependency order: admin first (health is observable during start-up),
then the log writer, the identity merger that follows the log, then the sources that
feed it. Systemd hears READY=1 only when
every actor is up and every listener is bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import msgspec
import structlog

from actors.delivery.actor import DestinationActor
from actors.delivery.doorbell import Doorbell
from actors.delivery.status import DestinationStatus
from actors.identity.actor import IdentityActor
from actors.identity.rebuild import RebuildCancelled, rebuild
from actors.lifecycle.forget import forget_here, unforget_here
from actors.lifecycle.identifiers import Identifier
from actors.lifecycle.suppressions import load_suppressions
from actors.messages import ScorerMessage, UseDestinations
from actors.metrics import Metrics
from actors.progress import LogProgress
from actors.runtime import Mailbox, held_from_thread
from actors.scoring import deploy
from actors.scoring.actor import ScorerActor, ScoringStatus
from actors.scoring.model import ModelError
from actors.settings import ConfigError
from daemon.admin import AdminServer, Lifecycle
from daemon.backend import backend_for, database_path
from daemon.config import EMBEDDED_DEFAULT, Config, Destination, load
from daemon.datadir import DataDirLock
from daemon.ingestion import Ingestion
from daemon.supervisor import ActorSpec, Incarnations, Supervisor
from daemon.systemd import Systemd
from storage.backend import Backend, Storage
from storage.errors import StorageError
from storage.lifecycle import Erased
from storage.scores import ScoreStore
from storage.sqlite_backup import unfinished_restore

log = structlog.get_logger(__name__)

SWITCH_INTERVAL = 0.0005
"""Seconds a thread waiting for the interpreter lock waits before it asks for it
(Python's default is 0.005). Group commits run in a worker thread that gives the lock
up around each SQLite call and must get it back from the event loop, busy parsing the
next requests: at the default, a commit's handful of waits cost more than its fsync."""
SCORER_INBOX = 10_000
"""Hints beyond it are dropped (the to-do list in SQLite keeps the truth)."""


class CannotOpenStorage(Exception):
    """The database cannot be opened: nothing can be accepted, so the daemon does not start."""


class CannotScore(Exception):
    """The configured model file is unusable and no model was ever deployed."""


M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter (malloc.h)."""
MMAP_THRESHOLD = 1 << 20
"""Allocations of this size and up get a mapping of their own, returned to the system
when freed. glibc's own threshold rises after such a free (up to 32 MB), and then the
dedup window's arrays (storage/recent_messages.py: a few MB each, replaced at every
merge) came from the heap, which kept what they freed instead of returning it to
the system."""


def _map_large_allocations() -> None:
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent off glibc and musl
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


async def serve(config: Config, config_path: str) -> int:
    """Run until SIGTERM/SIGINT (exit 0 after draining) or escalation (non-zero).
    DataDirHeld if another daemon runs on the data dir: nothing is opened then."""
    try:
        lock = DataDirLock.take(config.daemon.data_dir)
    except OSError as exc:
        raise CannotOpenStorage(f"{config.daemon.data_dir}: {exc}") from exc
    try:
        unfinished = unfinished_restore(database_path(config))
        if unfinished is not None:
            raise CannotOpenStorage(unfinished.refusal(config_path))
        return await _serve(config, config_path)
    finally:
        lock.release()


async def _serve(config: Config, config_path: str) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL)
    _map_large_allocations()
    started_at = time.monotonic()
    backend = backend_for(config)
    new = not backend.exists()
    try:
        storage = await backend.open()
    except (OSError, ValueError, StorageError) as exc:
        raise CannotOpenStorage(f"{backend.describe()}: {exc}") from exc
    where = str(backend.path.resolve())
    if new:
        # Said plainly: a deleted data dir also means new generated write keys.
        log.warning(f"created a new database at {where}")
    log.info("storage open", path=where, config=config_path)
    try:
        await anyio.to_thread.run_sync(_deploy_configured_model, config, backend, storage, True)
        suppressions = await anyio.to_thread.run_sync(load_suppressions, backend, config.identity)
        metrics = Metrics()
        progress = LogProgress()
        supervisor = Supervisor(
            config.daemon.restart,
            config.daemon.shutdown_grace,
            on_restart=lambda name: metrics.actor_restarts.labels(name).inc(),
        )
        metrics.watch(supervisor.statuses, progress.snapshot)
        ingestion = Ingestion(config, storage, progress, metrics, suppressions)
        scorer_inbox = Mailbox[ScorerMessage](SCORER_INBOX)
        # Rung by the scorer after each commit that stages rows due now, and by a
        # forget that queues deletions: the destination starts on them at once.
        doorbell = Doorbell()
        scorer = Incarnations(
            lambda status: ScorerActor(
                backend,
                config,
                storage.write_gate,
                scorer_inbox,
                progress,
                metrics,
                status,
                doorbell=doorbell,
            ),
            ScorerActor.status,
            ScoringStatus(),
        )
        destinations = Destinations(
            config, backend, storage, metrics, supervisor, scorer_inbox, doorbell
        )

        async def forget(identifier: Identifier) -> Erased:
            erased = await anyio.to_thread.run_sync(
                forget_here, backend, identifier, config, suppressions, storage.write_gate
            )
            doorbell.ring(erased.deletions)
            return erased

        supervisor.add(
            ActorSpec(
                "admin",
                lambda: AdminServer(
                    config,
                    supervisor,
                    storage,
                    progress.snapshot,
                    metrics,
                    started_at,
                    lambda report: anyio.to_thread.run_sync(
                        lambda: rebuild(
                            backend,
                            config.identity,
                            progress=_rebuild_progress(report, lambda: supervisor.stopping),
                            gate=lambda: held_from_thread(storage.write_gate),
                        )
                    ),
                    scorer_inbox,
                    scorer.status,
                    destinations.statuses,
                    Lifecycle(
                        forget,
                        lambda identifier: anyio.to_thread.run_sync(
                            unforget_here,
                            backend,
                            identifier,
                            config,
                            suppressions,
                            storage.write_gate,
                        ),
                    ),
                ),
                role="service",
            )
        )
        supervisor.add(ActorSpec("log_writer", ingestion.log_writer, mailbox=ingestion.inbox))
        supervisor.add(
            ActorSpec(
                "identity",
                lambda: IdentityActor(
                    backend,
                    config.identity,
                    progress,
                    metrics,
                    (config.daemon.log_level, config.daemon.log_format),
                    scorer=scorer_inbox,
                ),
            )
        )
        supervisor.add(ActorSpec("scorer", scorer, mailbox=scorer_inbox))
        destinations.add_all()
        for name, make in await ingestion.sources():
            supervisor.add(ActorSpec(name, make, role="source"))

        systemd = Systemd()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                _handle_signals,
                supervisor,
                systemd,
                config,
                config_path,
                backend,
                storage,
                destinations,
            )
            tg.start_soon(_announce_ready, supervisor, systemd)
            tg.start_soon(systemd.keep_watchdog_fed)
            code = await supervisor.run()
            tg.cancel_scope.cancel()
    finally:
        await storage.close()
    log.info("stopped", exit_code=code, events_stored=progress.head)
    return code


def _sections_changed(running: Config, loaded: Config) -> list[str]:
    """The top-level sections of daemon.toml (as [http], [scoring]) whose settings
    differ between the running config and the file."""
    return [
        field.encode_name
        for field in msgspec.structs.fields(Config)
        if getattr(running, field.name) != getattr(loaded, field.name)
    ]


class Destinations:
    """The destination actors as daemon.toml has them now; SIGHUP reloads them."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        storage: Storage,
        metrics: Metrics,
        supervisor: Supervisor,
        scorer: Mailbox[ScorerMessage],
        doorbell: Doorbell,
    ) -> None:
        self.config = config
        self._actors: dict[str, Incarnations[DestinationActor, DestinationStatus]] = {}
        self._backend = backend
        self._storage = storage
        self._metrics = metrics
        self._supervisor = supervisor
        self._scorer = scorer
        self._doorbell = doorbell
        metrics.watch_destinations(self.statuses)

    def statuses(self) -> dict[str, DestinationStatus]:
        """Each configured destination's status now, for /status and /metrics."""
        return {name: actor.status() for name, actor in self._actors.items()}

    def add_all(self) -> None:
        for name, destination in self.config.destinations.items():
            self._supervisor.add(self._spec(name, destination))

    async def reload(self, config_path: str) -> None:
        """Stop the destinations that went or changed, start the new and changed ones,
        and tell the scorer. The rest of daemon.toml takes effect at the next restart."""
        if config_path == EMBEDDED_DEFAULT:
            log.info("running on the embedded default config: no destinations to reload")
            return
        try:
            loaded = await anyio.to_thread.run_sync(load, config_path)
        except ConfigError as exc:
            log.error(
                "daemon.toml not reloaded; the destinations stay as they were", error=str(exc)
            )
            return
        old, new = self.config.destinations, loaded.config.destinations
        gone = [name for name in old if old[name] != new.get(name)]
        coming = [name for name in new if new[name] != old.get(name)]
        for name in gone:
            await self._supervisor.retire(_actor_name(name))
            del self._actors[name]
        self.config = msgspec.structs.replace(self.config, destinations=new)
        await self._scorer.send(UseDestinations(new))
        for name in coming:
            await self._supervisor.start(self._spec(name, new[name]))
        if changed := _sections_changed(self.config, loaded.config):
            log.warning(
                "daemon.toml changed outside [destinations]; these sections take a restart",
                sections=changed,
            )
        log.info(
            "destinations reloaded",
            started=[n for n in coming if n not in old],
            restarted=[n for n in coming if n in old],
            stopped=[n for n in gone if n not in new],
        )

    def _spec(self, name: str, destination: Destination) -> ActorSpec:
        actor = self._actors[name] = Incarnations(
            lambda status: DestinationActor(
                name,
                destination,
                destination.sender(name),
                self._backend,
                self._storage.write_gate,
                self._metrics,
                status,
                bell=self._doorbell.bell(name),
            ),
            DestinationActor.status,
            DestinationStatus(destination.kind, destination.mode),
        )
        return ActorSpec(_actor_name(name), actor)


def _actor_name(destination: str) -> str:
    return f"destination:{destination}"


def _rebuild_progress(
    report: Callable[[int, int], None], stopping: Callable[[], bool]
) -> Callable[[int, int], None]:
    """The rebuild's progress callback: reported to /status, and cut short when the
    daemon is stopping."""

    def progress(done: int, total: int) -> None:
        report(done, total)
        _stop_rebuild_if(stopping())

    return progress


def _stop_rebuild_if(stopping: bool) -> None:
    """A rebuild can take minutes; a daemon asked to stop must not wait for it."""
    if stopping:
        raise RebuildCancelled("the daemon is stopping; the old graph stays")


async def _announce_ready(supervisor: Supervisor, systemd: Systemd) -> None:
    await supervisor.ready.wait()
    systemd.notify("READY=1\nSTATUS=serving")


def _deploy_configured_model(
    config: Config, backend: Backend, storage: Storage, starting: bool
) -> None:
    """Deploy `[scoring] model` if its version is new. A broken file is refused and
    the running model stays; at start with no model ever deployed, it stops the start."""
    if config.scoring.model is None:
        return
    try:
        # Durable: a deploy the log reported must survive power loss.
        with contextlib.closing(backend.session(durable=True)) as session:
            _deploy_file(config.scoring.model, session.scores, storage, starting)
    except StorageError as exc:
        if starting:
            raise CannotOpenStorage(f"{backend.describe()}: {exc}") from exc
        log.error("model file not deployed; the running model stays", error=str(exc))


def _deploy_file(model_path: str, store: ScoreStore, storage: Storage, starting: bool) -> None:
    try:
        model, outcome = deploy.deploy_configured(
            store, model_path, lambda: held_from_thread(storage.write_gate)
        )
        log.info(
            "scoring model file",
            path=model_path,
            version=model.version,
            outcome=outcome.value,
        )
    except ModelError as exc:
        if starting and store.active_model() is None:
            raise CannotScore(str(exc)) from None
        log.error("model file refused; the running model stays", error=str(exc))


async def _handle_signals(
    supervisor: Supervisor,
    systemd: Systemd,
    config: Config,
    config_path: str,
    backend: Backend,
    storage: Storage,
    destinations: Destinations,
) -> None:
    reloading = anyio.Lock()

    async def reload() -> None:
        """In a task of its own, so a reload that waits (for a destination to finish
        its call in flight) never holds up a stop signal; one at a time, and only once
        every actor has started."""
        async with reloading:
            await supervisor.ready.wait()
            # `[scoring] model` as daemon.toml names it now: a file added or changed
            # there is deployed too, not only a new version in the file named at start.
            scoring = config
            if config_path != EMBEDDED_DEFAULT:
                with contextlib.suppress(ConfigError):  # destinations.reload says why
                    scoring = (await anyio.to_thread.run_sync(load, config_path)).config
            await anyio.to_thread.run_sync(
                _deploy_configured_model, scoring, backend, storage, False
            )
            destinations.config = msgspec.structs.replace(
                destinations.config,
                scoring=msgspec.structs.replace(
                    destinations.config.scoring, model=scoring.scoring.model
                ),
            )
            if supervisor.stopping:
                return
            try:
                await destinations.reload(config_path)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                log.warning("destinations reload cut short: the daemon is stopping")

    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP received; reloading the scoring model and the destinations")
                    tg.start_soon(reload)
                    continue
                if supervisor.stopping:
                    log.warning("second stop signal; still draining", signal=signum.name)
                    continue
                log.info("stop signal received; draining", signal=signum.name)
                systemd.notify("STOPPING=1\nSTATUS=draining")
                supervisor.shutdown()
