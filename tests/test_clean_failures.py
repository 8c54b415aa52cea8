"""Failures an operator meets, each ending in one clear line and its own exit code:
tracebacks without local variables, a port already in use, a second daemon on a data
dir that one already uses."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable

import pytest

from tests.support.daemon_process import WRITE_KEYS, DaemonProcess, wait_for

CRASHING_ACTOR = textwrap.dedent(
    """
    import sys
    from collections.abc import Callable

    import anyio

    from actors.runtime import Actor
    from actors import logs
    from daemon.config import RestartPolicy
    from actors.settings import Duration
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


def test_a_listen_host_that_does_not_resolve_stops_the_daemon_with_one_line_naming_it(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon()
    config = daemon.config_path.read_text()
    address = f"127.0.0.1:{daemon.http_port}"
    daemon.config_path.write_text(config.replace(address, "nonexistent.invalid:8321"))
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(60) == 71, daemon.log()
    [line] = [line for line in daemon.log_lines() if line["level"] == "critical"]
    assert "nonexistent.invalid:8321: " in line["event"]
    assert "the host name does not resolve" in line["event"]
    assert "Unknown error" not in line["event"]


def identify(daemon: DaemonProcess, user_id: str) -> int:
    auth = base64.b64encode(f"{WRITE_KEYS['web']}:".encode()).decode()
    request = urllib.request.Request(
        daemon.url + "/v1/identify",
        data=json.dumps({"userId": user_id, "traits": {"plan": "pro"}}).encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_second_daemon_on_the_same_data_dir_refuses_and_the_first_serves_on(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    first = make_daemon(name="first").start()
    second = make_daemon(name="second")  # other ports, and first's data dir:
    data_dir = str(first.directory / "var")
    second.config_path.write_text(
        second.config_path.read_text().replace(str(second.directory / "var"), data_dir)
    )
    second.start(wait=False)
    assert second.process is not None
    assert first.process is not None
    assert second.process.wait(60) == 77, second.log()
    [refusal] = [line for line in second.log_lines() if line["level"] == "critical"]
    assert refusal["event"] == f"another leadsync (pid {first.process.pid}) holds {data_dir}"
    # It refused before touching the database, and the first daemon goes on serving.
    assert not [line for line in second.log_lines() if line["event"] == "storage open"]
    assert identify(first, "after-the-refusal") == 200
    assert wait_for(lambda: first.admin("/v1/profiles/user_id/after-the-refusal")[0] == 200)

    # However the holder ends (kill -9 here), the kernel drops its lock.
    first.kill()
    second.start()
    assert second.admin("/v1/profiles/user_id/after-the-refusal")[0] == 200
