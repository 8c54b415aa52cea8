"""`leadsync identity rebuild`: the identity graph recomputed from the event log.

The running daemon is asked first (it rebuilds as its own user, with its rules, and
swaps under its write gate); only when nobody listens at the admin address is the
database rebuilt here, with this config's rules and the data dir's lock held."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from actors.exit_codes import EXIT_STORAGE, EXIT_TEMPFAIL, EXIT_UNAVAILABLE
from daemon.backend import backend_for
from daemon.cli import endings, offline
from daemon.cli.admin_client import NobodyListens, admin_call, progress_of
from daemon.cli.options import Commands, command, with_admin
from daemon.cli.render import count
from daemon.config import LoadedConfig
from storage.errors import StorageError

REBUILD_TIMEOUT = 3600.0
"""Seconds: a rebuild replays the whole log, which takes minutes for a large one."""


def add_commands(commands: Commands) -> None:
    identity = commands.add_parser("identity", help="manage the identity graph")
    identity_commands = identity.add_subparsers(dest="identity_command", metavar="COMMAND")
    identity_commands.required = True
    rebuild_help = (
        "recompute the identity graph from the event log with the config's rules, "
        "replacing the old graph atomically (safe while the daemon runs)"
    )
    rebuild = with_admin(command(identity_commands, "rebuild", rebuild_help))
    rebuild.set_defaults(handler=_identity_rebuild)


def _identity_rebuild(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Ask the running daemon to rebuild (as its own user, with its rules); if none
    answers, rebuild the database here with this config's rules."""
    endings.on_interrupt("the rebuild goes on in the daemon (its log says when it is done)")
    try:
        done = progress_of(args, loaded, ("identity_rebuild",), "events")
        with endings.waiting("rebuilding the identity graph in the daemon", done):
            answer = admin_call(
                args, loaded, "/v1/identity/rebuild", "POST", REBUILD_TIMEOUT, quiet=True
            )
    except NobodyListens:
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
    here = offline.locked_database(loaded, "identity rebuild")
    if isinstance(here, int):
        return here
    database, lock = here
    try:
        return _rebuild_locked(database, loaded)
    finally:
        lock.release()


def _rebuild_locked(database: Path, loaded: LoadedConfig) -> int:
    from actors.identity.rebuild import rebuild
    from storage.errors import RebuildRunning

    config = loaded.config
    # The rebuilt graph is made in this version's schema, and swapped into tables that
    # must have it too: a database upgraded but not yet opened by the daemon is
    # migrated first, as the daemon would.
    try:
        offline.migrate(loaded)
    except StorageError as exc:
        print(f"leadsync: {database} cannot be opened: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replaying the event log", total=None)
        try:
            report = rebuild(
                backend_for(config),
                config.identity,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
        except RebuildRunning as exc:
            print(f"leadsync: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL
        except StorageError as exc:
            print(f"leadsync: rebuild failed, the old graph stays: {exc}", file=sys.stderr)
            return EXIT_STORAGE
    _print_rebuild(vars(report), f"{database}, no daemon answering")
    return 0


def _print_rebuild(report: dict[str, Any], where: str) -> None:
    print(
        f"rebuilt the identity graph ({where}) from {count(report['events'], 'event')} in "
        f"{report['seconds']:.1f}s: {count(report['profiles_before'], 'profile')} before, "
        f"{report['profiles_after']:,} after ({count(report['merges'], 'merge')}, "
        f"{count(report['links_dropped'], 'link')} refused by the rules)"
    )
