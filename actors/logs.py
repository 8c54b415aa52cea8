"""structlog set-up: JSON lines for journald and log shippers, readable on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Logs go to stderr (stdout stays free for command output).

    The filtering bound logger drops filtered calls before any processor runs, and
    loggers are cached on first use, so a debug line on a hot path costs next to
    nothing when debug is off.
    """
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    # Tracebacks without local variables, in both formats (structlog and rich show
    # them by default): they can hold secrets, tokens and whole events.
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
        if console
        else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not console:
        processors.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
