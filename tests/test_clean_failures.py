"""Failures an operator meets, each ending in one clear line and its own exit code:
tracebacks without local variables, a port already in use, a second daemon on a data
dir that one already uses."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from tests.daemon_process import DaemonProcess

CRASHING_ACTOR = textwrap.dedent(
    """
    import sys
    from collections.abc import Callable

    import anyio

    from actors.runtime import Actor
    from daemon import logs
    from daemon.config import Duration, RestartPolicy
    from daemon.supervisor import ActorSpec, Supervisor

    logs.configure("info", sys.argv[1])


    class Leaky(Actor):
        async def run(self, ready: Callable[[], None]) -> None:
            api_secret = "-".join(["sk", "live", "never", "logged"])  # not in the source
            raise RuntimeError("the actor broke " + str(len(api_secret)))


    async def main() -> int:
        policy = RestartPolicy(max_restarts=1, backoff_initial=Duration(0.01))
        supervisor = Supervisor(policy, 5.0)
        supervisor.add(ActorSpec("leaky", lambda: Leaky("leaky")))
        return await supervisor.run()


    sys.exit(anyio.run(main))
    """
)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_crashing_actor_logs_its_traceback_without_local_variables(fmt: str) -> None:
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_ACTOR, fmt], capture_output=True, text=True, timeout=60
    )
    logged = re.sub(r"\x1b\[[0-9;]*m", "", crashed.stderr)  # the console's colours
    assert crashed.returncode == 70, logged
    assert "the actor broke 20" in logged
    assert "_supervise" in logged  # the traceback's frames are there
    assert "sk-live-never-logged" not in logged


@pytest.mark.parametrize("taken", ["http", "admin"])
def test_a_port_in_use_stops_the_daemon_at_once_with_one_line(
    make_daemon: Callable[..., DaemonProcess], taken: str
) -> None:
    daemon = make_daemon()
    port = daemon.http_port if taken == "http" else daemon.admin_port
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        daemon.start(wait=False)
        assert daemon.process is not None
        code = daemon.process.wait(60)
    assert code == 71, daemon.log()
    [line] = [line for line in daemon.log_lines() if line["level"] == "critical"]
    key = "[http] listen" if taken == "http" else "[admin] listen"
    assert key in line["event"]
    assert f"127.0.0.1:{port}: Address already in use" in line["event"]
    assert "Traceback" not in daemon.log()
    assert not [line for line in daemon.log_lines() if line["event"] == "actor crashed"]
