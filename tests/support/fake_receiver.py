"""A destination's far end for tests: a real HTTP server on loopback that records what
arrives and fails on cue, so a sender meets 429s, 500s, hangs and dropped connections
over a real socket rather than through a mock.

    async with FakeReceiver() as receiver:             # 127.0.0.1, a free port
        url = receiver.url + "/hook"                   # any path, any method
        receiver.script(throttle(2), server_error())   # the next two requests fail
        receiver.fail_when(lambda record: record.get("email") == "bad@example.com")
        ...                                            # the code under test sends
        await receiver.wait_until(lambda: len(receiver.requests) >= 3)
        receiver.requests[0].headers["X-Leadsync-Signature"], receiver.records()

Every request is recorded in `requests` (a `Received`: monotonic arrival time, method,
path, headers, raw body, parsed JSON, and the status it got) before it is answered,
whatever the answer. It is generic about the shape: a record is an entry of the body's
"profiles" (webhook) or "batch" (Segment's /v1/batch) list.

How a request is answered, first match wins:
1. the next behaviour queued by `script()` (one per request, whatever its path);
2. the first `fail_when` rule whose predicate holds for one of its records: the records
   it holds for are rejected, with the rule's `answer` (webhook style by default);
3. `fallback`: `ok()` unless a test sets another (say `respond(401)` for a receiver
   that never accepts).

Behaviours: `ok`, `respond` (any status, body and headers), `throttle` (429 with
Retry-After), `server_error`, `refuse` (400 naming no record), `hang` (no answer until
the receiver stops, for client timeouts), `drop` (close the connection without an
answer), `webhook_rejected` (2xx with per-record errors), and leadsync's own ingestion
API's answers to a /v1/batch with bad messages: `leadsync_invalid` (400, every message
bad) and `leadsync_partial` (200 listing the bad ones). A test can write its own:
`Behaviour(name, respond)`, with `respond` an async function of the aiohttp request
returning a response.

Reading what arrived: `requests` (every request, see `Received`: `.json`, `.body`,
`.headers`, `.records`, `.basic_auth`, `.answer`, `.status`, `.rejected`, `.taken`);
`records()`, the records that 2xx answers took, repeats included; `scripted`, how many
scripted behaviours are still unused; `await wait_until(condition)` to wait for the code
under test; `max_in_window(interval)`, the most requests that arrived within any
`interval` seconds, to prove a rate limiter holds. Arrival times carry loopback jitter
of a millisecond or so: compare against a window a little shorter than the limiter's.

A test that blocks (on a subprocess, on polls) runs one in a thread of its own with
`receiver_thread()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

Respond = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Behaviour:
    name: str
    """Shown in `Received.answer`, so a failing test says what each request got."""
    respond: Respond


@dataclass(frozen=True)
class Rejection:
    """One record a receiver refuses; `index` is its place in the request's records."""

    index: int
    error: str = "rejected by the fake receiver"
    retryable: bool = False
    """Only the webhook style says it; leadsync's answers have no such field."""


@dataclass
class Received:
    at: float
    """time.monotonic() when the request arrived."""
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    """As sent, after any gzip is undone: what a signature covers."""
    json: Any
    """The parsed body, or None if it is not JSON."""
    answer: str = ""
    """The name of the behaviour that answered."""
    status: int | None = None
    """The status sent; None until answered, and if the answer could not be sent
    (dropped, or the client gave up waiting)."""
    rejected: list[int] = field(default_factory=list)
    """Indexes of the records the answer refused."""

    @property
    def records(self) -> list[Any]:
        """The entries of "profiles" (webhook) or "batch" (Segment), else none."""
        if isinstance(self.json, dict):
            for key in ("profiles", "batch"):
                if isinstance(self.json.get(key), list):
                    return list(self.json[key])
        return []

    @property
    def taken(self) -> list[Any]:
        """The records a 2xx answer that reached the client accepted."""
        if self.status is None or not 200 <= self.status < 300:
            return []
        return [r for i, r in enumerate(self.records) if i not in self.rejected]

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) from Basic auth: Segment's clients send the write key as
        the user name."""
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(credentials).decode().partition(":")
        return user, password


WAIT_LIMIT = 10.0
"""Seconds `wait_until` waits at most."""

_RECEIVED = web.RequestKey("received", Received)
_STOPPING = web.AppKey("stopping", asyncio.Event)


def ok() -> Behaviour:
    """200 with Segment's success body, which a webhook sender reads as all delivered."""
    return respond(200, {"success": True})


