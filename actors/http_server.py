"""What both HTTP listeners (ingestion and admin) add to aiohttp's server.

- Idle connections close after `keepalive_timeout` (aiohttp's default is an hour).
- A request's line and headers must arrive within `header_timeout` of their first
  byte; aiohttp has no such bound, so a client trickling a byte a second (slowloris)
  held a connection for as long as it liked.
- A malformed request is one log line and a count in
  `leadsync_http_bad_requests_total`, not aiohttp's traceback.
- `Server: leadsync` on every answer, aiohttp's own included: no versions to look up.
- An address that cannot be bound (a port in use) stops the daemon with one line and
  exit 71, rather than a restart loop that cannot help.

aiohttp offers no hook for the last three, so `Runner` builds its connections from a
subclass of aiohttp's `RequestHandler`; the private attributes it reads are named in
the methods that read them (checked against aiohttp 3.14).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from actors.exit_codes import EXIT_CANNOT_LISTEN
from actors.metrics import Metrics
from actors.runtime import Fatal

log = structlog.get_logger(__name__)


SERVER = "leadsync"
"""The Server header: the name, no version."""


class CannotListen(Fatal):
    """The listener's address cannot be bound: in use, not this machine's, not allowed."""

    exit_code = EXIT_CANNOT_LISTEN


async def listen(runner: web.AppRunner, what: str, address: str, **kwargs: Any) -> None:
    """Bind and start serving `address` ("host:port"); CannotListen if the system
    refuses it. `what` names the listener and its config key for the message."""
    host, _, port = address.rpartition(":")
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port), **kwargs).start()
    except OSError as exc:
        # A name that does not resolve is a gaierror, whose (negative) errno is not one
        # os.strerror knows: "Unknown error -2".
        if isinstance(exc, socket.gaierror):
            reason = f"{exc.strerror or exc}; the host name does not resolve"
        else:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = "; another process has that port" if exc.errno == errno.EADDRINUSE else ""
        raise CannotListen(f"the {what} cannot listen on {address}: {reason}{hint}") from None


@dataclass(frozen=True)
class Listener:
    """One listener's connection rules, and how it phrases an error answer."""

    name: str
    """`http` or `admin`: the label in logs and metrics."""
    keepalive_timeout: float
    header_timeout: float
    metrics: Metrics
    error: Callable[[int, str], web.Response]
    """(status, message) -> the answer, in the listener's own JSON shape."""


class Runner(web.AppRunner):
    """`web.AppRunner` whose connections follow `listener`'s rules."""

    def __init__(self, app: web.Application, listener: Listener, **kwargs: Any) -> None:
        super().__init__(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=listener.keepalive_timeout,
            **kwargs,
        )
        self._listener = listener

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the app
        return _Server(made, self._listener)


class _Server(web.Server):
    def __init__(self, made: web.Server, listener: Listener) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,  # the RequestHandler options aiohttp collected
        )
        self._listener = listener

    def __call__(self) -> RequestHandler:
        return _Connection(self, self._listener, loop=self._loop, **self._kwargs)


class _Connection(RequestHandler):
    def __init__(self, manager: web.Server, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count  # aiohttp counts each request line+headers parsed
        super().data_received(data)
        if self._request_count != parsed:
            self._stop_header_timer()
        elif (
            data
            and self._header_timer is None
            and not self._request_in_progress
            and not self._messages
        ):
            # Bytes of a request whose headers are not complete yet. Body bytes arrive
            # with a request in progress (or queued in _messages) and start nothing.
            self._header_timer = self._loop.call_later(
                self._listener.header_timeout, self._headers_too_slow
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # Only while aiohttp waits for the next request (its _waiter); a request being
        # answered is left alone, and the next byte after it starts a new timer.
        if self._waiter is None or self._waiter.done() or self._messages:
            return
        listener = self._listener
        listener.metrics.http_bad_requests.labels(listener.name, "header_timeout").inc()
        log.info(
            "connection closed: request headers too slow",
            listener=listener.name,
            timeout=listener.header_timeout,
            peer=_peer(self),
        )
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused: one line, a count, a JSON 400, and the
        connection closed (aiohttp cannot tell where the next request starts)."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # a bug: traceback
        listener = self._listener
        listener.metrics.http_bad_requests.labels(listener.name, "malformed").inc()
        # llhttp's messages draw a caret under the bad byte on further lines.
        reason = " ".join((message or exc.message or type(exc).__name__).split())[:200]
        log.info("malformed request", listener=listener.name, reason=reason, peer=_peer(self))
        response = listener.error(status, f"malformed request: {reason}")
        response.force_close()
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if not resp.prepared:
            resp.headers[hdrs.SERVER] = SERVER
        return await super().finish_response(request, resp, start_time)


def _peer(connection: RequestHandler) -> str | None:
    peer = connection.peername
    return None if peer is None else str(peer[0] if isinstance(peer, tuple) else peer)
