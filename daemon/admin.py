"""The admin API on its own port: health for systemd and load balancers, metrics for
Prometheus, status for people. Bound to localhost by default; it carries no secrets but
says a lot about the business, and its POSTs start work.

Loopback is not a wall against the browser on the same machine, so every request but
the health probes is checked (`_guard`): a Host that is not this API's own (DNS
rebinding) gets 421; a cross-site request (Origin, Sec-Fetch-Site) 403; a missing or
wrong bearer token, when one is configured, 401; a POST that is not JSON (what a
form or a no-cors fetch can send) 415.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import structlog
from aiohttp import hdrs, web

from actors import http_server
from actors.delivery.status import DestinationStatus
from actors.http_server import Listener, Runner
from actors.identity.extract import normalize_email
from actors.identity.rebuild import RebuildCancelled, RebuildReport
from actors.identity.settings import BUILTIN_ID_KINDS
from actors.lifecycle.identifiers import BadIdentifier, Identifier, parse_identifier
from actors.messages import RunBatch, ScorerMessage, SyncDestination
from actors.metrics import CONTENT_TYPE, Metrics
from actors.progress import LogStatus
from actors.runtime import Actor, Mailbox
from actors.scoring.actor import ScoringStatus
from daemon import __version__
from daemon.config import AdminSection, Config
from daemon.supervisor import Supervisor
from storage.backend import Storage
from storage.errors import RebuildRunning, StorageError
from storage.lifecycle import Erased, PartlyErased

log = structlog.get_logger(__name__)

READY_PROBE_TIMEOUT = 2.0
PROBES = frozenset({"/healthz", "/readyz"})
"""Open to whoever can connect: load balancers and orchestrators probe by IP address,
with no token. They say ok or not, and which actor is down."""
SAME_ORIGIN = frozenset({"same-origin", "none"})
"""Sec-Fetch-Site values of a request the API's own pages or a person made."""
_encode = msgspec.json.Encoder().encode


