"""The `leadsync` command line: the parser, assembled from each command group's
`add_commands` in the order `leadsync --help` lists them, and the dispatch to the
handler a command set (with daemon.toml loaded, if it reads one)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from actors import logs
from actors.exit_codes import EXIT_CONFIG
from actors.settings import ConfigError
from daemon import __version__
from daemon.cli import (
    config_check,
    dlq,
    endings,
    held,
    identity,
    lifecycle,
    model,
    profile,
    run,
    score_csv,
    scoring,
    sources,
    status,
    sync,
)
from daemon.cli.options import Commands
from daemon.config import load

DESCRIPTION = "The `leadsync` command."
ADD_COMMANDS: tuple[Callable[[Commands], None], ...] = (
    run.add_commands,
    config_check.add_commands,
    status.add_commands,
    profile.add_commands,
    identity.add_commands,
    model.add_commands,
    scoring.add_commands,
    held.add_commands,
    lifecycle.add_commands,
    sources.add_commands,
    dlq.add_commands,
    sync.add_commands,
    score_csv.add_commands,
)
"""Every command group's, in the order the help lists their commands."""


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C and a closed pipe end any command with the conventional code, no traceback."""
    return endings.run(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = parser_of_commands()
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


def parser_of_commands() -> argparse.ArgumentParser:
    """`leadsync` and every command under it."""
    parser = argparse.ArgumentParser(prog="leadsync", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"leadsync {__version__}")
    parser.set_defaults(needs_config=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_commands in ADD_COMMANDS:
        add_commands(commands)
    return parser
