"""Both listeners (ingestion and admin) over raw sockets: idle and slow connections are
closed, a malformed request is one log line and a count, and no answer names aiohttp or
Python with their versions."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_process import WRITE_KEYS, DaemonProcess

GIVE_UP = 30.0
"""Seconds a test waits for the daemon to close a connection before it says it did not;
far above the 0.3 s timeouts configured here, far below aiohttp's hour."""
SHORT = "300ms"
"""The timeout under test: short, so that each test waits it out quickly. Requests
whose headers come in one piece (every other request here, and the readiness polls)
are parsed in the read that brings them, before any timer starts."""


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Idle connections close after 0.3 s; headers have all the time they like."""
    timeouts = f'keepalive_timeout = "{SHORT}"\nheader_timeout = "300s"'
    daemon = DaemonProcess(tmp_path_factory.mktemp("idle"), "", timeouts, timeouts)
    yield daemon.start()
    daemon.stop_quietly()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Headers must arrive within 0.3 s of their first byte; idle connections may stay."""
    timeouts = f'keepalive_timeout = "300s"\nheader_timeout = "{SHORT}"'
    daemon = DaemonProcess(tmp_path_factory.mktemp("strict"), "", timeouts, timeouts)
    yield daemon.start()
    daemon.stop_quietly()


def port_of(daemon: DaemonProcess, listener: str) -> int:
    return daemon.http_port if listener == "http" else daemon.admin_port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP)
    sock.settimeout(GIVE_UP)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection; False if it is still open
    after GIVE_UP seconds."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: (status, headers with lower-case names, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)


def keep_alive_request(listener: str, port: int) -> bytes:
    """A request each listener answers with success, keep-alive as HTTP/1.1 defaults to."""
    method, path = ("GET", "/healthz") if listener == "admin" else ("OPTIONS", "/v1/batch")
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def bad_requests(daemon: DaemonProcess, listener: str, reason: str) -> float:
    metrics = daemon.admin("/metrics")[1]
    pattern = (
        rf'^leadsync_http_bad_requests_total{{listener="{listener}",reason="{reason}"}} (\S+)$'
    )
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_a_connection_that_never_sends_a_request_is_closed_after_the_keepalive_timeout(
    idle: DaemonProcess, listener: str
) -> None:
    with connect(port_of(idle, listener)) as sock:
        assert closed_by_server(sock)


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(
    idle: DaemonProcess, listener: str
) -> None:
    port = port_of(idle, listener)
    with connect(port) as sock:
        sock.sendall(keep_alive_request(listener, port))
        status, headers, _ = read_response(sock)
        assert status in (200, 204)
        assert headers.get("connection", "keep-alive").lower() != "close"
        assert closed_by_server(sock)


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_a_client_trickling_its_headers_is_closed_after_the_header_timeout(
    strict: DaemonProcess, listener: str
) -> None:
    """Slowloris: a byte of a header line at a time, the line never ending. The
    keep-alive timeout (300 s) is not what closes it."""
    before = bad_requests(strict, listener, "header_timeout")
    port = port_of(strict, listener)
    closed = False
    with connect(port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
        deadline = time.monotonic() + GIVE_UP
        while not closed and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                closed = closed_by_server(sock)
                break
            try:
                sock.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed
    assert bad_requests(strict, listener, "header_timeout") == before + 1
    lines = [
        x for x in strict.log_lines() if x["event"] == "connection closed: request headers too slow"
    ]
    assert any(x["listener"] == listener for x in lines)


def test_a_body_slower_than_the_header_timeout_is_still_received(strict: DaemonProcess) -> None:
    """The header timeout bounds the request line and headers only: a client on a slow
    link may take longer over its body (the body has its own bound)."""
    body = json.dumps(
        {"batch": [{"type": "track", "event": "Slow", "userId": "u-slow", "messageId": "m-slow"}]}
    ).encode()
    auth = base64.b64encode(f"{WRITE_KEYS['web']}:".encode()).decode()
    with connect(strict.http_port) as sock:
        sock.sendall(
            f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        # About 1.2 s in all (four header timeouts), each piece within the header
        # timeout of the last.
        for start in range(0, len(body), 8):
            sock.sendall(body[start : start + 8])
            time.sleep(0.1)
        status, _, answer = read_response(sock)
    assert status == 200, answer


@pytest.mark.parametrize("listener", ["http", "admin"])
@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
    ],
    ids=["request-line", "header", "content-length"],
)
def test_a_malformed_request_is_one_log_line_and_a_count(
    strict: DaemonProcess, listener: str, raw: bytes
) -> None:
    before = bad_requests(strict, listener, "malformed")
    logged = len(strict.log_lines())
    status, headers, body = request(port_of(strict, listener), raw)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "malformed request" in json.loads(body)["message" if listener == "http" else "error"]
    assert bad_requests(strict, listener, "malformed") == before + 1
    new = [x for x in strict.log_lines()[logged:] if x["event"] == "malformed request"]
    assert [x["listener"] for x in new] == [listener]
    # aiohttp's own report was a multi-line traceback on stderr.
    assert "Traceback" not in strict.log()
    assert "Error handling request" not in strict.log()


AIOHTTP_OWN_ANSWERS = {
    "http": [
        (b"OPTIONS /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 204),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GET /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
    ],
    "admin": [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n", 200),
        (b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n", 404),
        (b"PUT /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n", 405),
        (b"GET /status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", 421),
        (b"GARBAGE\r\n\r\n", 400),
    ],
}


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_no_answer_names_the_server_software_or_its_version(
    strict: DaemonProcess, listener: str
) -> None:
    port = port_of(strict, listener)
    for raw, expected in AIOHTTP_OWN_ANSWERS[listener]:
        with connect(port) as sock:
            sock.sendall(raw.replace(b"{port}", str(port).encode()))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                assert chunk
                head += chunk
        status = int(head.split()[1])
        assert status == expected, head
        server = re.search(rb"^Server: (.*)\r$", head, re.MULTILINE | re.IGNORECASE)
        assert server is None or server.group(1) == b"leadsync", head
        assert b"aiohttp" not in head.lower(), head
        assert b"python" not in head.lower(), head


def test_a_timeout_of_zero_is_refused_for_it_would_mean_never(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text('[http]\nkeepalive_timeout = 0\n\n[admin]\nheader_timeout = "0s"\n')
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}:2: http.keepalive_timeout: must be more than 0" in result.stderr
