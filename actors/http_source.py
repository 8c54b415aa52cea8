"""The HTTP source: Segment's tracking API, so Segment's own client libraries work unchanged.

A 200 means committed: the handler waits for the log writer's group commit before it
answers. Every error answer is JSON shaped as Segment's clients read it
(`{"code": ..., "message": ...}`), and uses the status code that makes them do the
right thing: 400/401 they drop (so we only say it when a retry cannot help), 429 and
5xx they retry with backoff, honouring Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import structlog
from aiohttp import web

from actors import http_server, tracking_api
from actors.http_server import Listener, Runner
from actors.http_settings import HttpSection
from actors.runtime import Actor
from actors.source_context import SourceHost, Unavailable

log = structlog.get_logger(__name__)


MAX_REQUEST_BYTES = tracking_api.MAX_REQUEST_BYTES
BODY_READ_TIMEOUT = 10.0
"""Seconds to receive a request body."""

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}
_ENDPOINTS = tracking_api.SINGLE_ENDPOINTS | tracking_api.BATCH_ENDPOINTS
_encode = msgspec.json.Encoder().encode


class _Refusal(Exception):
    """An answer other than 200, with Segment's error body."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: int | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after, self.extra = status, code, retry_after, extra

    def response(self) -> web.Response:
        headers = dict(_CORS)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        body = {"success": False, "code": self.code, "message": str(self), **self.extra}
        return web.Response(
            status=self.status, body=_encode(body), content_type="application/json", headers=headers
        )


