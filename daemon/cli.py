"""The `leadsync` command."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

import anyio
import structlog
from rich.console import Console
from rich.table import Table

from daemon import __version__, logs
from daemon.config import ConfigError, LoadedConfig, load

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the daemon's admin API could not be reached."""
EXIT_STORAGE = 73
"""EX_CANTCREAT: the database could not be opened."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        loaded = load(args.config)
    except ConfigError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    code: int = args.handler(args, loaded)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadsync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"leadsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            metavar="PATH",
            help="daemon.toml to use (default: ./daemon.toml, else the embedded default)",
        )
        return sub

    run = command("run", "run the daemon in the foreground")
    run.set_defaults(handler=_run)

    check = command("check-config", "validate the config and say what it sets up")
    check.set_defaults(handler=_check_config)

    status = command("status", "show the running daemon's actors, queues and counts")
    status.add_argument("--admin", metavar="URL", help="admin API base URL (default: from config)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(handler=_status)

    quarantine = command("quarantine", "show messages the ingestion API refused")
    quarantine.add_argument(
        "--admin", metavar="URL", help="admin API base URL (default: from config)"
    )
    quarantine.add_argument("--limit", type=int, default=20, help="how many, newest first")
    quarantine.add_argument("--json", action="store_true", help="print the raw JSON")
    quarantine.set_defaults(handler=_quarantine)
    return parser


def _run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    from daemon.app import CannotOpenStorage, serve  # only `run` pays for these imports

    try:
        return anyio.run(serve, config, loaded.path)
    except CannotOpenStorage as exc:
        structlog.get_logger("daemon").critical("cannot open storage", error=str(exc))
        return EXIT_STORAGE


def _check_config(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    print(f"{loaded.path}: OK")
    print(f"  data_dir   {config.daemon.data_dir}")
    print(f"  ingest API {config.http.listen}")
    print(f"  admin API  {config.admin.listen}")
    for name, source in config.sources.items():
        key = "set" if source.write_key else "generated on first start"
        print(f"  source     {name} (type http, kind {source.kind}, write key {key})")
    return 0


def _admin_get(args: argparse.Namespace, loaded: LoadedConfig, path: str) -> Any:
    base = args.admin
    if base is None:
        listen = loaded.config.admin.listen
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "", "::") else listen.host
        base = f"http://{host}:{listen.port}"
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"leadsync: cannot reach the admin API at {url}: {reason}", file=sys.stderr)
        print("  is the daemon running, and is --config the one it runs with?", file=sys.stderr)
        return None


def _status(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    status = _admin_get(args, loaded, "/status")
    if status is None:
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    console = Console()
    ready = "[green]ready[/]" if status["ready"] else "[yellow]not ready[/]"
    console.print(
        f"leadsync {status['version']}  {ready}  up {_duration(status['uptime_seconds'])}  "
        f"ingest {status['ingest']['listen']}"
    )
    console.print(
        f"events stored {status['events_stored']:,}   pending {status['pending_events']:,}   "
        f"backlog {status['backlog_events']:,}   quarantined {status['quarantined']:,}"
    )
    table = Table("actor", "role", "state", "restarts", "queue", "last error")
    for actor in status["actors"]:
        queue = (
            f"{actor['queue_depth']}/{actor['queue_capacity']}"
            if actor["queue_capacity"] is not None
            else "-"
        )
        state = actor["state"]
        colour = {"running": "green", "backoff": "yellow", "failed": "red"}.get(state, "white")
        table.add_row(
            actor["name"],
            actor["role"],
            f"[{colour}]{state}[/]",
            str(actor["restarts"]),
            queue,
            actor["last_error"] or "",
        )
    console.print(table)
    return 0


def _quarantine(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    answer = _admin_get(args, loaded, f"/quarantine?limit={args.limit}")
    if answer is None:
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    console = Console()
    console.print(f"{answer['total']:,} quarantined messages (newest {len(answer['messages'])})")
    table = Table("id", "source", "received", "index", "reason", "message")
    for row in answer["messages"]:
        index = "" if row["batch_index"] is None else str(row["batch_index"])
        body = row["body"] if len(row["body"]) <= 80 else row["body"][:77] + "..."
        table.add_row(str(row["id"]), row["source"], row["received_at"], index, row["reason"], body)
    console.print(table)
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


if __name__ == "__main__":
    sys.exit(main())
