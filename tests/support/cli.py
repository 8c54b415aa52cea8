"""The leadsync command as an operator runs it: a fresh interpreter, `python -m daemon`;
or, where that process adds nothing to what a test proves, `daemon.cli.main` in this one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest.mock import patch

import structlog

from daemon.cli import main


def leadsync(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `leadsync ARGS` in `cwd`, with `env` added to this environment, and return
    what it printed and its exit code; a command that hangs fails the test after 30 s
    rather than holding the suite."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def leadsync_here(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`leadsync ARGS` run by `daemon.cli.main` in this process, with `env` added to the
    environment while it runs, returned as `leadsync` returns it: what it printed
    (stdout, stderr) and its exit code. A fresh interpreter costs some 0.2 s of CPU in
    imports alone, and the suite runs a few hundred commands.

    For a command whose process proves nothing more: a test of what it prints, answers
    or changes, whose command is also run by `leadsync` somewhere. Not where the test
    is about a lock or a pid (this process is the test's), signals or a closed pipe,
    what the environment holds beyond `env`, or log lines (loggers this process used
    before keep their set-up, so the command's log lines may go to pytest rather than
    into stderr here); never `run`; and not inside an event loop (commands run their
    own)."""
    out, err = io.StringIO(), io.StringIO()
    logging = structlog.get_config()
    try:
        with patch.dict(os.environ, env or {}), redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's usage errors, --help and --version
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        # As the conftest does after a test: the very configuration put back.
        if structlog.get_config() != logging:
            structlog.configure(**logging)
    return subprocess.CompletedProcess(["leadsync", *args], code, out.getvalue(), err.getvalue())
