"""The leadsync command as an operator runs it: a fresh interpreter, `python -m daemon`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
