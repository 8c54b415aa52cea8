"""The `leadsync` command."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import structlog
from rich.console import Console
from rich.table import Table

from daemon import __version__, logs
from daemon.config import ConfigError, LoadedConfig, load

ADMIN_TIMEOUT = 10.0
REBUILD_TIMEOUT = 3600.0
"""Seconds: a rebuild replays the whole log (about a minute per million events)."""
EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2
EXIT_USAGE = 64
"""EX_USAGE: the command line asked for something malformed."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the daemon's admin API could not be reached."""
EXIT_STORAGE = 73
"""EX_CANTCREAT: the database could not be opened."""
EXIT_TEMPFAIL = 75
"""EX_TEMPFAIL: another rebuild is running; try again when it is done."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        # Only the daemon itself, and the command that vets its config, need secrets.
        loaded = load(args.config, need_secrets=args.command in ("run", "check-config"))
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

    profile = command("profile", "show one person's profile: identities, traits, activity")
    profile.add_argument(
        "id",
        metavar="ID",
        help="user_id:VALUE, anonymous_id:VALUE, email:VALUE, KIND:VALUE for an external id, "
        "or a profile id (prf_...)",
    )
    profile.add_argument("--admin", metavar="URL", help="admin API base URL (default: from config)")
    profile.add_argument("--events", type=int, default=10, help="how many recent events to show")
    profile.add_argument("--json", action="store_true", help="print the raw JSON")
    profile.set_defaults(handler=_profile)

    identity = commands.add_parser("identity", help="manage the identity graph")
    identity_commands = identity.add_subparsers(dest="identity_command", metavar="COMMAND")
    identity_commands.required = True
    rebuild_help = (
        "recompute the identity graph from the event log with the config's rules, "
        "replacing the old graph atomically (safe while the daemon runs)"
    )
    rebuild = identity_commands.add_parser("rebuild", help=rebuild_help, description=rebuild_help)
    rebuild.add_argument(
        "--config",
        metavar="PATH",
        help="daemon.toml to use (default: ./daemon.toml, else the embedded default)",
    )
    rebuild.add_argument("--admin", metavar="URL", help="admin API base URL (default: from config)")
    rebuild.set_defaults(handler=_identity_rebuild)
    return parser


def _run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    from daemon.app import CannotOpenStorage, CannotScore, serve  # only `run` needs these

    try:
        return anyio.run(serve, config, loaded.path)
    except CannotOpenStorage as exc:
        structlog.get_logger("daemon").critical("cannot open storage", error=str(exc))
        return EXIT_STORAGE
    except CannotScore as exc:
        structlog.get_logger("daemon").critical("no usable scoring model", error=str(exc))
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    print(f"{loaded.path}: OK")
    print(f"  data_dir   {config.daemon.data_dir}")
    print(f"  ingest API {config.http.listen}")
    print(f"  admin API  {config.admin.listen}")
    kinds = ["user_id", "email", *(x.kind for x in config.identity.external_ids), "anonymous_id"]
    limits = ", ".join(f"{kind} {config.identity.limit(kind) or 'no cap'}" for kind in kinds)
    print(f"  identity   at most {limits} a profile")
    for name, source in config.sources.items():
        key = "set" if source.write_key else "generated on first start"
        print(f"  source     {name} (type http, kind {source.kind}, write key {key})")
    return 0


def _admin_get(args: argparse.Namespace, loaded: LoadedConfig, path: str) -> Any:
    answer = _admin_call(args, loaded, path)
    return None if answer is None else answer[1]


class _NobodyListens(Exception):
    pass


def _admin_call(
    args: argparse.Namespace,
    loaded: LoadedConfig,
    path: str,
    method: str = "GET",
    timeout: float = ADMIN_TIMEOUT,
    quiet: bool = False,
) -> tuple[int, Any] | None:
    """(status, JSON body) from the admin API; None, after saying why, if unreachable.
    With `quiet`, a refused connection raises _NobodyListens instead: no daemon runs
    there, and the caller has a way to do without one."""
    base = args.admin
    if base is None:
        listen = loaded.config.admin.listen
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "", "::") else listen.host
        base = f"http://{host}:{listen.port}"
    url = base.rstrip("/") + path
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"error": text.strip() or exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        if quiet and isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            raise _NobodyListens from None
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
    for name, consumer in status.get("consumers", {}).items():
        console.print(
            f"{name}: applied up to event {consumer['applied']:,}, "
            f"{consumer['lag_events']:,} behind"
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


def _profile(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    kind, sep, value = args.id.partition(":")
    if not sep:
        if not args.id.startswith("prf_"):
            print(
                f"leadsync: {args.id!r} is neither KIND:VALUE (user_id:, anonymous_id:, email:) "
                "nor a profile id (prf_...)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        kind, value = "profile", args.id
    if not value:
        print(f"leadsync: {args.id!r} has no value after the kind", file=sys.stderr)
        return EXIT_USAGE
    path = f"/v1/profiles/{quote(kind, safe='')}/{quote(value, safe='')}?events={args.events}"
    answer = _admin_call(args, loaded, path)
    if answer is None:
        return EXIT_UNAVAILABLE
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_NOT_FOUND if status == 404 else EXIT_USAGE
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    console = Console()
    console.print(
        f"[bold]{body['profile_id']}[/]  {body['events']:,} events  "
        f"first seen {body['first_seen']}  last seen {body['last_seen']}"
    )
    if body["merged_ids"]:
        console.print(f"also known as {', '.join(body['merged_ids'])}")
    identities = Table("kind", "identity", "first seen", title="identities")
    for identity in body["identities"]:
        identities.add_row(identity["kind"], identity["value"], identity["first_seen"])
    console.print(identities)
    traits = Table("trait", "value", title="traits")
    for name, value in body["traits"].items():
        traits.add_row(name, json.dumps(value) if not isinstance(value, str) else value)
    console.print(traits)
    sources = ", ".join(f"{name} {count:,}" for name, count in body["sources"].items())
    console.print(f"events by source: {sources}")
    if body["account"]:
        account = body["account"]
        console.print(f"account {account['group_id']}: {json.dumps(account['traits'])}")
    events = Table("time", "source", "type", "event", title="recent events")
    for event in body["last_events"]:
        name = event.get("event") or event.get("name") or event.get("groupId") or ""
        events.add_row(event["timestamp"], event["source"], event["type"], name)
    console.print(events)
    return 0


def _identity_rebuild(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Ask the running daemon to rebuild (as its own user, with its rules); if none
    answers, rebuild the database here with this config's rules."""
    try:
        answer = _admin_call(
            args, loaded, "/v1/identity/rebuild", "POST", REBUILD_TIMEOUT, quiet=True
        )
    except _NobodyListens:
        return _rebuild_here(loaded)
    if answer is None:
        return EXIT_UNAVAILABLE  # a daemon may be there but did not answer: do not race it
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_TEMPFAIL if status == 409 else EXIT_STORAGE
    _print_rebuild(body, "the running daemon")
    return 0


