"""systemd integration: Type=notify readiness, watchdog pings, stop notice.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the same code path runs
in a terminal, in tests and under the service manager.
"""

from __future__ import annotations

import os

import anyio
import sdnotify
import structlog

log = structlog.get_logger(__name__)


class Systemd:
    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec, as systemd recommends, if the watchdog is on for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if self._notifier is None or not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    async def keep_watchdog_fed(self) -> None:
        """Ping while the event loop runs: a wedged loop stops the pings and systemd
        restarts the service."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        log.info("systemd watchdog enabled", ping_every=interval)
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval)
