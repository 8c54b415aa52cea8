"""What every benchmark measures the same way: memory, CPU, the log writer's commits."""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

from storage.sqlite import SqliteStorage

COMMITS = "leadsync_log_commit_duration_seconds_count"
COMMIT_SECONDS = "leadsync_log_commit_duration_seconds_sum"
COMMIT_EVENTS = "leadsync_log_commit_events_sum"


def migrate(path: Path) -> None:
    """A fresh database with the daemon's schema."""

    async def open_and_close() -> None:
        await (await SqliteStorage.open(path)).close()

    asyncio.run(open_and_close())


def peak_rss() -> int:
    """Of this process, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads (aiosqlite's writer thread too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, key: str) -> int:
    """A size from /proc/PID/status (VmHWM: peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"{key} not in /proc/{pid}/status")


def commit_figures(metrics: str) -> dict[str, float]:
    """The log writer's own account of its group commits, from the daemon's /metrics."""
    figures = dict.fromkeys((COMMITS, COMMIT_SECONDS, COMMIT_EVENTS), 0.0)
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in figures:
            figures[name] = float(value)
    return figures
