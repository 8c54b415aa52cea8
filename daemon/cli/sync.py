"""`leadsync sync`: ask the running daemon to queue for a destination every profile
whose payload differs from what it acknowledged (after its fields or filter changed),
or with --full every profile again."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import quote

from actors.exit_codes import EXIT_FAILURE, EXIT_UNAVAILABLE
from daemon.cli import endings
from daemon.cli.admin_client import admin_call
from daemon.cli.options import Commands, command, with_admin
from daemon.cli.render import count
from daemon.config import LoadedConfig

SYNC_TIMEOUT = 3600.0
"""Seconds: the daemon answers once its scorer has staged every profile's payload."""


def add_commands(commands: Commands) -> None:
    sync_help = (
        "send a destination every profile whose payload differs from what it acknowledged "
        "(after changing its fields or filter); --full sends every profile again"
    )
    sync = command(commands, "sync", sync_help)
    sync.add_argument("destination", metavar="NAME", help="a destination in daemon.toml")
    sync.add_argument(
        "--full", action="store_true", help="resend every profile, even unchanged ones"
    )
    with_admin(sync)
    sync.set_defaults(handler=_sync)


def _sync(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    name = quote(args.destination, safe="")
    full = "?full=1" if args.full else ""
    endings.on_interrupt(f"the daemon goes on queueing profiles for {args.destination}")
    answer = admin_call(args, loaded, f"/v1/destinations/{name}/sync{full}", "POST", SYNC_TIMEOUT)
    if answer is None:
        return EXIT_UNAVAILABLE
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_FAILURE if status == 404 else EXIT_UNAVAILABLE
    print(
        f"{count(body['queued'], 'profile')} of {body['profiles']:,} queued for "
        f"{args.destination}; `leadsync status` shows the queue go down"
    )
    return 0
