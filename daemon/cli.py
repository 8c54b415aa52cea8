"""The `leadsync` command."""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import msgspec
import structlog
from rich.console import Console
from rich.table import Table

from actors.exit_codes import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_FAILURE,
    EXIT_NOINPUT,
    EXIT_STORAGE,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from daemon import __version__, endings, held_cli, lifecycle_cli, logs, offline, sources_cli
from daemon.config import ConfigError, FileDestination, LoadedConfig, StorageSection, load

_T = TypeVar("_T")
ADMIN_TIMEOUT = 10.0
REBUILD_TIMEOUT = 3600.0
"""Seconds: a rebuild replays the whole log (about a minute per million events)."""
SCORING_RUN_TIMEOUT = 3600.0
"""Seconds: a batch run takes about 30 s per million profiles."""
SKIPS_SHOWN = 20
"""Unscorable CSV rows reported one by one; the rest are counted."""


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C and a closed pipe end any command with the conventional code, no traceback."""
    return endings.run(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command != "run":
        # Only the daemon logs at its configured level. A command's output is on stdout;
        # the lines of what it calls (migrations, say) go to stderr, warnings only, and
        # structlog's own defaults (stdout, tracebacks with locals) are never used.
        logs.configure("warning")
    if not args.needs_config:
        standalone: int = args.handler(args)
        return standalone
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
    parser.set_defaults(needs_config=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return _with_config(commands.add_parser(name, help=help_text, description=help_text))

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
    rebuild = _with_config(
        identity_commands.add_parser("rebuild", help=rebuild_help, description=rebuild_help)
    )
    rebuild.add_argument("--admin", metavar="URL", help="admin API base URL (default: from config)")
    rebuild.set_defaults(handler=_identity_rebuild)

    model = commands.add_parser("model", help="check, deploy and list lead scoring models")
    model_commands = model.add_subparsers(dest="model_command", metavar="COMMAND")
    model_commands.required = True

    def model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return _with_config(model_commands.add_parser(name, help=help_text, description=help_text))

    model_check = model_command(
        "check",
        "validate a model file and compare the fit it would give the current profiles "
        "with the active model's",
    )
    model_check.add_argument("file", metavar="FILE", help="the model file (TOML)")
    model_check.set_defaults(handler=_model_check)
    model_deploy = model_command(
        "deploy",
        "make a model file the active model (an older version too: a rollback); every "
        "profile is rescored in the next batch run",
    )
    model_deploy.add_argument("file", metavar="FILE", help="the model file (TOML)")
    model_deploy.set_defaults(handler=_model_deploy)
    history = model_command("history", "list the models deployed, newest (the active one) first")
    history.add_argument("--limit", type=int, default=20, help="how many, newest first")
    history.set_defaults(handler=_model_history)

    scoring = commands.add_parser("scoring", help="lead scoring in the running daemon")
    scoring_commands = scoring.add_subparsers(dest="scoring_command", metavar="COMMAND")
    scoring_commands.required = True
    run_help = "score every profile and account now (a batch run) and print the figures"
    scoring_run = _with_config(
        scoring_commands.add_parser("run", help=run_help, description=run_help)
    )
    scoring_run.add_argument(
        "--admin", metavar="URL", help="admin API base URL (default: from config)"
    )
    scoring_run.set_defaults(handler=_scoring_run)

    held_cli.add_commands(commands, _with_config)
    lifecycle_cli.add_commands(commands, _with_config)
    sources_cli.add_commands(commands, _with_config)

    dlq = commands.add_parser("dlq", help="list and replay records no destination accepted")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND")
    dlq_commands.required = True
    list_help = "list dead letters (oldest first) with their destination, profile and last error"
    dlq_list = _with_config(dlq_commands.add_parser("list", help=list_help, description=list_help))
    dlq_list.add_argument("--destination", metavar="NAME", help="only this destination's")
    dlq_list.add_argument("--limit", type=int, default=50, help="how many, oldest first")
    dlq_list.add_argument("--json", action="store_true", help="print JSON lines, with payloads")
    dlq_list.set_defaults(handler=_dlq_list)
    replay_help = (
        "put dead letters back in the outbox, to be sent again within seconds (one whose "
        "profile has a newer payload since is dropped instead: the newer one is sent)"
    )
    dlq_replay = _with_config(
        dlq_commands.add_parser("replay", help=replay_help, description=replay_help)
    )
    dlq_replay.add_argument("--destination", metavar="NAME", help="only this destination's")
    dlq_replay.add_argument(
        "--id", type=int, action="append", dest="ids", metavar="ID", help="only this one (repeat)"
    )
    dlq_replay.set_defaults(handler=_dlq_replay)

    sync_help = (
        "send a destination every profile whose payload differs from what it acknowledged "
        "(after changing its fields or filter); --full sends every profile again"
    )
    sync = _with_config(commands.add_parser("sync", help=sync_help, description=sync_help))
    sync.add_argument("destination", metavar="NAME", help="a destination in daemon.toml")
    sync.add_argument(
        "--full", action="store_true", help="resend every profile, even unchanged ones"
    )
    sync.add_argument("--admin", metavar="URL", help="admin API base URL (default: from config)")
    sync.set_defaults(handler=_sync)

    csv_help = "score a CSV of leads offline (Customer Fit only) with a model file"
    score_csv = commands.add_parser("score-csv", help=csv_help, description=csv_help)
    score_csv.add_argument("--model", metavar="FILE", required=True, help="the model file")
    score_csv.add_argument("input", metavar="IN.csv", help="leads, with a header row (- for stdin)")
    score_csv.add_argument(
        "output", metavar="OUT.csv", help="every input column, then the scores (- for stdout)"
    )
    score_csv.add_argument(
        "--encoding",
        default="utf-8",
        help="of the input and the output (default utf-8; a byte order mark is dropped)",
    )
    score_csv.add_argument(
        "--map",
        metavar="COLUMN=TRAIT",
        action="append",
        default=[],
        help="the trait a column fills (repeatable). Default: the header if the model "
        "reads that name, else the header lower-cased with spaces and dashes as "
        "underscores. company.industry builds a nested trait, account.x an account trait",
    )
    score_csv.set_defaults(handler=_score_csv, needs_config=False)
    return parser


def _with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument(
        "--config",
        metavar="PATH",
        help="daemon.toml to use (default: ./daemon.toml, else the embedded default)",
    )
    return sub


def _run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    from daemon.app import CannotOpenStorage, CannotScore, serve  # only `run` needs these
    from daemon.datadir import DataDirHeld

    try:
        return anyio.run(serve, config, loaded.path)
    except DataDirHeld as exc:
        structlog.get_logger("daemon").critical(str(exc))
        return DataDirHeld.exit_code
    except CannotOpenStorage as exc:
        structlog.get_logger("daemon").critical("cannot open storage", error=str(exc))
        return EXIT_STORAGE
    except CannotScore as exc:
        structlog.get_logger("daemon").critical("no usable scoring model", error=str(exc))
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    if config.scoring.model is None:
        scoring = "the model deployed last (leadsync model deploy), else the built-in example"
    else:
        from actors.scoring.model import ModelError
        from actors.scoring.model import load as load_model

        try:
            model = load_model(config.scoring.model)
        except ModelError as exc:
            print(f"leadsync: {exc}", file=sys.stderr)
            print(
                "leadsync: `leadsync run` would log this, keep the model deployed last and "
                "score with it; with none ever deployed, it would not start",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        scoring = f"model {config.scoring.model} (version {model.version})"
    print(f"{loaded.path}: OK")
    print(f"  data_dir   {config.daemon.data_dir}")
    print(f"  ingest API {config.http.listen}")
    token = " (bearer token required)" if config.admin.token is not None else ""
    print(f"  admin API  {config.admin.listen}{token}")
    kinds = ["user_id", "email", *(x.kind for x in config.identity.external_ids), "anonymous_id"]
    limits = ", ".join(f"{kind} {config.identity.limit(kind) or 'no cap'}" for kind in kinds)
    print(f"  identity   at most {limits} a profile")
    for name, source in config.sources.items():
        key = "set" if source.write_key else "generated on first start"
        print(f"  source     {name} (type http, kind {source.kind}, write key {key})")
    print(f"  scoring    {scoring}")
    for name, destination in config.destinations.items():
        limit = destination.rate
        daily = f", {limit.daily:,} a day" if limit.daily else ""
        files = ""
        if isinstance(destination, FileDestination):
            files = (
                f", files in {destination.path}, a new one every "
                f"{_duration(destination.rotate_interval)} or "
                f"{destination.rotate_bytes / 2**20:g} MiB"
            )
        print(
            f"  destination {name} (type {destination.kind}, mode {destination.mode}, "
            f"at most {limit.requests} calls per {limit.per:g}s{daily}{files})"
        )
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
    body: Any = None,
    silent: bool = False,
) -> tuple[int, Any] | None:
    """(status, JSON body) from the admin API; None, after saying why, if unreachable.
    With `quiet`, a refused connection raises _NobodyListens instead: no daemon runs
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
            raise _NobodyListens from None
        reason = getattr(exc, "reason", exc)
        say(f"leadsync: cannot reach the admin API at {url}: {reason}")
        say("  is the daemon running, and is --config the one it runs with?")
        return None


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _no_say(text: str) -> None:
    return


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
    scoring = status.get("scoring")
    if scoring is not None:
        last = scoring["last_batch_at"] or "never"
        figures = scoring["last_batch"]
        if figures:
            last += f" ({_count(figures['profiles'], 'profile')} in {figures['seconds']:.1f}s)"
        console.print(
            f"scoring model {scoring['model'] or '-'}   last batch run {last}   "
            f"next {scoring['next_batch_at'] or '-'}"
        )
    for name, d in (status.get("destinations") or {}).items():
        # A line each rather than a table: ten columns do not fit a terminal.
        paused = f" for {d['paused_for']:.0f}s more" if d["paused_for"] else ""
        console.print(
            f"destination {name} ({d['type']}, {d['mode']}): {d['state']}{paused}   "
            f"queued {d['queued']:,}   held {d['held']:,}   sent {d['sent']:,}   "
            f"failed {d['failed']:,}   dead letters {d['dead_letters']:,}   "
            f"{d['rate']:.1f} calls/s   last success {d['last_success_at'] or 'never'}"
            + (f"   lag {d['lag']:.1f}s" if d["lag"] is not None else ""),
            highlight=False,
        )
        if d.get("writing"):
            console.print(
                f"  writing {d['writing']}", markup=False, highlight=False, soft_wrap=True
            )
        if d["last_error"]:
            console.print(f"  last error ({d['last_error_at']}): {d['last_error']}", markup=False)
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
    console.print(
        f"{_count(answer['total'], 'quarantined message')} (newest {len(answer['messages'])})"
    )
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
        return EXIT_FAILURE if status == 404 else EXIT_USAGE
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    console = Console()
    console.print(
        f"[bold]{body['profile_id']}[/]  {_count(body['events'], 'event')}  "
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
    _print_scores(console, body.get("scores"), "scores")
    account = body["account"]
    if account and account.get("scores"):
        _print_scores(console, account["scores"], f"scores of account {account['group_id']}")
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
    endings.on_interrupt("the rebuild goes on in the daemon (its log says when it is done)")
    try:
        done = _progress_of(args, loaded, ("identity_rebuild",), "events")
        with endings.waiting("rebuilding the identity graph in the daemon", done):
            answer = _admin_call(
                args, loaded, "/v1/identity/rebuild", "POST", REBUILD_TIMEOUT, quiet=True
            )
    except _NobodyListens:
        endings.on_interrupt("the old graph stays")
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
    # Held to the end: the daemon rebuilds with its own rules and swaps under its write
    # gate; one started meanwhile would see this rebuild's swap with neither.
    here = offline.locked_database(loaded)
    if isinstance(here, int):
        return here
    database, lock = here
    try:
        return _rebuild_locked(database, loaded)
    finally:
        lock.release()


def _rebuild_locked(database: Path, loaded: LoadedConfig) -> int:
    from rich.progress import Progress

    from actors.identity.rebuild import RebuildRunning, rebuild
    from storage.migrations import SchemaTooNew
    from storage.sqlite import LogBehind

    config = loaded.config
    # The rebuilt graph is made in this version's schema, and swapped into tables that
    # must have it too: a database upgraded but not yet opened by the daemon is
    # migrated first, as the daemon would.
    try:
        anyio.run(_migrate, database, config.storage)
    except (sqlite3.Error, SchemaTooNew, LogBehind) as exc:
        print(f"leadsync: {database} cannot be opened: {exc}", file=sys.stderr)
        return EXIT_STORAGE
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


async def _migrate(database: Path, settings: StorageSection) -> None:
    from storage.sqlite import SqliteStorage

    storage = await SqliteStorage.open(
        database,
        busy_timeout=settings.busy_timeout,
        journal_size_limit=settings.journal_size_limit,
    )
    await storage.close()


def _print_rebuild(report: dict[str, Any], where: str) -> None:
    print(
        f"rebuilt the identity graph ({where}) from {_count(report['events'], 'event')} in "
        f"{report['seconds']:.1f}s: {_count(report['profiles_before'], 'profile')} before, "
        f"{report['profiles_after']:,} after ({_count(report['merges'], 'merge')}, "
        f"{_count(report['links_dropped'], 'link')} refused by the rules)"
    )


def _print_scores(console: Console, view: dict[str, Any] | None, title: str) -> None:
    if view is None:
        console.print(f"{title}: not scored yet")
        return
    table = Table("score", "value", title=title)
    for name, value in view["traits"].items():
        if isinstance(value, list):
            text = "; ".join(map(str, value))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
        table.add_row(name, text)
    made = [
        f"{part} by model {view[f'{key}_model']} at {view[f'{key}_at']}"
        for part, key in (("fit", "fit"), ("likelihood", "likelihood"))
        if view[f"{key}_model"] is not None
    ]
    table.caption = "; ".join(made)
    console.print(table)


def _database(loaded: LoadedConfig) -> Path:
    return offline.database(loaded)


def _model_check(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Validate; then, if there are profiles, what the model would make of them."""
    from actors.scoring import bulk
    from actors.scoring.deploy import deployed
    from actors.scoring.model import ModelError, example, load
    from storage.sqlite_graph import connect
    from storage.sqlite_scores import SqliteScoreStore

    try:
        model = load(args.file)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    spec = model.spec
    print(
        f"{args.file}: OK, model {model.version} ({len(spec.fit.rules)} fit rules, "
        f"{len(spec.likelihood.events)} event weights)"
    )
    database = _database(loaded)
    if not database.is_file():
        print(f"no database at {database} (data_dir from {loaded.path}): no profiles to score")
        return 0
    db = connect(database, loaded.config.storage.busy_timeout)
    try:
        store = SqliteScoreStore(db)
        active = deployed(store) or example()
        with _Bar("scoring profiles", "profiles") as bar:
            preview = bulk.preview(store, model, active, bar.update)
    except sqlite3.Error as exc:
        print(f"leadsync: cannot read {database}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        db.close()
    if not preview.profiles:
        print(f"no profiles in {database} yet: nothing to compare")
        return 0
    print(
        f"\nthe fit of {_count(preview.profiles, 'profile')} in {database}, "
        "by the active model and by this file:\n"
    )
    now, then = f"{active.version} (active)", f"{model.version} (this file)"
    rows = [["fit segment", now, then]]
    rows += [
        [name, f"{preview.active.segments[name]:,}", f"{preview.candidate.segments[name]:,}"]
        for name in preview.active.segments
    ]
    rows.append(["", "", ""])
    rows.append(["score", now, then])
    for index, (was, will) in enumerate(
        zip(preview.active.histogram, preview.candidate.histogram, strict=True)
    ):
        low = index * 100 // bulk.HISTOGRAM_BUCKETS
        high = 100 if index == bulk.HISTOGRAM_BUCKETS - 1 else low + 9
        rows.append([f"{low}-{high}", f"{was:,}", f"{will:,}"])
    _print_columns(rows)
    print(
        f"\n{preview.changed:,} of {_count(preview.profiles, 'profile')} would change segment"
        if preview.changed
        else "\nno profile would change segment"
    )
    return 0


def _model_deploy(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Straight into the database: the daemon's scorer looks for a new active model
    every second, so no daemon needs to be asked (or even running)."""
    from actors.scoring.deploy import Outcome, deploy
    from actors.scoring.model import ModelError, load
    from storage.sqlite_graph import connect
    from storage.sqlite_scores import SqliteScoreStore

    try:
        model = load(args.file)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    database = _database(loaded)
    if not database.is_file():
        print(
            f"leadsync: no database at {database} (data_dir from {loaded.path}); start the "
            "daemon once first, or name the file in daemon.toml ([scoring] model)",
            file=sys.stderr,
        )
        return EXIT_STORAGE
    db = connect(database, loaded.config.storage.busy_timeout)
    try:
        # FULL: "deployed" on the terminal must survive a power cut.
        db.execute("PRAGMA synchronous = FULL")
        store = SqliteScoreStore(db)
        before = store.active_model()
        outcome = deploy(store, model, str(Path(args.file).resolve()), again=True)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        print("  nothing was deployed; the active model stays", file=sys.stderr)
        return EXIT_DATAERR
    except sqlite3.Error as exc:
        print(f"leadsync: cannot deploy into {database}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        db.close()
    if outcome is Outcome.ALREADY_ACTIVE:
        print(f"model {model.version} is already the active model: nothing changed")
        return 0
    was = f"replacing {before[0]}" if before else "the first model deployed"
    print(f"{outcome.value} model {model.version} from {args.file} ({was})")
    print(
        "every profile is rescored with it in the next batch run "
        "(`leadsync scoring run` runs one now);"
    )
    print("a running daemon switches to it within a second")
    return 0


def _model_history(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from actors.scoring.model import example
    from storage.sqlite_graph import connect
    from storage.sqlite_scores import SqliteScoreStore

    database = _database(loaded)
    deploys = []
    if database.is_file():
        db = connect(database, loaded.config.storage.busy_timeout)
        try:
            deploys = SqliteScoreStore(db).deploys(args.limit)
        except sqlite3.Error as exc:
            print(f"leadsync: cannot read {database}: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        finally:
            db.close()
    if not deploys:
        print(
            f"no model deployed yet: the daemon deploys the built-in example "
            f"({example().version}) when it starts, unless [scoring] model names a file"
        )
        return 0
    rows = [["", "version", "deployed", "origin"]]
    rows += [
        ["active" if index == 0 else "", d.version, d.deployed_at, d.origin]
        for index, d in enumerate(deploys)
    ]
    _print_columns(rows, numbers=False)
    return 0


def _print_columns(rows: list[list[str]], numbers: bool = True) -> None:
    """Plain aligned columns (easy to read, grep and diff); `numbers` right-aligns
    every column but the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if numbers and index else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("   ".join(cells).rstrip())


def _scoring_run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    endings.on_interrupt("the batch run goes on in the daemon (`leadsync status` shows its end)")
    done = _progress_of(args, loaded, ("scoring", "running"), "profiles")
    with endings.waiting("scoring every profile in the daemon (a batch run)", done):
        answer = _admin_call(args, loaded, "/v1/scoring/run", "POST", SCORING_RUN_TIMEOUT)
    if answer is None:
        return EXIT_UNAVAILABLE
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(
        f"batch run done in {body['seconds']:.1f}s: {_count(body['profiles'], 'profile')} and "
        f"{_count(body['accounts'], 'account')} scored, {_count(body['changed'], 'score')} "
        f"changed, {_count(body['fit_rescored'], 'fit')} made anew by the active model"
    )
    return 0


def _progress_of(
    args: argparse.Namespace, loaded: LoadedConfig, where: tuple[str, ...], unit: str
) -> Callable[[], str | None]:
    """How far the daemon is with a piece of work, as /status has it at `where`
    ({unit: done, "of": total}): "5,000 of 20,000 profiles", or None."""

    def said() -> str | None:
        # Silent: it runs beside a spinner every half second, and a slow answer or an
        # odd one only means no count this time.
        try:
            answer = _admin_call(args, loaded, "/status", timeout=2.0, silent=True)
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


def _dlq_list(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Straight from the database, so it works with the daemon stopped too."""
    letters = _with_outbox(loaded, lambda o: o.dead_letters(args.destination, args.limit))
    if letters is None:
        return EXIT_STORAGE
    if not letters and _unknown_destination(args.destination, loaded):
        return EXIT_FAILURE
    if args.json:
        for letter in letters:
            shown = msgspec.to_builtins(letter)
            shown["payload"] = json.loads(letter.payload)
            print(json.dumps(shown))
        return 0
    if not letters:
        which = f" for {args.destination}" if args.destination else ""
        print(f"no dead letters{which}")
        return 0
    rows = [["id", "destination", "profile", "attempts", "dead since", "last error"]]
    rows += [
        [
            str(d.id),
            d.destination,
            d.uid,
            str(d.attempts),
            datetime.fromtimestamp(d.dead_at, UTC).isoformat(timespec="seconds"),
            d.error,
        ]
        for d in letters
    ]
    _print_columns(rows, numbers=False)
    return 0


def _dlq_replay(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Straight into the database: a running daemon's destination actors look at the
    outbox every half second."""
    replayed = _with_outbox(
        loaded, lambda o: o.replay(args.destination, args.ids, time.time()), write=True
    )
    if replayed is None:
        return EXIT_STORAGE
    sent, stale = replayed
    if not sent and not stale and _unknown_destination(args.destination, loaded):
        return EXIT_FAILURE
    print(f"{_count(sent, 'dead letter')} back in the outbox, to be sent again")
    if stale:
        print(
            f"{_count(stale, 'dead letter')} dropped: the profile's payload has changed "
            "since (a newer one is queued or sent)"
        )
    return 0


def _unknown_destination(name: str | None, loaded: LoadedConfig) -> bool:
    """A --destination that is not configured, said so (called when it has no dead
    letters: a removed destination's stay, and are listed under its old name)."""
    if name is None or name in loaded.config.destinations:
        return False
    configured = ", ".join(loaded.config.destinations) or "none"
    print(f"leadsync: unknown destination {name} (configured: {configured})", file=sys.stderr)
    return True


def _with_outbox(loaded: LoadedConfig, work: Callable[[Any], _T], write: bool = False) -> _T | None:
    from storage.sqlite_outbox import SqliteOutboxStore

    return offline.with_store(loaded, SqliteOutboxStore, work, write)


def _sync(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    name = quote(args.destination, safe="")
    full = "?full=1" if args.full else ""
    endings.on_interrupt(f"the daemon goes on queueing profiles for {args.destination}")
    answer = _admin_call(
        args, loaded, f"/v1/destinations/{name}/sync{full}", "POST", SCORING_RUN_TIMEOUT
    )
    if answer is None:
        return EXIT_UNAVAILABLE
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_FAILURE if status == 404 else EXIT_UNAVAILABLE
    print(
        f"{_count(body['queued'], 'profile')} of {body['profiles']:,} queued for "
        f"{args.destination}; `leadsync status` shows the queue go down"
    )
    return 0


def _score_csv(args: argparse.Namespace) -> int:
    from actors.scoring import bulk
    from actors.scoring.model import ModelError, load

    overrides: dict[str, str] = {}
    for item in args.map:
        column, sep, trait = item.rpartition("=")
        if not sep or not column or not bulk.valid_trait(trait):
            print(
                f"leadsync: --map {item!r}: expected COLUMN=TRAIT, with a trait name like "
                "job_title, company.industry or account.employees",
                file=sys.stderr,
            )
            return EXIT_USAGE
        overrides[column] = trait
    try:
        model = load(args.model)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    name = bulk.input_name(Path(args.input))
    bar = _Bar(f"scoring {name}", "bytes")
    shown = 0

    def report(line: int, reason: str) -> None:
        nonlocal shown
        if shown < SKIPS_SHOWN:
            shown += 1
            bar.say(f"{name}:{line}: {reason}")

    def unread(columns: list[tuple[str, str]]) -> None:
        listed = ", ".join(f"{column!r} (as {trait})" for column, trait in columns)
        reads = ", ".join(sorted(bulk.traits_read(model)))
        bar.say(f"{name}: the model reads nothing from {listed}; copied, not scored")
        bar.say(f"{name}: --map COLUMN=TRAIT gives a column a trait it reads: {reads}")

    interrupted = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with bar:
            result = bulk.score_csv(
                model,
                Path(args.input),
                Path(args.output),
                overrides,
                report,
                bar.update_bytes,
                encoding=args.encoding,
                on_unread=unread,
            )
    except bulk.CannotRead as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_NOINPUT
    except (bulk.UnknownColumn, bulk.BadEncoding) as exc:
        flag = "--map" if isinstance(exc, bulk.UnknownColumn) else "--encoding"
        print(f"leadsync: {flag}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except bulk.NotAFile as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except OSError as exc:
        print(f"leadsync: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        signal.signal(signal.SIGTERM, interrupted)
    if result.skipped > SKIPS_SHOWN:
        print(
            f"{name}: {_count(result.skipped - SKIPS_SHOWN, 'more row')} could not be scored",
            file=sys.stderr,
        )
    # With the scores on standard output, the summary must not land among them.
    summary = sys.stderr if args.output == bulk.STDIO else sys.stdout
    into = "<stdout>" if args.output == bulk.STDIO else args.output
    print(
        f"scored {_count(result.scored, 'row')} into {into} with model {model.version}",
        file=summary,
    )
    if result.skipped:
        print(
            f"{_count(result.skipped, 'row')} could not be scored and "
            f"{'is' if result.skipped == 1 else 'are'} not in {into}",
            file=summary,
        )
        return EXIT_FAILURE
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """`kill` then cleans up like Ctrl-C: no temporary file is left behind."""
    raise SystemExit(128 + signum)


class _Bar:
    """A progress bar on stderr when it is a terminal, and nothing otherwise (a log
    file or a pipe would fill with redraws). Messages go around it."""

    def __init__(self, description: str, unit: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress: Progress | None = None
        if not sys.stderr.isatty():
            return
        columns = (
            [BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            if unit == "bytes"
            else [MofNCompleteColumn()]
        )
        self._progress = Progress(
            "{task.description}", *columns, console=Console(stderr=True), transient=True
        )
        self._task = self._progress.add_task(description, total=None)

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def update_bytes(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def say(self, text: str) -> None:
        if self._progress is None:
            print(text, file=sys.stderr)
        else:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _count(number: float, thing: str) -> str:
    return f"{int(number):,} {thing}{'' if number == 1 else 's'}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


if __name__ == "__main__":
    sys.exit(main())