class HttpSourceActor(Actor):
    """The listener every `type = "http"` source shares: a request's write key says
    which source it is, and its events go in through that source's context."""

    def __init__(
        self,
        settings: HttpSection,
        host: SourceHost,
        write_keys: dict[str, str],
        kinds: dict[str, str],
    ) -> None:
        super().__init__("http")
        self._settings = settings
        self._host = host
        self._source_by_key = {key: name for name, key in write_keys.items()}
        self._contexts = {name: host.context(name) for name in write_keys}
        self._kinds = kinds
        self._metrics = host.metrics
        self._shutdown_timeout = host.shutdown_timeout
        self._stop = anyio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Callable[[], None]) -> None:
        runner = self.runner()
        await runner.setup()
        try:
            listen = self._settings.listen
            await http_server.listen(runner, "ingestion API ([http] listen)", listen, backlog=1024)
            log.info("ingestion API listening", address=str(listen), sources=self._kinds)
            ready()
            await self._stop.wait()
        finally:
            # Stops accepting, then lets in-flight requests finish (their commits are
            # still coming: the log writer stops after the sources).
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    def runner(self) -> Runner:
        """The API's routes on a runner with the listener's rules, not set up yet: what
        `run` serves on `[http] listen`, and what tests serve in process on a port of
        their own (tests/support/ingestion.py)."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES + 1, middlewares=[self._observe])
        app.router.add_post("/v1/{endpoint}", self._ingest)
        app.router.add_route("OPTIONS", "/v1/{endpoint}", self._preflight)
        listener = Listener(
            "http",
            self._settings.keepalive_timeout,
            self._settings.header_timeout,
            self._metrics,
            lambda status, message: _Refusal(status, "bad_request", message).response(),
        )
        # auto_decompress off: we inflate gzip ourselves, with a cap, so a small
        # compressed body cannot expand into gigabytes (a gzip bomb).
        return Runner(
            app,
            listener,
            auto_decompress=False,
            # In-flight requests get a share of the grace; the log writer and the
            # merger after them need the rest to drain.
            shutdown_timeout=min(BODY_READ_TIMEOUT, self._shutdown_timeout / 3),
        )

    @web.middleware
    async def _observe(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = request.match_info.get("endpoint", "")
        endpoint = endpoint if endpoint in _ENDPOINTS else "other"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # aiohttp's own answers (no such path, wrong method) in Segment's JSON shape.
            response = _Refusal(
                exc.status,
                exc.reason.lower().replace(" ", "_"),
                f"{request.method} {request.path}: {exc.reason}",
            ).response()
        self._metrics.requests.labels(endpoint, str(response.status)).inc()
        self._metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_CORS)

    async def _ingest(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        received_at = datetime.now(UTC)
        try:
            if endpoint not in _ENDPOINTS:
                raise _Refusal(404, "not_found", f"unknown endpoint /v1/{endpoint}")
            source = self._source_from_header(request)
            self._check_backlog()
            body = await _read_body(request)
            if source is None:
                source = self._source_from_body(body)
            parsed = tracking_api.parse(endpoint, body, source, received_at)
            return await self._commit(endpoint, source, parsed, received_at)
        except tracking_api.RequestError as exc:
            return self._refuse(request, _Refusal(400, "invalid_request", str(exc)))
        except _Refusal as refusal:
            return self._refuse(request, refusal)

    def _refuse(self, request: web.Request, refusal: _Refusal) -> web.Response:
        log.info(
            "request refused",
            path=request.path,
            status=refusal.status,
            reason=str(refusal),
            peer=request.remote,
        )
        return refusal.response()

    def _source_from_header(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            raise _Refusal(
                401, "unauthorized", "use HTTP Basic auth with the write key as user name"
            )
        try:
            key = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, ValueError):  # ValueError: non-ASCII; covers Unicode errors
            raise _Refusal(
                401, "unauthorized", "Authorization header is not valid Basic auth"
            ) from None
        return self._source_for(key)

    def _source_from_body(self, body: bytes) -> str:
        key = tracking_api.body_write_key(body)
        if key is None:
            raise _Refusal(
                401,
                "unauthorized",
                "no write key: send it as the Basic auth user name or as writeKey in the body",
            )
        return self._source_for(key)

    def _source_for(self, key: str) -> str:
        source = self._source_by_key.get(key)
        if source is None:
            raise _Refusal(401, "unauthorized", "unknown write key")
        return source

    def _check_backlog(self) -> None:
        busy = self._host.busy()
        if busy is not None:
            raise _Refusal(429, "too_many_requests", busy.message, retry_after=busy.retry_after)

    async def _commit(
        self,
        endpoint: str,
        source: str,
        parsed: tracking_api.ParsedRequest,
        received_at: datetime,
    ) -> web.Response:
        try:
            await self._contexts[source].submit(
                parsed.events,
                tracking_api.iso(received_at),
                parsed.rejected,
                rejected_types=parsed.rejected_types,
            )
        except Unavailable as exc:
            raise _Refusal(503, "unavailable", str(exc), retry_after=5) from None
        if parsed.rejected:
            rejected = [{"index": r.batch_index, "message": r.reason} for r in parsed.rejected]
            if not parsed.events:
                first = parsed.rejected[0]
                where = "" if first.batch_index is None else f"batch[{first.batch_index}]: "
                raise _Refusal(400, "invalid_request", f"{where}{first.reason}", rejected=rejected)
            body = {"success": True, "accepted": len(parsed.events), "rejected": rejected}
            return web.Response(body=_encode(body), content_type="application/json", headers=_CORS)
        return web.Response(
            body=b'{"success":true}', content_type="application/json", headers=_CORS
        )


async def _read_body(request: web.Request) -> bytes:
    """The body, inflated if gzip, refused past 500 KB either way."""
    limit = MAX_REQUEST_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(400, "invalid_request", f"request body over {limit} bytes (500 KB)")
    chunks: list[bytes] = []
    size = 0
    # A client trickling its body would hold a request (and, at shutdown, the drain)
    # open for ever; real clients send 500 KB in well under this.
    with anyio.move_on_after(BODY_READ_TIMEOUT) as reading:
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _Refusal(400, "invalid_request", f"request body over {limit} bytes (500 KB)")
            chunks.append(chunk)
    if reading.cancelled_caught:
        raise _Refusal(408, "request_timeout", f"body not received within {BODY_READ_TIMEOUT:g}s")
    body = b"".join(chunks)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise _Refusal(
            400, "invalid_request", f"Content-Encoding {encoding!r}: only gzip is accepted"
        )
    # A gzip body may hold several members (concatenated gzip files): each is inflated,
    # the cap applies to them together, and anything after them that is not gzip is
    # refused rather than silently dropped.
    parts: list[bytes] = []
    size, rest = 0, body
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise _Refusal(400, "invalid_request", f"body is not valid gzip: {exc}") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise _Refusal(
                400,
                "invalid_request",
                f"request body over {limit} bytes (500 KB) once decompressed",
            )
        if not inflater.eof:
            raise _Refusal(400, "invalid_request", "body is not valid gzip: truncated")
        parts.append(part)
        rest = inflater.unused_data
    return b"".join(parts)
