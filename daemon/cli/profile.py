"""`leadsync profile`: one person as the running daemon knows them (identities,
traits, scores, account, recent events), looked up by any identifier."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from actors.exit_codes import EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE
from daemon.cli.admin_client import admin_call
from daemon.cli.options import Commands, command, with_admin
from daemon.cli.render import count
from daemon.config import LoadedConfig


def add_commands(commands: Commands) -> None:
    profile = command(
        commands, "profile", "show one person's profile: identities, traits, activity"
    )
    profile.add_argument(
        "id",
        metavar="ID",
        help="user_id:VALUE, anonymous_id:VALUE, email:VALUE, KIND:VALUE for an external id, "
        "or a profile id (prf_...)",
    )
    with_admin(profile)
    profile.add_argument("--events", type=int, default=10, help="how many recent events to show")
    profile.add_argument("--json", action="store_true", help="print the raw JSON")
    profile.set_defaults(handler=_profile)


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
    answer = admin_call(args, loaded, path)
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
        f"[bold]{body['profile_id']}[/]  {count(body['events'], 'event')}  "
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
    sources = ", ".join(f"{name} {number:,}" for name, number in body["sources"].items())
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
