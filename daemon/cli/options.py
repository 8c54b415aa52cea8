"""The options several commands share (--config, --admin), added one way everywhere."""

from __future__ import annotations

import argparse
from typing import TypeAlias

# A string: argparse's class is generic only in its type stubs.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns: where a command group adds its commands."""
ADMIN_HELP = "admin API base URL (default: from config)"


def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`sub`, taking --config: every command that reads daemon.toml."""
    sub.add_argument(
        "--config",
        metavar="PATH",
        help="daemon.toml to use (default: ./daemon.toml, else the embedded default)",
    )
    return sub


def command(commands: Commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that reads daemon.toml, its help also its description."""
    return with_config(commands.add_parser(name, help=help_text, description=help_text))


def with_admin(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`sub`, taking --admin: every command that asks the running daemon."""
    sub.add_argument("--admin", metavar="URL", help=ADMIN_HELP)
    return sub
