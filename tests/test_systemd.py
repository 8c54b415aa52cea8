"""systemd integration, as systemd sees it, and the unit file we ship.

The daemon is started exactly as systemd starts a Type=notify service: NOTIFY_SOCKET
names a datagram socket that the test binds and reads, as PID 1 would. What systemd
acts on is what is asserted: READY=1 only once the API answers, WATCHDOG=1 pings while
the loop runs, STOPPING=1 on SIGTERM, and the unit's settings agreeing with the code's.
"""

from __future__ import annotations

import queue
import re
import shlex
import socket
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.destinations.file import FileDestination
from actors.exit_codes import EXIT_CONFIG
from daemon.config import DaemonSection, parse
from tests.support.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "leadsync.service"
DOCS = ROOT / "docs" / "systemd.md"
README = ROOT / "README.md"

WAIT = 20.0
"""How long to wait for a message that must come; a bound on a hang, not a measurement."""


class NotifySocket:
    """The receiving end of sd_notify, read continuously as systemd reads it.

    Reading on a thread matters: Linux queues only a few datagrams per Unix socket
    (net.unix.max_dgram_qlen), and past that the daemon's blocking send would stall
    its event loop, which is not what happens under systemd.
    """

    _MARK = "X-TEST-END-OF-MESSAGES=1"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._received: queue.Queue[list[str]] = queue.Queue()
        self.messages: list[list[str]] = []
        """Every datagram taken by `next_with` or `drain`, each as its lines, in order."""
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                return
            if self._closing.is_set():
                return  # close() shut the socket down, which wakes recv() with b""
            self._received.put(data.decode().splitlines())

    def next_with(self, line: str) -> list[str]:
        """The next datagram that contains `line`; fails the test if none comes."""
        while True:
            try:
                message = self._received.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no {line!r} from the daemon; received so far: {self.messages}")
            self.messages.append(message)
            if line in message:
                return message

    def drain(self) -> None:
        """Take every datagram sent so far (call once the daemon has exited).

        A marker sent from here queues behind everything the daemon sent, since a
        Unix datagram socket delivers in order; reading up to it leaves nothing behind
        in the kernel or on the reader thread.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(self._MARK.encode(), str(self.path))
        self.next_with(self._MARK)
        self.messages.pop()

    def count(self, line: str) -> int:
        return sum(line in message for message in self.messages)

    def close(self) -> None:
        self._closing.set()
        self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(WAIT)
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A NOTIFY_SOCKET for the daemon, and an environment with no systemd variables of
    the test runner's own (pytest itself might run under a service with a watchdog)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "notify"
    if len(str(path)) >= 100:  # sun_path is 108 bytes; pytest's tmp_path can get long
        pytest.skip(f"temporary path too long for a Unix socket: {path}")
    notify = NotifySocket(path)
    yield notify
    notify.close()


def test_ready_after_listeners_watchdog_pings_and_stopping_on_sigterm(
    make_daemon: Callable[..., DaemonProcess], notify_socket: NotifySocket
) -> None:
    daemon = make_daemon()
    # systemd also sets WATCHDOG_PID to the service's pid, which cannot be known before
    # the start; without it the watchdog is taken as the daemon's own (as libsystemd's
    # sd_watchdog_enabled does). 200 ms means a ping every 100 ms.
    daemon.start(
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}, wait=False
    )

    ready = notify_socket.next_with("READY=1")
    # systemd lets ordered units start at READY=1, so by then both listeners must be up
    # and the daemon must already call itself ready.
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5):
        pass
    assert daemon.admin("/readyz")[0] == 200
    assert "STATUS=serving" in ready

    for _ in range(3):
        notify_socket.next_with("WATCHDOG=1")

    assert daemon.terminate() == 0
    notify_socket.drain()
    assert notify_socket.count("READY=1") == 1
    assert ["STOPPING=1", "STATUS=draining"] in notify_socket.messages


def test_watchdog_meant_for_another_process_is_not_fed(
    make_daemon: Callable[..., DaemonProcess], notify_socket: NotifySocket
) -> None:
    """WATCHDOG_PID names the process systemd watches; a child that inherited the
    variables (a helper the service spawns, say) must not ping on its behalf."""
    daemon = make_daemon()
    daemon.start(
        env={
            "NOTIFY_SOCKET": str(notify_socket.path),
            "WATCHDOG_USEC": "200000",
            "WATCHDOG_PID": "1",
        },
        wait=False,
    )
    notify_socket.next_with("READY=1")
    assert daemon.terminate() == 0
    notify_socket.drain()
    assert notify_socket.count("STOPPING=1") == 1
    # When the watchdog is ours, the first ping goes out before READY=1 (the pinger
    # starts before the actors do), so by the exit there would have been at least one.
    assert notify_socket.count("WATCHDOG=1") == 0


# --- the unit file -----------------------------------------------------------------------


Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value, in order, as systemd reads them.

    Not configparser: systemd allows a key more than once (SystemCallFilter=,
    Environment=) and an empty assignment resets the list, which configparser cannot
    express.
    """
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def seconds(span: str) -> float:
    """A systemd time span ("45s", "1min 30s", "90") in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


@pytest.fixture(scope="module")
def service() -> dict[str, str]:
    """The [Service] section, one value per key: the last one, which is what counts for
    a single-valued key ("" for a key emptied on purpose, like CapabilityBoundingSet=)."""
    section = parse_unit(UNIT.read_text())["Service"]
    return {key: values[-1] if values else "" for key, values in section.items()}


def test_unit_is_a_hardened_notify_service(service: dict[str, str]) -> None:
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service.get("DynamicUser") == "yes" or service.get("User")
    assert service["StateDirectory"] == "leadsync"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    # Emptied, not absent: absent would leave every capability in the bounding set.
    assert service["CapabilityBoundingSet"] == ""
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # `systemctl reload` is SIGHUP, which redeploys the scoring model file.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_unit_waits_longer_than_the_drain_before_sigkill(service: dict[str, str]) -> None:
    """Past shutdown_grace the daemon gives up by itself and exits 124; systemd's SIGKILL
    must come later, or a long drain is cut off with no exit code and no last log line."""
    assert seconds(service["TimeoutStopSec"]) > DaemonSection().shutdown_grace


def test_unit_does_not_restart_on_a_config_error(service: dict[str, str]) -> None:
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()


def test_unit_runs_the_console_script_installed_where_the_docs_put_it(
    service: dict[str, str],
) -> None:
    argv = shlex.split(service["ExecStart"])
    script = Path(argv[0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert script.name in scripts
    assert argv[1] == "run"
    config_path = argv[argv.index("--config") + 1]
    assert Path(config_path).parent == Path("/etc") / service["ConfigurationDirectory"]
    venv = script.parent.parent
    for doc in (DOCS, README):
        text = doc.read_text()
        assert f"python3 -m venv {venv}" in text, doc
        assert config_path in text, doc


def test_docs_config_keeps_the_database_in_the_state_directory(service: dict[str, str]) -> None:
    """Under ProtectSystem=strict the StateDirectory is the only writable place; a
    daemon.toml that points data_dir anywhere else cannot open its database (exit 73)."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert blocks, "docs/systemd.md shows no daemon.toml"
    environ = {name: "x" for block in blocks for name in re.findall(r'"env:(\w+)"', block)}
    configs = [parse(block, "docs/systemd.md", environ) for block in blocks]
    state_directory = f"/var/lib/{service['StateDirectory']}"
    assert {config.daemon.data_dir for config in configs} == {state_directory}
    # A file destination writes there too, for the same reason.
    paths = [
        d.path for c in configs for d in c.destinations.values() if isinstance(d, FileDestination)
    ]
    assert paths
    assert all(path.startswith(state_directory + "/") for path in paths)
    assert f'data_dir = "{state_directory}"' in README.read_text()
