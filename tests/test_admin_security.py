"""The admin API against what a browser on the operator's machine, or a neighbour on the
network, can send it: DNS rebinding, cross-site requests, forms, and no token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import leadsync_here
from tests.support.daemon_process import DaemonProcess, free_port

TOKEN = "a-test-token-0123456789abcdef"
TOKEN_VAR = "LEADSYNC_TEST_ADMIN_TOKEN"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module: a token, and two names besides its own address."""
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("guarded"),
        admin_config=(
            f'hosts = ["leadsync.internal", "ops.example:9999"]\ntoken = "env:{TOKEN_VAR}"'
        ),
    )
    daemon.start(env={TOKEN_VAR: TOKEN})
    yield daemon
    daemon.stop_quietly()


def leadsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/status"), ("GET", "/metrics"), ("POST", "/v1/scoring/run")]
)
def test_a_host_header_naming_another_site_is_refused_421(
    guarded: DaemonProcess, method: str, path: str
) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1 once the page has loaded, and
    the browser sends its own name as Host."""
    port = guarded.admin_port
    for host in (f"evil.example:{port}", "evil.example", "127.0.0.1"):  # no port: port 80
        status, body = guarded.admin(path, method, TOKEN, {"Host": host})
        assert status == 421, (host, body)
        assert repr(host) in body["error"]
        assert "admin.hosts" in body["error"]


def test_the_admin_api_answers_to_its_own_names_and_admin_hosts(guarded: DaemonProcess) -> None:
    port = guarded.admin_port
    accepted = [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
        f"LEADSYNC.internal:{port}",  # names are case-insensitive
        "leadsync.internal",  # as a reverse proxy forwards it
        "ops.example:9999",
    ]
    for host in accepted:
        assert guarded.admin("/status", token=TOKEN, headers={"Host": host})[0] == 200, host
    # A name listed with a port is that port only.
    assert guarded.admin("/status", token=TOKEN, headers={"Host": f"ops.example:{port}"})[0] == 421


def test_health_probes_answer_any_host_without_a_token(guarded: DaemonProcess) -> None:
    """Load balancers and orchestrators probe by IP address and carry no token."""
    for path in ("/healthz", "/readyz"):
        status, body = guarded.admin(path, headers={"Host": "10.1.2.3:8320"})
        assert status == 200, body


def test_cross_site_requests_are_refused_403_with_the_reason(guarded: DaemonProcess) -> None:
    port = guarded.admin_port
    refused: list[dict[str, str]] = [
        {"Origin": "http://evil.example"},
        {"Origin": f"http://evil.example:{port}"},
        {"Origin": "null"},  # a sandboxed frame or a file: page
        {"Origin": f"http://localhost:{port}"},  # another name of this API: still another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of this host is another origin
    ]
    for headers in refused:
        for method, path in (("GET", "/status"), ("POST", "/v1/scoring/run")):
            status, body = guarded.admin(path, method, TOKEN, headers)
            assert status == 403, (headers, body)
            assert "cross-site request refused" in body["error"]
    allowed: list[dict[str, str]] = [
        {"Origin": f"http://127.0.0.1:{port}"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ]
    for headers in allowed:
        assert guarded.admin("/status", token=TOKEN, headers=headers)[0] == 200, headers


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # what fetch(..., {mode: "no-cors"}) and navigator.sendBeacon send
        "application/x-www-form-urlencoded",  # a <form>
        "multipart/form-data; boundary=x",
        None,  # no body and no type: what `curl -X POST` sends
    ],
)
def test_actions_take_only_json_and_refuse_forms_415(
    guarded: DaemonProcess, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/v1/scoring/run", "/v1/identity/rebuild", "/v1/destinations/files/sync"):
        status, body = guarded.admin(path, "POST", TOKEN, headers)
        assert status == 415, (path, body)
        assert "application/json" in body["error"]


def test_an_action_sent_as_json_with_an_empty_body_runs(guarded: DaemonProcess) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8"):
        status, body = guarded.admin(
            "/v1/scoring/run", "POST", TOKEN, {"Content-Type": content_type}
        )
        assert status == 200, body
        assert "profiles" in body


@pytest.mark.parametrize(
    "path", ["/status", "/metrics", "/quarantine", "/v1/profiles/user_id/nobody"]
)
def test_with_a_token_every_endpoint_but_the_probes_needs_it(
    guarded: DaemonProcess, path: str
) -> None:
    for authorization in (None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        headers = {} if authorization is None else {"Authorization": authorization}
        status, body = guarded.admin(path, headers=headers)
        assert status == 401, (authorization, body)
        assert "Bearer" in body["error"]
    status, _ = guarded.admin(path, token=TOKEN)
    assert status == (404 if path.startswith("/v1/profiles") else 200)
    status, _ = guarded.admin("/v1/scoring/run", "POST")
    assert status == 401


def test_the_cli_sends_the_token_from_its_config(guarded: DaemonProcess) -> None:
    config = str(guarded.config_path)
    status = leadsync_here("status", "--config", config, "--json", env={TOKEN_VAR: TOKEN})
    assert status.returncode == 0, status.stderr
    run = leadsync("scoring", "run", "--config", config, env={TOKEN_VAR: TOKEN})
    assert run.returncode == 0, run.stderr
    assert "batch run done" in run.stdout


def test_the_cli_without_the_token_says_which_key_it_needs(guarded: DaemonProcess) -> None:
    config = str(guarded.config_path)
    no_token = leadsync("status", "--config", config)
    wrong_token = leadsync_here("status", "--config", config, env={TOKEN_VAR: "not-the-token"})
    for result in (no_token, wrong_token):
        assert result.returncode == 69, result.stderr
        assert "the admin API at" in result.stderr
        assert "refused" in result.stderr
        assert f"admin.token in {config}" in result.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]", "192.0.2.10"])
def test_an_admin_api_beyond_loopback_without_a_token_is_refused(
    tmp_path: Path, listen: str
) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f"[daemon]\ndata_dir = '{tmp_path / 'var'}'\n\n[admin]\nlisten = '{listen}:{free_port()}'\n"
    )
    for command in ("check-config", "run"):
        result = leadsync(command, "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert f"leadsync: {path}:5: admin.listen:" in result.stderr
        assert 'admin.token is required: add token = "env:NAME" to [admin]' in result.stderr
    assert not (tmp_path / "var").exists()

    path.write_text(path.read_text() + f'token = "env:{TOKEN_VAR}"\n')
    result = leadsync_here("check-config", "--config", str(path), env={TOKEN_VAR: TOKEN})
    assert result.returncode == 0, result.stderr
    assert "(bearer token required)" in result.stdout
    result = leadsync_here("check-config", "--config", str(path), env={TOKEN_VAR: " "})
    assert result.returncode == 2
    assert f"{path}:6: admin.token: is empty" in result.stderr


def test_a_name_in_admin_hosts_that_is_not_a_host_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text('[admin]\nhosts = ["ok.example", "http://leadsync.internal/"]\n')
    result = leadsync("check-config", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:2: admin.hosts[1]: expected a host name or address" in result.stderr
