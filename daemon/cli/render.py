"""How the commands print what is not a rich table: aligned columns, counts,
durations, and a progress bar that shows only on a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def print_columns(rows: list[list[str]], numbers: bool = True) -> None:
    """Plain aligned columns (easy to read, grep and diff); `numbers` right-aligns
    every column but the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if numbers and index else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("   ".join(cells).rstrip())


def count(number: float, thing: str, plural: str | None = None) -> str:
    """ "1 profile", "2,000 profiles"; `plural` where an added s would be wrong."""
    many = f"{thing}s" if plural is None else plural
    return f"{int(number):,} {thing if number == 1 else many}"


def duration(seconds: float) -> str:
    """ "1h05m" or "4m09s": an uptime, a rotation interval."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Bar:
    """A progress bar on stderr when it is a terminal, and nothing otherwise (a log
    file or a pipe would fill with redraws). Messages go around it."""

    def __init__(self, description: str, unit: str) -> None:
        self._progress: Progress | None = None
        if not sys.stderr.isatty():
            return
        columns = (
            [BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            if unit == "bytes"
            else [MofNCompleteColumn()]
        )
        self._progress = Progress(
            "{task.description}", *columns, console=Console(stderr=True), transient=True
        )
        self._task = self._progress.add_task(description, total=None)

    def __enter__(self) -> Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def update_bytes(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def say(self, text: str) -> None:
        if self._progress is None:
            print(text, file=sys.stderr)
        else:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
