"""The daemon: open storage, build the supervision tree, run it until a signal.

Start order is dependency order: admin first (health is observable during start-up),
then the log writer, the identity merger that follows the log, then the sources that
feed it. Systemd hears READY=1 only when
every actor is up and every listener is bound.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from actors.delivery.actor import DestinationActor, DestinationStatus
from actors.delivery.senders import sender_for
from actors.http_source import HttpSourceActor
from actors.identity.actor import IdentityActor
from actors.identity.rebuild import RebuildCancelled, rebuild
from actors.log_writer import LogProgress, LogWriter, Submission
from actors.messages import ScorerMessage
from actors.runtime import Mailbox, held_from_thread
from actors.scoring import deploy
from actors.scoring.actor import ScorerActor, ScoringStatus
from actors.scoring.model import ModelError
from daemon.admin import AdminServer
from daemon.config import Config, Destination
from daemon.metrics import Metrics
from daemon.supervisor import ActorSpec, Supervisor
from daemon.systemd import Systemd
from storage.base import Storage
from storage.sqlite import SchemaTooNew, SqliteStorage
from storage.sqlite_graph import connect
from storage.sqlite_scores import SqliteScoreStore

log = structlog.get_logger(__name__)

DATABASE_NAME = "leadsync.db"
SCORER_INBOX = 10_000
"""Hints beyond it are dropped (the to-do list in SQLite keeps the truth)."""


class CannotOpenStorage(Exception):
    """The database cannot be opened: nothing can be accepted, so the daemon does not start."""


class CannotScore(Exception):
    """The configured model file is unusable and no model was ever deployed."""


async def serve(config: Config, config_path: str) -> int:
    """Run until SIGTERM/SIGINT (exit 0 after draining) or escalation (non-zero)."""
    started_at = time.monotonic()
    path = Path(config.daemon.data_dir) / DATABASE_NAME
    try:
        storage = await SqliteStorage.open(
            path,
            busy_timeout=config.storage.busy_timeout,
            journal_size_limit=config.storage.journal_size_limit,
        )
    except (OSError, ValueError, sqlite3.Error, SchemaTooNew) as exc:
        raise CannotOpenStorage(f"{path}: {exc}") from exc
    log.info("storage open", path=str(path.resolve()), config=config_path)
    try:
        await anyio.to_thread.run_sync(_deploy_configured_model, config, path, storage, True)
        write_keys = await _write_keys(config, storage)
        metrics = Metrics()
        progress = LogProgress()
        supervisor = Supervisor(
            config.daemon.restart,
            config.daemon.shutdown_grace,
            on_restart=lambda name: metrics.actor_restarts.labels(name).inc(),
        )
        metrics.watch(supervisor.statuses, progress)
        # Sized in requests; the pending-events bound in the HTTP source is what
        # actually limits memory, this only has to be large enough never to bind first.
        log_inbox = Mailbox[Submission](config.http.max_pending_events)
        scorer_inbox = Mailbox[ScorerMessage](SCORER_INBOX)
        scoring_status = ScoringStatus()
        destinations = {
            name: DestinationStatus(destination.kind, destination.mode)
            for name, destination in config.destinations.items()
        }
        metrics.watch_destinations(destinations)

        supervisor.add(
            ActorSpec(
                "admin",
                lambda: AdminServer(
                    config,
                    supervisor,
                    storage,
                    progress,
                    metrics,
                    started_at,
                    lambda: anyio.to_thread.run_sync(
                        lambda: rebuild(
                            path,
                            config.identity,
                            config.storage.busy_timeout,
                            progress=lambda done, total: _stop_rebuild_if(supervisor.stopping),
                            gate=lambda: held_from_thread(storage.write_gate),
                        )
                    ),
                    scorer_inbox,
                    scoring_status,
                    destinations,
                ),
                role="service",
            )
        )
        supervisor.add(
            ActorSpec(
                "log_writer",
                lambda: LogWriter(
                    storage, log_inbox, progress, metrics, config.storage.checkpoint_interval
                ),
                mailbox=log_inbox,
            )
        )
        supervisor.add(
            ActorSpec(
                "identity",
                lambda: IdentityActor(
                    path,
                    config.storage.busy_timeout,
                    config.identity,
                    progress,
                    metrics,
                    (config.daemon.log_level, config.daemon.log_format),
                    outbox=scorer_inbox,
                ),
            )
        )
        supervisor.add(
            ActorSpec(
                "scorer",
                lambda: ScorerActor(
                    path,
                    config,
                    storage.write_gate,
                    scorer_inbox,
                    progress,
                    metrics,
                    scoring_status,
                ),
                mailbox=scorer_inbox,
            )
        )
        for name, destination in config.destinations.items():
            supervisor.add(
                ActorSpec(
                    f"destination:{name}",
                    _destination_actor(
                        name, destination, path, config, storage, metrics, destinations[name]
                    ),
                )
            )
        if write_keys:
            supervisor.add(
                ActorSpec(
                    "http",
                    lambda: HttpSourceActor(
                        config.http,
                        config.sources,
                        write_keys,
                        log_inbox,
                        progress,
                        metrics,
                        config.daemon.shutdown_grace,
                    ),
                    role="source",
                )
            )

        systemd = Systemd()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_handle_signals, supervisor, systemd, config, path, storage)
            tg.start_soon(_announce_ready, supervisor, systemd)
            tg.start_soon(systemd.keep_watchdog_fed)
            code = await supervisor.run()
            tg.cancel_scope.cancel()
    finally:
        await storage.close()
    log.info("stopped", exit_code=code, events_stored=progress.head)
    return code


def _destination_actor(
    name: str,
    destination: Destination,
    path: Path,
    config: Config,
    storage: Storage,
    metrics: Metrics,
    status: DestinationStatus,
) -> Callable[[], DestinationActor]:
    """A new actor, with a new sender, for each (re)start."""
    return lambda: DestinationActor(
        name,
        destination,
        sender_for(name, destination),
        path,
        config.storage.busy_timeout,
        storage.write_gate,
        metrics,
        status,
    )


def _stop_rebuild_if(stopping: bool) -> None:
    """A rebuild can take minutes; a daemon asked to stop must not wait for it."""
    if stopping:
        raise RebuildCancelled("the daemon is stopping; the old graph stays")


async def _write_keys(config: Config, storage: Storage) -> dict[str, str]:
    """Each http source's write key; one generated on first start is kept in the database."""
    keys: dict[str, str] = {}
    for name, source in config.sources.items():
        if source.write_key is not None:
            keys[name] = source.write_key
            continue
        meta_key = f"generated_write_key:{name}"
        key = await storage.get_meta(meta_key)
        if key is None:
            key = secrets.token_urlsafe(24)
            await storage.set_meta(meta_key, key)
        keys[name] = key
        log.warning(
            "using a generated write key; set sources.<name>.write_key to choose one",
            source=name,
            write_key=key,
        )
    return keys


