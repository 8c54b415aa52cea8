"""`leadsync status` and `leadsync quarantine`: the running daemon's own view of
itself (actors, queues, consumers, destinations) and of what it refused, asked of
its admin API and drawn for a terminal (or printed as the raw JSON)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from actors.exit_codes import EXIT_UNAVAILABLE
from daemon.cli.admin_client import admin_get
from daemon.cli.options import Commands, command, with_admin
from daemon.cli.render import count, duration
from daemon.config import LoadedConfig


def add_commands(commands: Commands) -> None:
    status = with_admin(
        command(commands, "status", "show the running daemon's actors, queues and counts")
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(handler=_status)

    quarantine = with_admin(
        command(commands, "quarantine", "show messages the ingestion API refused")
    )
    quarantine.add_argument("--limit", type=int, default=20, help="how many, newest first")
    quarantine.add_argument("--json", action="store_true", help="print the raw JSON")
    quarantine.set_defaults(handler=_quarantine)


def _status(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    status = admin_get(args, loaded, "/status")
    if status is None:
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    console = Console()
    ready = "[green]ready[/]" if status["ready"] else "[yellow]not ready[/]"
    console.print(
        f"leadsync {status['version']}  {ready}  up {duration(status['uptime_seconds'])}  "
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
            last += f" ({count(figures['profiles'], 'profile')} in {figures['seconds']:.1f}s)"
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
    answer = admin_get(args, loaded, f"/quarantine?limit={args.limit}")
    if answer is None:
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    console = Console()
    console.print(
        f"{count(answer['total'], 'quarantined message')} (newest {len(answer['messages'])})"
    )
    table = Table("id", "source", "received", "index", "reason", "message")
    for row in answer["messages"]:
        index = "" if row["batch_index"] is None else str(row["batch_index"])
        body = row["body"] if len(row["body"]) <= 80 else row["body"][:77] + "..."
        table.add_row(str(row["id"]), row["source"], row["received_at"], index, row["reason"], body)
    console.print(table)
    return 0
