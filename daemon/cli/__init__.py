"""The `leadsync` command: one module per command group, and the helpers they share.

`dispatch` builds the parser from each group's `add_commands` and runs the handler;
the groups import only the low modules (options, render, endings, offline,
admin_client), never each other or dispatch, so the package has no import cycle.
"""

from daemon.cli.dispatch import main

__all__ = ["main"]
