from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import structlog

from actors import logs
from tests.support.daemon_process import DaemonProcess
from tests.support.ingestion import IngestionApi, serving
from tests.support.logfiles import start_merger

# In-process tests log as the daemon does in production: one JSON line per event,
# which pytest shows only for a failing test.
logs.configure("info", "json")


@pytest.fixture(autouse=True)
def _logs_as_configured_here() -> Iterator[None]:
    """A command run in-process configures logging for itself (warnings only): the
    next test logs as before it again. The very configuration is put back, not a new
    one alike: loggers already used keep the processors they were first used with."""
    before = structlog.get_config()
    yield
    if structlog.get_config() != before:
        structlog.configure(**before)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Build daemons in the test's temporary directory; none outlives the test."""
    made: list[DaemonProcess] = []

    def make(
        extra_config: str = "", name: str = "daemon", http_config: str = "", admin_config: str = ""
    ) -> DaemonProcess:
        directory = tmp_path / name
        directory.mkdir()
        daemon = DaemonProcess(directory, extra_config, http_config, admin_config)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop_quietly()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A started daemon with two sources: web (kind web) and backend (kind server)."""
    return make_daemon().start()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[IngestionApi]:
    """The ingestion API served in process, its log in the test's temporary directory:
    for tests of how a request is answered, which need no daemon process."""
    async with serving(tmp_path) as served:
        yield served


@pytest.fixture
def merger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """The merger's worker on tmp_path/leadsync.db; calling it applies the whole log."""
    yield from start_merger(tmp_path / "leadsync.db", monkeypatch)
