"""`leadsync scoring run`: a batch run in the running daemon, now, with a spinner
that follows its progress and the figures at the end."""

from __future__ import annotations

import argparse
import sys

from actors.exit_codes import EXIT_UNAVAILABLE
from daemon.cli import endings
from daemon.cli.admin_client import admin_call, progress_of
from daemon.cli.options import Commands, command, with_admin
from daemon.cli.render import count
from daemon.config import LoadedConfig

SCORING_RUN_TIMEOUT = 3600.0
"""Seconds: a batch run walks every profile, which takes minutes for millions."""


def add_commands(commands: Commands) -> None:
    scoring = commands.add_parser("scoring", help="lead scoring in the running daemon")
    scoring_commands = scoring.add_subparsers(dest="scoring_command", metavar="COMMAND")
    scoring_commands.required = True
    run_help = "score every profile and account now (a batch run) and print the figures"
    scoring_run = with_admin(command(scoring_commands, "run", run_help))
    scoring_run.set_defaults(handler=_scoring_run)


def _scoring_run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    endings.on_interrupt("the batch run goes on in the daemon (`leadsync status` shows its end)")
    done = progress_of(args, loaded, ("scoring", "running"), "profiles")
    with endings.waiting("scoring every profile in the daemon (a batch run)", done):
        answer = admin_call(args, loaded, "/v1/scoring/run", "POST", SCORING_RUN_TIMEOUT)
    if answer is None:
        return EXIT_UNAVAILABLE
    status, body = answer
    if status != 200:
        print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(
        f"batch run done in {body['seconds']:.1f}s: {count(body['profiles'], 'profile')} and "
        f"{count(body['accounts'], 'account')} scored, {count(body['changed'], 'score')} "
        f"changed, {count(body['fit_rescored'], 'fit')} made anew by the active model"
    )
    return 0
