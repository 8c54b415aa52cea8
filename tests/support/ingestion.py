"""The ingestion API served in process: the HTTP source and the log writer as the daemon
wires them (daemon/ingestion.py), over a real SQLite file, on a loopback port.

A test of how a request is answered needs no daemon process: it gets the same
routes, the same listener rules (keep-alive, header timeout, one-line bad requests),
the same group commit, and asks in a millisecond what a process took a second to
start for. What needs a process (signals, kill -9, the CLI, the supervisor's actors in
/status and /metrics) stays with tests/support/daemon_process.py.

    async with serving(tmp_path) as api:
        answer = await api.send("/v1/track", {"userId": "u", "event": "E"})
        assert answer.status == 200
        assert [e["event"] for e in api.events()] == ["E"]

The sources are the test daemons' own (web and backend, tests/support/daemon_process.py),
so one test reads the same against either.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient

from actors.http_source import HttpSourceActor
from actors.lifecycle.suppressions import load_suppressions
from actors.metrics import Metrics
from actors.progress import LogProgress
from daemon.config import parse
from daemon.ingestion import Ingestion
from storage.sqlite import SqliteStorage
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_connect import log_path, uri
from tests.support.daemon_process import SOURCES
from tests.support.posting import WEB_KEY, Answer, answer, basic_auth


class _Serving(BaseTestServer):
    """aiohttp's test server around a runner made elsewhere: the HTTP source's own, with
    its listener rules, where aiohttp's TestServer would make a plain one."""

    def __init__(self, runner: web.AppRunner) -> None:
        super().__init__()
        self._made = runner

    async def _make_runner(self, **_: Any) -> web.AppRunner:
        # The options aiohttp's test server asks for (handler cancellation) are not the
        # daemon's: the runner is served as the HTTP source made it.
        return self._made


class IngestionApi:
    """The served API, the client that calls it, and what is behind it."""

    def __init__(
        self,
        client: TestClient[web.Request, None],
        storage: SqliteStorage,
        metrics: Metrics,
        database: Path,
    ) -> None:
        self.client = client
        self.storage = storage
        self.metrics = metrics
        """The registry the API and the log writer count in (what /metrics would show)."""
        self.database = database

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return str(self.client.make_url("")).rstrip("/")

    async def call(
        self,
        path: str,
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        key: str | None = WEB_KEY,
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> Answer:
        """One request, with the write key as Basic auth user name (as
        tests/support/posting.py's `call` sends it to a daemon). An async iterable body is
        sent with chunked transfer encoding, as a streaming client would."""
        sent = {"Content-Type": "application/json"}
        if key is not None:
            sent["Authorization"] = basic_auth(key)
        sent.update(headers or {})
        async with self.client.request(method, path, data=body, headers=sent) as response:
            raw = await response.read()
            received = {k.lower(): v for k, v in response.headers.items()}
            return answer(response.status, received, raw)

    async def send(self, path: str, message: Any, **kwargs: Any) -> Answer:
        """`message` as a JSON body to `path` (the options are `call`'s)."""
        return await self.call(path, json.dumps(message).encode(), **kwargs)

    def events(self) -> list[dict[str, Any]]:
        """The event log's bodies, in order, read from the file as an operator would."""
        with closing(sqlite3.connect(uri(log_path(self.database), readonly=True), uri=True)) as db:
            return [
                json.loads(body) for (body,) in db.execute("SELECT body FROM events ORDER BY seq")
            ]

    async def quarantined(self) -> int:
        """How many refused messages the quarantine holds (what /quarantine counts)."""
        total, _ = await self.storage.quarantined(limit=0)
        return total

    def sample(self, name: str, **labels: str) -> float:
        """One sample of the metrics; 0 for a series not created yet."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def serving(
    directory: Path,
    http_config: str = "",
    progress: LogProgress | None = None,
    log_writer: bool = True,
) -> AsyncIterator[IngestionApi]:
    """The API on a free loopback port, its log in `directory`. `http_config` goes in
    [http] (say `max_backlog = 50`); `progress` lets a test stand in for the consumers;
    without `log_writer`, nothing takes the submissions (a commit that never comes).

    No task group spans the yield, so a fixture may enter this in one task and leave it
    in another (pytest-asyncio sets a fixture up and tears it down in separate tasks)."""
    config = parse(f"[http]\n{http_config}\n{SOURCES}", str(directory / "daemon.toml"))
    database = directory / "leadsync.db"
    storage = await SqliteStorage.open(database)
    metrics = Metrics()
    ingestion = Ingestion(
        config,
        storage,
        progress or LogProgress(),
        metrics,
        load_suppressions(SqliteBackend(database), config.identity),
    )
    writing: asyncio.Task[None] | None = None
    try:
        if log_writer:
            started = asyncio.Event()
            writing = asyncio.create_task(ingestion.log_writer().run(started.set))
            await _started(started, writing)
        [(_, http_source)] = await ingestion.sources()  # the http kind's one listener
        listener = http_source()
        assert isinstance(listener, HttpSourceActor)
        server = _Serving(listener.runner())
        client: TestClient[web.Request, None] = TestClient(server)
        async with server, client:
            yield IngestionApi(client, storage, metrics, database)
    finally:
        ingestion.inbox.close()
        if writing is not None:
            await writing  # drained; raises what ended it otherwise
        await storage.close()


async def _started(started: asyncio.Event, running: asyncio.Task[None]) -> None:
    """Until the actor says it is ready; its error if it fails first."""
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait([waiting, running], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        waiting.cancel()
        running.result()
        raise AssertionError("the log writer ended before it was ready")