def _rebuild_here(loaded: LoadedConfig) -> int:
    from rich.progress import Progress

    from actors.identity.rebuild import RebuildRunning, rebuild
    from daemon.app import DATABASE_NAME

    config = loaded.config
    database = Path(config.daemon.data_dir) / DATABASE_NAME
    if not database.is_file():
        print(f"leadsync: no database at {database} (data_dir from {loaded.path})", file=sys.stderr)
        return EXIT_STORAGE
    logs.configure("warning", config.daemon.log_format)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replaying the event log", total=None)
        try:
            report = rebuild(
                database,
                config.identity,
                config.storage.busy_timeout,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
        except sqlite3.Error as exc:
            print(f"leadsync: rebuild failed, the old graph stays: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        except RebuildRunning as exc:
            print(f"leadsync: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL
    _print_rebuild(vars(report), f"{database}, no daemon answering")
    return 0


def _print_rebuild(report: dict[str, Any], where: str) -> None:
    print(
        f"rebuilt the identity graph ({where}) from {report['events']:,} events in "
        f"{report['seconds']:.1f}s: {report['profiles_before']:,} profiles before, "
        f"{report['profiles_after']:,} after ({report['merges']:,} merges, "
        f"{report['links_dropped']:,} links refused by the rules)"
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


if __name__ == "__main__":
    sys.exit(main())
