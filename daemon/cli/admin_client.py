"""Asking the running daemon: its admin API over HTTP, with the config's address and
token, and one way of saying why it could not be asked."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from daemon.config import LoadedConfig

ADMIN_TIMEOUT = 10.0


class NobodyListens(Exception):
    """Nothing accepts connections at the admin address: no daemon runs there."""


def admin_get(args: argparse.Namespace, loaded: LoadedConfig, path: str) -> Any:
    """The JSON body of a GET, whatever its status; None if unreachable (said why)."""
    answer = admin_call(args, loaded, path)
    return None if answer is None else answer[1]


def admin_call(
    args: argparse.Namespace,
    loaded: LoadedConfig,
    path: str,
    method: str = "GET",
    timeout: float = ADMIN_TIMEOUT,
    quiet: bool = False,
    body: Any = None,
    silent: bool = False,
) -> tuple[int, Any] | None:
    """(status, JSON body) from the admin API; None, after saying why, if unreachable.
    With `quiet`, a refused connection raises NobodyListens instead: no daemon runs
    there, and the caller has a way to do without one. With `silent`, nothing is said
    (a poll beside a spinner)."""
    say = _no_say if silent else _say
    base = args.admin
    if base is None:
        listen = loaded.config.admin.listen
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "", "::") else listen.host
        host = f"[{host}]" if ":" in host else host
        base = f"http://{host}:{listen.port}"
    url = base.rstrip("/") + path
    # The admin API takes actions only as JSON (an empty body), so a browser's form
    # or no-cors fetch cannot start one.
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    token = loaded.config.admin.token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = (b"" if body is None else json.dumps(body).encode()) if method == "POST" else None
    request = urllib.request.Request(url, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            answer: tuple[int, Any] = exc.code, json.loads(text)
        except ValueError:
            answer = exc.code, {"error": text.strip() or exc.reason}
        if exc.code in (401, 403, 421):
            why = answer[1].get("error") if isinstance(answer[1], dict) else answer[1]
            say(f"leadsync: the admin API at {url} refused: {why}")
            hint = (
                f"admin.token in {loaded.path} must be the daemon's (an env:NAME token needs "
                "NAME set for this command too)"
                if exc.code == 401
                else "reach it at its admin.listen address, or add the name to admin.hosts"
            )
            say(f"  {hint}")
            return None
        return answer
    except (urllib.error.URLError, OSError) as exc:
        if quiet and isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            raise NobodyListens from None
        reason = getattr(exc, "reason", exc)
        say(f"leadsync: cannot reach the admin API at {url}: {reason}")
        say("  is the daemon running, and is --config the one it runs with?")
        return None


def progress_of(
    args: argparse.Namespace, loaded: LoadedConfig, where: tuple[str, ...], unit: str
) -> Callable[[], str | None]:
    """How far the daemon is with a piece of work, as /status has it at `where`
    ({unit: done, "of": total}): "5,000 of 20,000 profiles", or None."""

    def said() -> str | None:
        # Silent: it runs beside a spinner every half second, and a slow answer or an
        # odd one only means no count this time.
        try:
            answer = admin_call(args, loaded, "/status", timeout=2.0, silent=True)
        except Exception:
            return None
        if answer is None or answer[0] != 200:
            return None
        found: Any = answer[1]
        for key in where:
            found = found.get(key) if isinstance(found, dict) else None
        if not isinstance(found, dict) or not found.get("of"):
            return None
        return f"{found[unit]:,} of {found['of']:,} {unit}"

    return said


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _no_say(text: str) -> None:
    return
