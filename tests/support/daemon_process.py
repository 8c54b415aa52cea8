"""A real leadsync daemon in a subprocess: free loopback ports, its own temporary directory.

Tests that need to crash, signal or restart the daemon use this; it is the daemon
exactly as `leadsync run` starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from storage.sqlite_connect import log_path, uri

WRITE_KEYS = {"web": "web-write-key", "backend": "backend-write-key"}
SOURCES = f"""
[sources.web]
type = "http"
kind = "web"
write_key = "{WRITE_KEYS["web"]}"

[sources.backend]
type = "http"
kind = "server"
write_key = "{WRITE_KEYS["backend"]}"
"""
"""The two sources every test daemon has: web (kind web) and backend (kind server)."""


_handed_out: set[int] = set()
"""Every port this process has handed out: none is handed out twice."""


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that nothing listens on now.

    All of them are bound at once before any is released, so the kernel cannot give
    one port twice (binding one socket at a time could, and a daemon's HTTP and admin
    ports once came out the same). A port this process handed out before is not handed
    out again, so two daemons of one test never share one either. Another process can
    still take a port between this and the daemon's bind; the daemon then stops at once
    with exit 71 and "another process has that port", and the test fails saying so.
    """
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in _handed_out:
                ports.append(port)
    _handed_out.update(ports)
    return ports


def free_port() -> int:
    """One loopback port, as `free_ports` hands them out."""
    return free_ports(1)[0]


class DaemonProcess:
    def __init__(
        self,
        directory: Path,
        extra_config: str = "",
        http_config: str = "",
        admin_config: str = "",
    ) -> None:
        """`extra_config` is appended after the sources (new tables only); `http_config`
        and `admin_config` go inside [http] and [admin], which TOML does not let a later
        table reopen."""
        self.directory = directory
        self.http_port, self.admin_port = free_ports(2)
        self.config_path = directory / "daemon.toml"
        self.log_path = directory / "daemon.log"
        self.database = directory / "var" / "leadsync.db"
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(
            f"""
[daemon]
data_dir = "{directory / "var"}"
log_format = "json"
log_level = "info"
shutdown_grace = "20s"

[http]
listen = "127.0.0.1:{self.http_port}"
{http_config}

[admin]
listen = "127.0.0.1:{self.admin_port}"
{admin_config}

{SOURCES}
{extra_config}
"""
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)],
                cwd=self.directory,
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.process.returncode} before it was ready:\n"
                    + self.log()
                )
            try:
                if self.admin("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def admin(
        self,
        path: str,
        method: str = "GET",
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5,
    ) -> tuple[int, Any]:
        """(status, JSON or text) from the admin API; `token` is sent as a bearer token.
        Without `headers`, a POST is sent as the CLI sends it: JSON, an empty body. With
        them, exactly those (an empty body if they name a Content-Type, else none)."""
        if headers is None:
            headers = {"Content-Type": "application/json"} if method == "POST" else {}
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = b"" if "Content-Type" in sent else None
        request = urllib.request.Request(self.admin_url + path, data, sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        text = body.decode()
        return status, json.loads(text) if text.startswith(("{", "[")) else text

    def kill(self) -> None:
        """SIGKILL: no drain, no checkpoint, no goodbye."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def rss_bytes(self) -> int:
        """Resident memory of the daemon process right now (Linux /proc)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the daemon's database directly, as an operator with sqlite3 would,
        with its event log attached."""
        with closing(
            sqlite3.connect(uri(self.database, readonly=True), uri=True, timeout=10)
        ) as db:
            db.execute(
                "ATTACH DATABASE ? AS log",
                (uri(log_path(self.database), readonly=True),),
            )
            return db.execute(sql, params).fetchall()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for (body,) in self.query("SELECT body FROM events ORDER BY seq")]


def destination(name: str, kind: str, **settings: Any) -> str:
    """A `[destinations.NAME]` table for a daemon's `extra_config`: plain settings as
    keys, dict ones as sub-tables (`retry={"attempts": 3}`)."""
    lines = [f"\n[destinations.{name}]", f'type = "{kind}"']
    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    for key, value in settings.items():
        if key not in tables:
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    for key, table in tables.items():
        lines.append(f"[destinations.{name}.{key}]")
        lines += [f"{k} = {v!r}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s")
