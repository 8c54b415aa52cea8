"""How a command ends when the person or the pipe in front of it goes away.

- Ctrl-C (SIGINT): a short line on stderr and exit 130 (128 + SIGINT, what a shell
  reports for a command it interrupted), no traceback. A command whose work goes on
  elsewhere (a rebuild inside the daemon) says so first, with `on_interrupt`.
- A closed pipe (`leadsync status --json | head -1`): nothing on stderr and exit 141
  (128 + SIGPIPE, what a shell reports for a C tool that SIGPIPE killed), the rest of
  the output dropped. Python ignores SIGPIPE, so the write raises BrokenPipeError
  instead; rich's consoles would exit 1 on it, and are made to raise it here too.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

from actors.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED

POLL_SECONDS = 0.5

_note = ""


def on_interrupt(note: str) -> None:
    """What Ctrl-C from now on should add to "interrupted" (where the work goes on)."""
    global _note
    _note = note


@contextmanager
def waiting(description: str, poll: Callable[[], str | None] | None = None) -> Iterator[None]:
    """While the daemon does work it answers for only at the end (a rebuild, a batch
    run): on a terminal, a spinner with the time so far and what `poll` says of the
    work (asked every POLL_SECONDS, from a thread: "5,000 of 20,000 profiles"), on
    stderr; nothing otherwise (a log file or a pipe would fill with redraws)."""
    if not sys.stderr.isatty():
        yield
        return
    columns = (SpinnerColumn(), "{task.description}", TimeElapsedColumn())
    done = threading.Event()
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)

        def follow(poll: Callable[[], str | None]) -> None:
            while not done.wait(POLL_SECONDS):
                said = poll()
                progress.update(task, description=f"{description}: {said}" if said else description)

        if poll is not None:
            threading.Thread(target=follow, args=(poll,), name="progress", daemon=True).start()
        try:
            yield
        finally:
            done.set()


def run(main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    Console.on_broken_pipe = _pipe_closed  # type: ignore[method-assign,assignment]
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not after this function returned
    except KeyboardInterrupt:
        start = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C
        print(f"{start}leadsync: interrupted{'; ' + _note if _note else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whatever is still buffered for stdout goes nowhere, so that flushing it at
        # exit does not fail (and print a traceback) again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _pipe_closed(console: Console) -> None:
    raise BrokenPipeError
