"""`leadsync dlq list|replay`: what no destination accepted, straight from and into
the database, so it works with the daemon stopped too; a running daemon's
destination actors look at the outbox every half second."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from actors.exit_codes import EXIT_FAILURE, EXIT_STORAGE
from daemon.cli import offline
from daemon.cli.options import Commands, command
from daemon.cli.render import count, print_columns
from daemon.config import LoadedConfig
from storage.outbox import OutboxStore

_T = TypeVar("_T")


def add_commands(commands: Commands) -> None:
    dlq = commands.add_parser("dlq", help="list and replay records no destination accepted")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND")
    dlq_commands.required = True
    list_help = "list dead letters (oldest first) with their destination, profile and last error"
    dlq_list = command(dlq_commands, "list", list_help)
    dlq_list.add_argument("--destination", metavar="NAME", help="only this destination's")
    dlq_list.add_argument("--limit", type=int, default=50, help="how many, oldest first")
    dlq_list.add_argument("--json", action="store_true", help="print JSON lines, with payloads")
    dlq_list.set_defaults(handler=_dlq_list)
    replay_help = (
        "put dead letters back in the outbox, to be sent again within seconds (one whose "
        "profile has a newer payload since is dropped instead: the newer one is sent)"
    )
    dlq_replay = command(dlq_commands, "replay", replay_help)
    dlq_replay.add_argument("--destination", metavar="NAME", help="only this destination's")
    dlq_replay.add_argument(
        "--id", type=int, action="append", dest="ids", metavar="ID", help="only this one (repeat)"
    )
    dlq_replay.set_defaults(handler=_dlq_replay)


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
    print_columns(rows, numbers=False)
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
    print(f"{count(sent, 'dead letter')} back in the outbox, to be sent again")
    if stale:
        print(
            f"{count(stale, 'dead letter')} dropped: the profile's payload has changed "
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


def _with_outbox(
    loaded: LoadedConfig, work: Callable[[OutboxStore], _T], write: bool = False
) -> _T | None:
    return offline.with_session(loaded, lambda session: work(session.outbox), write)