async def _announce_ready(supervisor: Supervisor, systemd: Systemd) -> None:
    await supervisor.ready.wait()
    systemd.notify("READY=1\nSTATUS=serving")


def _deploy_configured_model(config: Config, path: Path, storage: Storage, starting: bool) -> None:
    """Deploy `[scoring] model` if its version is new. A broken file is refused and
    the running model stays; at start with no model ever deployed, it stops the start."""
    if config.scoring.model is None:
        return
    try:
        with contextlib.closing(connect(path, config.storage.busy_timeout)) as db:
            _deploy_file(config.scoring.model, db, storage, starting)
    except sqlite3.Error as exc:
        if starting:
            raise CannotOpenStorage(f"{path}: {exc}") from exc
        log.error("model file not deployed; the running model stays", error=str(exc))


def _deploy_file(model_path: str, db: sqlite3.Connection, storage: Storage, starting: bool) -> None:
    # synchronous=FULL: a deploy the log reported must survive power loss.
    db.execute("PRAGMA synchronous = FULL")
    try:
        store = SqliteScoreStore(db)
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
        if starting and SqliteScoreStore(db).active_model() is None:
            raise CannotScore(str(exc)) from None
        log.error("model file refused; the running model stays", error=str(exc))


async def _handle_signals(
    supervisor: Supervisor, systemd: Systemd, config: Config, path: Path, storage: Storage
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP received; reloading the scoring model")
                await anyio.to_thread.run_sync(
                    _deploy_configured_model, config, path, storage, False
                )
                continue
            if supervisor.stopping:
                log.warning("second stop signal; still draining", signal=signum.name)
                continue
            log.info("stop signal received; draining", signal=signum.name)
            systemd.notify("STOPPING=1\nSTATUS=draining")
            supervisor.shutdown()
