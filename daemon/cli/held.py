"""`leadsync held list|retry|drop`: what the pipeline set aside, straight from the
database, so it works with the daemon stopped too.

A retry of a profile or an account puts it back on the scorer's to-do list; a retry
of an event flags it for its component (the merger or the scorer), which applies it
again within a second if the daemon runs, or at its next start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from actors.exit_codes import EXIT_FAILURE, EXIT_STORAGE, EXIT_USAGE
from daemon.cli import offline
from daemon.cli.options import Commands, with_config
from daemon.cli.render import count
from daemon.config import LoadedConfig
from storage.held import HeldStore

ERROR_SHOWN = 100
"""Characters of an error in the table; --json shows all of it."""

_T = TypeVar("_T")


def add_commands(commands: Commands) -> None:
    held = commands.add_parser(
        "held", help="list, retry or drop what the pipeline set aside (events, profiles)"
    )
    sub = held.add_subparsers(dest="held_command", metavar="COMMAND")
    sub.required = True

    text = "list held items, newest first: what failed, where, and why"
    listing = with_config(sub.add_parser("list", help=text, description=text))
    listing.add_argument("--component", metavar="NAME", help="only this one's (identity, scorer)")
    listing.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    listing.add_argument("--json", action="store_true", help="JSON lines, with event bodies")
    listing.set_defaults(handler=_list)

    for name, text, handler in (
        ("retry", "apply held items again (after an upgrade that fixes their cause)", _retry),
        ("drop", "forget held items (their events stay in the log, unapplied)", _drop),
    ):
        action = with_config(sub.add_parser(name, help=text, description=text))
        action.add_argument("ids", metavar="ID", type=int, nargs="*", help="items, by id")
        action.add_argument("--all", action="store_true", help="every held item")
        action.add_argument("--component", metavar="NAME", help="only this one's")
        action.set_defaults(handler=handler)


def _list(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    found = _with_held(loaded, lambda h: h.listed(args.component, max(args.limit, 0)))
    if found is None:
        return EXIT_STORAGE
    total, items = found
    if args.json:
        for item in items:
            shown = msgspec.to_builtins(item)
            shown["body"] = _body(item.body)
            print(json.dumps(shown, ensure_ascii=False))
        return 0
    if not items:
        which = f" by {args.component}" if args.component else ""
        print(f"{total:,} held{which}" if total else f"nothing held{which}")
        return 0
    rows = [["id", "component", "kind", "key", "tries", "held since", "error"]]
    for item in items:
        error = item.error if len(item.error) <= ERROR_SHOWN else item.error[:ERROR_SHOWN] + "…"
        when = datetime.fromtimestamp(item.held_at, UTC).isoformat(timespec="seconds")
        retry = " (retry asked)" if item.retry else ""
        rows.append(
            [str(item.id), item.component, item.kind, item.key, str(item.attempts), when, error]
        )
        rows[-1][-1] += retry
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("   ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    if total > len(items):
        print(f"({total:,} held; the newest {len(items):,} shown, --limit for more)")
    return 0


def _retry(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    done = _act(args, loaded, lambda h, ids: h.retry(ids, args.component))
    if done is None or isinstance(done, int):
        return EXIT_STORAGE if done is None else done
    requeued, flagged = done
    if requeued:
        requeued_text = count(requeued, "profile or account", "profiles or accounts")
        print(f"{requeued_text} back on the scorer's to-do list")
    if flagged:
        print(
            f"{count(flagged, 'event')} to be applied again by the running daemon within a "
            "second (or at its next start); `leadsync held list` shows any that fail again"
        )
    return 0


def _drop(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    done = _act(args, loaded, lambda h, ids: (h.drop(ids, args.component), 0))
    if done is None or isinstance(done, int):
        return EXIT_STORAGE if done is None else done
    print(f"{count(done[0], 'held item')} dropped")
    return 0


def _act(
    args: argparse.Namespace,
    loaded: LoadedConfig,
    action: Callable[[HeldStore, list[int] | None], tuple[int, int]],
) -> tuple[int, int] | int | None:
    """Run a retry or a drop on the items named: the action's counts, an exit code
    (bad usage, nothing matched) once said why, or None if the database failed."""
    if args.all == bool(args.ids):
        print(
            f"leadsync: held {args.held_command}: name items by id, or say --all", file=sys.stderr
        )
        return EXIT_USAGE
    ids = None if args.all else list(args.ids)
    done = _with_held(loaded, lambda h: action(h, ids), write=True)
    if done is not None and not any(done):
        print("nothing held matches")
        return EXIT_FAILURE
    return done


def _with_held(
    loaded: LoadedConfig, work: Callable[[HeldStore], _T], write: bool = False
) -> _T | None:
    return offline.with_session(loaded, lambda session: work(session.held), write)


def _body(body: bytes | None) -> object:
    """An event's body as JSON, or as text if it is not (a damaged row)."""
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