class AdminServer(Actor):
    def __init__(
        self,
        config: Config,
        supervisor: Supervisor,
        storage: Storage,
        progress: Callable[[], LogStatus],
        metrics: Metrics,
        started_at: float,
        rebuild_identity: Callable[[Callable[[int, int], None]], Awaitable[RebuildReport]],
        scorer: Mailbox[ScorerMessage],
        scoring: Callable[[], ScoringStatus],
        destinations: Callable[[], Mapping[str, DestinationStatus]],
        lifecycle: Lifecycle,
    ) -> None:
        super().__init__("admin")
        self._lifecycle = lifecycle
        self._destinations = destinations
        self._scorer = scorer
        self._scoring = scoring
        self._rebuild_identity = rebuild_identity
        self._rebuild_progress: dict[str, int] | None = None
        """A rebuild under way: {"events": replayed so far, "of": the log's head}."""
        self._rebuilding = anyio.Lock()
        self._config = config
        self._supervisor = supervisor
        self._storage = storage
        self._progress = progress
        self._metrics = metrics
        self._started_at = started_at
        self._stop = anyio.Event()
        self._hosts: Collection[str] = ()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Callable[[], None]) -> None:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/status", self._status)
        app.router.add_get("/quarantine", self._quarantine)
        app.router.add_get("/held", self._held)
        app.router.add_get("/v1/profiles/{kind}/{value}", self._profile)
        app.router.add_get("/v1/profiles/{value}", self._profile)  # a profile id (prf_...)
        app.router.add_post("/v1/identity/rebuild", self._rebuild)
        app.router.add_post("/v1/scoring/run", self._run_scoring)
        app.router.add_post("/v1/destinations/{name}/sync", self._sync)
        app.router.add_post("/v1/forget", self._forget)
        app.router.add_post("/v1/unforget", self._unforget)
        settings = self._config.admin
        listener = Listener(
            "admin",
            settings.keepalive_timeout,
            settings.header_timeout,
            self._metrics,
            lambda status, message: _json({"error": message}, status),
        )
        runner = Runner(app, listener, shutdown_timeout=1)
        await runner.setup()
        try:
            listen = settings.listen
            await http_server.listen(runner, "admin API ([admin] listen)", listen)
            self._hosts = own_hosts(settings, listen.port or runner.addresses[0][1])
            log.info("admin API listening", address=str(listen), token=settings.token is not None)
            ready()
            await self._stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in PROBES:
            refusal = self._refusal(request)
            if refusal is not None:
                status, reason = refusal
                log.info(
                    "admin request refused",
                    method=request.method,
                    path=request.path,
                    status=status,
                    reason=reason,
                    peer=request.remote,
                )
                response = _json({"error": reason}, status)
                if status == 401:
                    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="leadsync admin"'
                return response
        return await handler(request)

    def _refusal(self, request: web.Request) -> tuple[int, str] | None:
        """(status, why) for a request the API must not answer, else None."""
        host = request.headers.get(hdrs.HOST, "").lower()
        if host not in self._hosts:
            return 421, (
                f"Host {host!r} is not an address of this admin API; "
                "a name it is reached by belongs in admin.hosts"
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin.lower() not in (f"http://{host}", f"https://{host}"):
            return 403, f"cross-site request refused (Origin {origin!r} is not {host!r})"
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in SAME_ORIGIN:
            return 403, f"cross-site request refused (Sec-Fetch-Site: {site})"
        token = self._config.admin.token
        if token is not None:
            scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
            # compare_digest: how long the comparison takes says nothing about the token.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                return 401, "send Authorization: Bearer <the token in admin.token>"
        if request.method == "POST" and request.content_type != "application/json":
            return 415, (
                f"{request.method} takes Content-Type: application/json "
                f"(the body may be empty), not {request.content_type}"
            )
        return None

    async def _healthz(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers. Nothing else, or a slow disk would get
        a healthy process killed."""
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = [
            f"actor {s.name} is {s.state}"
            for s in self._supervisor.statuses()
            if s.state != "running"
        ]
        if self._supervisor.stopping:
            problems.append("shutting down")
        try:
            with anyio.fail_after(READY_PROBE_TIMEOUT):
                await self._storage.probe_writable()
        except TimeoutError:
            problems.append(f"database write took over {READY_PROBE_TIMEOUT:g}s")
        except StorageError as exc:
            problems.append(f"database not writable: {exc}")
        if problems:
            return _json({"status": "not ready", "problems": problems}, status=503)
        return _json({"status": "ready"})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.Response:
        quarantined, _ = await self._storage.quarantined(limit=0)
        held, _ = await self._storage.held(limit=0)
        progress, scoring = self._progress(), self._scoring()
        return _json(
            {
                "version": __version__,
                "uptime_seconds": round(time.monotonic() - self._started_at, 3),
                "ready": self._supervisor.ready.is_set() and not self._supervisor.stopping,
                "events_stored": progress.head,
                "pending_events": progress.pending,
                "backlog_events": progress.backlog,
                "quarantined": quarantined,
                "held": held,
                "consumers": {
                    name: {"applied": seq, "lag_events": max(progress.head - seq, 0)}
                    for name, seq in progress.consumers.items()
                },
                "ingest": {
                    "listen": str(self._config.http.listen),
                    "sources": {
                        name: {"type": "http", "kind": source.kind}
                        for name, source in self._config.sources.items()
                    },
                },
                "scoring": {
                    "model": scoring.model,
                    "last_batch_at": _iso(scoring.last_batch_at),
                    "next_batch_at": _iso(scoring.next_batch_at),
                    "last_batch": dict(scoring.last_batch),
                    "running": scoring.running,
                },
                "identity_rebuild": self._rebuild_progress,
                "destinations": {
                    name: _destination(status) for name, status in self._destinations().items()
                },
                "actors": self._supervisor.statuses(),
            }
        )

    async def _quarantine(self, request: web.Request) -> web.Response:
        if (limit := _limit(request)) is None:
            return _json({"error": "limit must be a whole number"}, status=400)
        total, rows = await self._storage.quarantined(limit)
        return _json({"total": total, "messages": [msgspec.to_builtins(r) for r in rows]})

    async def _held(self, request: web.Request) -> web.Response:
        """What the pipeline set aside (`leadsync held list` reads the file itself)."""
        if (limit := _limit(request)) is None:
            return _json({"error": "limit must be a whole number"}, status=400)
        counts, items = await self._storage.held(limit)
        shown = []
        for item in items:
            row = msgspec.to_builtins(item)
            row["body"] = None if item.body is None else item.body.decode("utf-8", "replace")
            shown.append(row)
        return _json({"total": sum(counts.values()), "by_component": counts, "items": shown})

    async def _profile(self, request: web.Request) -> web.Response:
        kind = request.match_info.get("kind", "profile")
        value = request.match_info["value"]
        kinds = [
            "profile",
            *BUILTIN_ID_KINDS,
            *(x.kind for x in self._config.identity.external_ids),
        ]
        if kind not in kinds:
            return _json({"error": f"unknown kind {kind!r}; use one of {', '.join(kinds)}"}, 400)
        try:
            events = max(0, min(int(request.query.get("events", "20")), 1000))
        except ValueError:
            return _json({"error": "events must be a whole number"}, status=400)
        if kind == "email":
            value = normalize_email(value) or value
        view = await self._storage.profile(kind, value, events)
        if view is None:
            return _json({"error": f"no profile has {kind} {value!r}"}, status=404)
        return web.Response(body=_encode(view), content_type="application/json")

    async def _rebuild(self, request: web.Request) -> web.Response:
        """Rebuild inside the daemon, as the service's own user, with its loaded rules."""
        if self._rebuilding.locked():
            return _json({"error": "a rebuild is already running"}, status=409)
        async with self._rebuilding:
            log.info("identity rebuild started")
            self._rebuild_progress = {"events": 0, "of": self._progress().head}
            try:
                report = await self._rebuild_identity(self._rebuilt)
            except RebuildRunning as exc:
                return _json({"error": str(exc)}, status=409)
            except StorageError as exc:
                log.error("identity rebuild failed; the old graph stays", error=str(exc))
                return _json({"error": f"rebuild failed, the old graph stays: {exc}"}, 503)
            except RebuildCancelled as exc:
                return _json({"error": str(exc)}, status=503)
            finally:
                self._rebuild_progress = None
        log.info("identity rebuild finished", **asdict(report))
        return _json(asdict(report))

    def _rebuilt(self, events: int, total: int) -> None:
        """The rebuild's progress, from its thread: one assignment, read by /status."""
        self._rebuild_progress = {"events": events, "of": total}

    async def _run_scoring(self, request: web.Request) -> web.Response:
        """A batch run now, answered when it is done (runs asked for meanwhile share it)."""
        run = RunBatch()
        try:
            await self._scorer.send(run)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return _json({"error": "the daemon is stopping"}, status=503)
        await run.done.wait()
        if not run.result:
            return _json({"error": "the scorer stopped before the run finished"}, status=503)
        return _json(run.result)

    async def _sync(self, request: web.Request) -> web.Response:
        """Stage every profile's payload for one destination (`?full=1`: even those it
        has), answered when staged; the destination then sends at its own pace."""
        name = request.match_info["name"]
        destinations = self._destinations()
        if name not in destinations:
            known = ", ".join(destinations) or "none configured"
            return _json({"error": f"no destination named {name!r} ({known})"}, status=404)
        sync = SyncDestination(name, request.query.get("full") in ("1", "true"))
        try:
            await self._scorer.send(sync)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return _json({"error": "the daemon is stopping"}, status=503)
        await sync.done.wait()
        if not sync.result:
            return _json({"error": "the scorer stopped before the sync finished"}, status=503)
        return _json(sync.result)

    async def _forget(self, request: web.Request) -> web.Response:
        """Erase a person (actors/lifecycle.py); the identifier comes in the body, so it
        stays out of access logs."""
        identifier = await _identifier(request, self._config)
        if isinstance(identifier, web.Response):
            return identifier
        try:
            erased = await self._lifecycle.forget(identifier)
        except RebuildRunning:
            return _json({"error": "an identity rebuild is running; forget after it"}, 409)
        except PartlyErased as exc:
            log.error("forget failed; partly erased", error=str(exc))
            return _json({"error": f"forget failed, partly erased; run forget again: {exc}"}, 503)
        except StorageError as exc:
            log.error("forget failed; nothing was erased", error=str(exc))
            return _json({"error": f"forget failed, nothing was erased: {exc}"}, 503)
        log.info("forgot a person", kind=identifier[0], **msgspec.to_builtins(erased))
        return _json(msgspec.to_builtins(erased))

    async def _unforget(self, request: web.Request) -> web.Response:
        identifier = await _identifier(request, self._config)
        if isinstance(identifier, web.Response):
            return identifier
        try:
            lifted = await self._lifecycle.unforget(identifier)
        except StorageError as exc:
            return _json({"error": f"unforget failed: {exc}"}, 503)
        if not lifted:
            return _json({"error": "no suppression covers that identifier"}, 404)
        log.info("suppression lifted", kind=identifier[0], identifiers=lifted)
        return _json({"identifiers": lifted})


class Lifecycle:
    """What the admin API's forget and unforget call (the daemon's, in app.py)."""

    def __init__(
        self,
        forget: Callable[[Identifier], Awaitable[Erased]],
        unforget: Callable[[Identifier], Awaitable[int]],
    ) -> None:
        self.forget = forget
        self.unforget = unforget


async def _identifier(request: web.Request, config: Config) -> Identifier | web.Response:
    """{"identifier": "KIND:VALUE"} from the body, or the 400 that says what is wrong."""
    try:
        body = await request.json()
        text = body["identifier"]
        if not isinstance(text, str):
            raise TypeError
        return parse_identifier(text, config.identity)
    except BadIdentifier as exc:
        return _json({"error": str(exc)}, 400)
    except (ValueError, KeyError, TypeError):
        return _json({"error": 'send {"identifier": "KIND:VALUE"} as JSON'}, 400)


def _limit(request: web.Request) -> int | None:
    """`?limit=N` of a listing, 20 by default, at most 1,000; None if not a number."""
    try:
        return max(0, min(int(request.query.get("limit", "20")), 1000))
    except ValueError:
        return None


def own_hosts(settings: AdminSection, port: int) -> frozenset[str]:
    """Host header values that name this API: its listen address, loopback names when
    loopback is reachable, and admin.hosts. A Host without a port means port 80, as in
    HTTP; a name in admin.hosts without one is taken with or without the port (a
    reverse proxy in front usually forwards just the name)."""

    def authority(host: str) -> str:
        return f"[{host}]" if ":" in host else host

    listen = settings.listen
    wildcard = listen.host in ("0.0.0.0", "::")
    names = set() if wildcard else {authority(listen.host).lower()}
    if wildcard or listen.loopback:
        names |= {"localhost", "127.0.0.1", "[::1]"}
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    for entry in settings.hosts:
        entry = entry.lower()
        has_port = entry.rpartition(":")[2].isdigit() and not entry.endswith("]")
        hosts |= {entry} if has_port else {entry, f"{entry}:{port}"}
    return frozenset(hosts)


def _destination(status: DestinationStatus) -> dict[str, Any]:
    shown = msgspec.structs.asdict(status)
    shown["last_success_at"] = _iso(status.last_success_at)
    shown["last_error_at"] = _iso(status.last_error_at)
    shown["rate"] = round(status.rate, 3)
    shown["paused_for"] = round(status.paused_for, 1)
    shown["lag"] = None if status.lag is None else round(status.lag, 3)
    return shown


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(body), status=status, content_type="application/json")
