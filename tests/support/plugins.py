"""A plugin installed as operators install one: a module, and its distribution's
metadata with an entry point, on a path of its own that a process is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def install_plugin(site: Path, module: str, source: str, group: str, kind: str) -> dict[str, str]:
    """`source` as module `module`, registered under `kind` in the entry-point `group`;
    the environment a process needs to find it."""
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / f"leadsync_{kind}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: leadsync-{kind}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{kind} = {module}\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def leadsync_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`leadsync ARGS`, with `env` added to the environment (a daemon run that fails
    to start ends within the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`leadsync check-config` on `path`, with `env` added to the environment."""
    return leadsync_with(env, "check-config", "--config", str(path))