def respond(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Behaviour:
    """Any answer: `body` is sent as is if a str, as JSON otherwise, and None sends none."""

    async def answer(request: web.Request) -> web.Response:
        if body is None:
            return web.Response(status=status, headers=headers)
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return Behaviour(str(status), answer)


def throttle(retry_after: float | str | None = 1) -> Behaviour:
    """429 with Retry-After: seconds, a str sent as is (an HTTP-date, say), or None for
    no header."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
    return respond(429, {"success": False, "code": "rate_limited"}, headers)


def server_error(status: int = 500) -> Behaviour:
    return respond(status, {"success": False, "code": "internal_error"})


def refuse(message: str = "invalid request") -> Behaviour:
    """400 that names no record: the sender must find the bad one itself."""
    return respond(400, {"success": False, "code": "invalid_request", "message": message})


def hang(seconds: float | None = None) -> Behaviour:
    """No answer for `seconds` (None: until the receiver stops), then ok: for a
    client's timeout, which must be shorter."""

    async def answer(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request.app[_STOPPING].wait(), seconds)
        return await ok().respond(request)

    return Behaviour("hang", answer)


def drop() -> Behaviour:
    """Close the connection without a word, as a crashing server or a proxy would."""

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()  # aiohttp writes nothing to a closed transport

    return Behaviour("drop", answer)


def _rejecting(name: str, rejections: tuple[Rejection, ...], status: int, body: Any) -> Behaviour:
    async def answer(request: web.Request) -> web.Response:
        request[_RECEIVED].rejected = [r.index for r in rejections]
        return web.json_response(body, status=status)

    return Behaviour(f"{name}{[r.index for r in rejections]}", answer)


def webhook_rejected(*rejections: Rejection) -> Behaviour:
    """200 `{"rejected": [{"index", "error", "retryable"}]}`: the webhook protocol's
    per-record errors (actors/destinations/webhook.py)."""
    rejected = [{"index": r.index, "error": r.error, "retryable": r.retryable} for r in rejections]
    return _rejecting("webhook_rejected", rejections, 200, {"rejected": rejected})


def leadsync_invalid(*rejections: Rejection) -> Behaviour:
    """400 as leadsync's /v1/batch answers when no message in it is valid
    (actors/http_source.py): the message names the first bad one ("batch[i]: reason"),
    "rejected" lists each. Segment's clients drop the batch on a 400; a sender that
    reads the body can find the bad records instead of splitting."""
    body = {
        "success": False,
        "code": "invalid_request",
        "message": f"batch[{rejections[0].index}]: {rejections[0].error}",
        "rejected": [{"index": r.index, "message": r.error} for r in rejections],
    }
    return _rejecting("leadsync_invalid", rejections, 400, body)


def leadsync_partial(*rejections: Rejection) -> Behaviour:
    """200 as leadsync's /v1/batch answers when only some messages are bad: the others
    were stored, "rejected" lists the bad ones."""
    body = {
        "success": True,
        "rejected": [{"index": r.index, "message": r.error} for r in rejections],
    }

    async def answer(request: web.Request) -> web.StreamResponse:
        accepted = len(request[_RECEIVED].records) - len(rejections)
        return await _rejecting(
            "leadsync_partial", rejections, 200, {**body, "accepted": accepted}
        ).respond(request)

    return Behaviour(f"leadsync_partial{[r.index for r in rejections]}", answer)


@dataclass(frozen=True)
class _Rule:
    predicate: Callable[[Any], bool]
    error: str
    retryable: bool
    answer: Callable[..., Behaviour]


class FakeReceiver:
    def __init__(self) -> None:
        self.url = ""
        """http://127.0.0.1:PORT, once started; any path is served."""
        self.requests: list[Received] = []
        self.fallback = ok()
        """How a request is answered when nothing is scripted and no rule matches."""
        self._script: list[Behaviour] = []
        self._rules: list[_Rule] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._changed = asyncio.Condition()

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[_STOPPING] = self._stopping
        app.router.add_route("*", "/{path:.*}", self._handle)
        # A short grace: hung handlers end when _stopping is set, nothing else lingers.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, one per coming request, after any already queued."""
        self._script.extend(behaviours)

    @property
    def scripted(self) -> int:
        """Behaviours queued and not yet used."""
        return len(self._script)

    def fail_when(
        self,
        predicate: Callable[[Any], bool],
        error: str = "rejected by the fake receiver",
        *,
        retryable: bool = False,
        answer: Callable[..., Behaviour] = webhook_rejected,
    ) -> None:
        """Reject the records (dicts from "profiles" or "batch") `predicate` holds for,
        in every request the script does not answer. `answer` builds the response from
        the Rejections: webhook_rejected, leadsync_invalid or leadsync_partial."""
        self._rules.append(_Rule(predicate, error, retryable, answer))

    def clear_rules(self) -> None:
        """Drop every `fail_when` rule: the far end is fixed."""
        self._rules.clear()

    def records(self) -> list[Any]:
        """Every record taken (`Received.taken`), in arrival order, repeats included."""
        return [record for received in self.requests for record in received.taken]

    def max_in_window(self, interval: float, path: str | None = None) -> int:
        """The most requests (to `path`, if given) that arrived within any span of
        `interval` seconds."""
        times = sorted(r.at for r in self.requests if path is None or r.path == path)
        most = first = 0
        for last, at in enumerate(times):
            while at - times[first] >= interval:
                first += 1
            most = max(most, last - first + 1)
        return most

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition` holds, checked as each request arrives and as it is
        answered. TimeoutError after WAIT_LIMIT seconds, so a broken test fails rather
        than hangs; wrap it in asyncio.timeout() to wait less."""
        async with asyncio.timeout(WAIT_LIMIT), self._changed:
            await self._changed.wait_for(condition)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()
        body = await request.read()
        try:
            parsed: Any = msgspec.json.decode(body)
        except msgspec.DecodeError:
            parsed = None
        received = Received(
            at, request.method, request.path, CIMultiDict(request.headers), body, parsed
        )
        request[_RECEIVED] = received
        self.requests.append(received)
        behaviour = self._choose(received)
        received.answer = behaviour.name
        await self._notify()
        response = await behaviour.respond(request)
        if request.transport is not None and not request.transport.is_closing():
            received.status = response.status
        await self._notify()
        return response

    def _choose(self, received: Received) -> Behaviour:
        if self._script:
            return self._script.pop(0)
        for rule in self._rules:
            matched = [
                Rejection(i, rule.error, rule.retryable)
                for i, record in enumerate(received.records)
                if rule.predicate(record)
            ]
            if matched:
                return rule.answer(*matched)
        return self.fallback

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


@contextmanager
def receiver_thread() -> Iterator[FakeReceiver]:
    """A FakeReceiver on its own event loop in a thread, for tests that block on
    subprocesses and polls."""
    receiver = FakeReceiver()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def serve() -> None:
        nonlocal stop, loop
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        async with receiver:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield receiver
    finally:
        assert loop is not None
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
