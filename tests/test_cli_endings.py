"""A command ends cleanly when interrupted or when its pipe closes: a short line (or
nothing) and the conventional exit code, never a traceback."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.daemon_process import DaemonProcess


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["status"], "leadsync: interrupted\n"),
        (
            ["identity", "rebuild"],
            "leadsync: interrupted; the rebuild goes on in the daemon "
            "(its log says when it is done)\n",
        ),
        (
            ["scoring", "run"],
            "leadsync: interrupted; the batch run goes on in the daemon "
            "(`leadsync status` shows its end)\n",
        ),
        (
            ["forget", "user_id:ann-1"],
            "leadsync: interrupted; the erase goes on in the daemon "
            "(its log says when it is done)\n",
        ),
    ],
)
def test_ctrl_c_while_the_daemon_works_ends_with_a_line_and_130(
    command: list[str], said: str
) -> None:
    with socket.socket() as admin:  # a daemon busy with the request: it never answers
        admin.bind(("127.0.0.1", 0))
        admin.listen()
        url = f"http://127.0.0.1:{admin.getsockname()[1]}"
        cli = subprocess.Popen(
            [sys.executable, "-m", "daemon", *command, "--admin", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        connection = accepted(admin, cli)  # the command has sent its request and waits
        with connection:
            connection.recv(4096)
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=30)
    assert (cli.returncode, out, err) == (130, "", said)


def test_a_closed_pipe_ends_a_listing_quietly_with_141(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """As in `leadsync status --json | head -1`, with the reader gone before any write."""
    daemon = make_daemon().start()
    for shape in (["--json"], []):  # print() and rich
        read, write = os.pipe()
        os.close(read)
        try:
            cli = subprocess.run(
                [sys.executable, "-m", "daemon", "status", *shape],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=30,
                check=False,
                env={**os.environ, "COLUMNS": "200"},
                cwd=daemon.directory,
            )
        finally:
            os.close(write)
        assert (cli.returncode, cli.stderr) == (141, ""), shape


def test_on_a_terminal_a_batch_run_in_the_daemon_shows_it_is_running() -> None:
    """stderr a terminal: a spinner says what the daemon is doing while the command
    waits for it, and Ctrl-C then says the work goes on there."""
    controller, terminal = pty.openpty()
    with socket.socket() as admin:
        admin.bind(("127.0.0.1", 0))
        admin.listen()
        url = f"http://127.0.0.1:{admin.getsockname()[1]}"
        cli = subprocess.Popen(
            [sys.executable, "-m", "daemon", "scoring", "run", "--admin", url],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
        )
        os.close(terminal)
        connection = accepted(admin, cli)
        with connection:
            shown = read_until(controller, b"scoring every profile in the daemon (a batch run)")
            cli.send_signal(signal.SIGINT)
            shown += read_until(controller, b"(`leadsync status` shows its end)")
            assert cli.wait(30) == 130
    os.close(controller)
    assert b"leadsync: interrupted; the batch run goes on in the daemon" in shown


def accepted(admin: socket.socket, cli: subprocess.Popen[Any]) -> socket.socket:
    """The command's connection; a command that ends, or hangs, before it connects
    fails the test with what it said, instead of leaving it waiting for ever."""
    admin.settimeout(30)
    try:
        connection, _ = admin.accept()
    except TimeoutError:
        cli.kill()
        _, err = cli.communicate(timeout=30)
        raise AssertionError(
            f"the command never connected (exit {cli.returncode}): {err}"
        ) from None
    return connection


def read_until(fd: int, wanted: bytes, seconds: float = 30) -> bytes:
    """What the terminal shows, up to and including `wanted`."""
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"{wanted!r} not shown; the terminal had {seen!r}")
        seen += os.read(fd, 4096)
    return seen
