"""`leadsync run`: the daemon in the foreground, and the exit code each way it can
fail to start (systemd's unit acts on them: docs/systemd.md)."""

from __future__ import annotations

import argparse

import anyio
import structlog

from actors import logs
from actors.exit_codes import EXIT_CONFIG, EXIT_STORAGE
from daemon.cli.options import Commands, command
from daemon.config import LoadedConfig
from daemon.datadir import DataDirHeld


def add_commands(commands: Commands) -> None:
    run = command(commands, "run", "run the daemon in the foreground")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    from daemon.app import CannotOpenStorage, CannotScore, serve  # only `run` needs these
    from daemon.ingestion import CannotStartSources

    try:
        return anyio.run(serve, config, loaded.path)
    except DataDirHeld as exc:
        structlog.get_logger("daemon").critical(str(exc))
        return DataDirHeld.exit_code
    except CannotOpenStorage as exc:
        structlog.get_logger("daemon").critical("cannot open storage", error=str(exc))
        return EXIT_STORAGE
    except CannotScore as exc:
        structlog.get_logger("daemon").critical("no usable scoring model", error=str(exc))
        return EXIT_CONFIG
    except CannotStartSources as exc:
        structlog.get_logger("daemon").critical("a source cannot start", error=str(exc))
        return EXIT_CONFIG
