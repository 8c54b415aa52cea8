"""daemon.toml: what an operator gets wrong is told back with the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.settings import ConfigError, Duration
from actors.sources.http import HttpSource
from daemon import config
from daemon.config import load, parse

REPO = Path(__file__).resolve().parent.parent


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, "daemon.toml", environ or {})
    return str(caught.value)


def test_the_commented_example_in_the_repository_is_valid() -> None:
    loaded = load(REPO / "daemon.toml")
    assert loaded.path.endswith("daemon.toml")
    assert loaded.config.sources  # it shows at least one source


def test_embedded_default_works_with_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load()
    assert loaded.path == "<embedded default>"
    assert loaded.config.daemon.data_dir == "./var"
    assert loaded.config.http.listen == "127.0.0.1:8321"
    assert loaded.config.admin.listen == "127.0.0.1:8320"
    default = loaded.config.sources["default"]
    assert isinstance(default, HttpSource)
    assert default.write_key is None  # generated on first start


def test_daemon_toml_in_the_working_directory_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "daemon.toml").write_text('[http]\nlisten = "127.0.0.1:9999"\n')
    assert load().config.http.listen.port == 9999


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        ('"500ms"', 0.5),
        ('"45s"', 45.0),
        ('"5m"', 300.0),
        ('"4h"', 14400.0),
        ('"1d"', 86400.0),
    ],
)
def test_durations_accept_numbers_and_units(value: str, seconds: float) -> None:
    grace = parse(f"[daemon]\nshutdown_grace = {value}\n", "x", {}).daemon.shutdown_grace
    assert isinstance(grace, Duration)
    assert grace == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon]\n\nshutdown_grace = "soon"\n',
            "daemon.toml:3: daemon.shutdown_grace: expected a duration such as 30",
        ),
        ('[http]\nlisten = "localhost"\n', 'daemon.toml:2: http.listen: expected "host:port"'),
        ('[http]\nlisten = "127.0.0.1:70000"\n', "a port from 0 to 65535"),
        ('[http]\nlisten = "::1"\n', 'an IPv6 address goes in brackets, as "[::1]:8321"'),
        ("[daemon]\nlog_levl = 'debug'\n", "daemon.toml:2: daemon.log_levl: unknown key"),
        (
            "[daemon.restart]\nmax_restarts = 0\n",
            "daemon.toml:2: daemon.restart.max_restarts: Expected `int` >= 1",
        ),
        ("[sources.web]\nkind = 'web'\n", "daemon.toml:1: sources.web: every source needs a type"),
        (
            "[sources.web]\ntype = 'kafka'\n",
            "daemon.toml:2: sources.web.type: Invalid value 'kafka'",
        ),
        (
            "[sources.web]\ntype = 'http'\nkind = 'tv'\n",
            "daemon.toml:3: sources.web.kind: Invalid enum value 'tv'",
        ),
        (
            "[sources.web]\ntype = 'http'\nwrite_key = 5\n",
            "daemon.toml:3: sources.web.write_key: Expected `str | null`, got `int`",
        ),
        (
            "[destinations.crm]\ntype = 'hubspot'\n",
            "daemon.toml:2: destinations.crm.type: Invalid value 'hubspot'; a destination's "
            "type must be one of: file, segment, webhook",
        ),
        (
            "[destinations.crm]\ntype = 'webhook'\nurl = 'https://x.io'\n",
            "daemon.toml:1: destinations.crm: Object missing required field `secret`",
        ),
        (
            "[destinations.crm]\ntype = 'webhook'\nurl = 'x.io'\nsecret = 's'\n",
            "daemon.toml:3: destinations.crm.url: expected an http:// or https:// URL",
        ),
        (
            "[destinations.f]\ntype = 'file'\npath = 'o'\nfilter = 'email =='\n",
            "daemon.toml:4: destinations.f.filter: not an expression",
        ),
        (
            "[destinations.f]\ntype = 'file'\npath = 'o'\nfilter = 'len(email) > 3'\n",
            "daemon.toml:4: destinations.f.filter: Function 'len' not defined",
        ),
        (
            "[destinations.f]\ntype = 'file'\npath = 'o'\n[destinations.f.fields]\ngrade = 'g'\n",
            "destinations.f.fields: 'grade': only mk_* score traits are mapped",
        ),
        (
            "[destinations.f]\ntype = 'file'\npath = 'o'\nmode = 'nightly'\n",
            "daemon.toml:4: destinations.f.mode: Invalid enum value 'nightly'",
        ),
        (
            "[destinations.f]\ntype = 'file'\npath = 'o'\n[destinations.f.rate]\nper = 0\n",
            "destinations.f.rate: per must be more than 0",
        ),
        ("[daemon\n", "daemon.toml: not valid TOML"),
        ("sources = 3\n", "daemon.toml:1: sources: expected a table of named sources"),
    ],
)
def test_errors_name_the_file_line_key_and_problem(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_two_sources_cannot_share_a_write_key() -> None:
    message = error_of(
        "[sources.a]\ntype = 'http'\nwrite_key = 'k'\n[sources.b]\ntype = 'http'\nwrite_key = 'k'\n"
    )
    assert message.startswith("daemon.toml:6: sources.b.write_key: the same write key")


def test_admin_and_ingest_cannot_share_a_port() -> None:
    message = error_of("[http]\nlisten = '127.0.0.1:9000'\n[admin]\nlisten = '127.0.0.1:9000'\n")
    assert "daemon.toml:4: admin.listen: same address as http.listen" in message


def test_secrets_come_from_the_environment() -> None:
    text = "[sources.web]\ntype = 'http'\nwrite_key = 'env:WEB_KEY'\n"
    loaded = parse(text, "daemon.toml", {"WEB_KEY": "s3cret"})
    web = loaded.sources["web"]
    assert isinstance(web, HttpSource)
    assert web.write_key == "s3cret"
    assert error_of(text) == (
        "daemon.toml:3: sources.web.write_key: environment variable WEB_KEY is not set "
        "(the value says env:WEB_KEY)"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config file"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[daemon]\nshutdown_grace = nan\n", "daemon.shutdown_grace: expected a finite duration"),
        ("[daemon]\nshutdown_grace = inf\n", "daemon.shutdown_grace: expected a finite duration"),
        ("[storage]\ncheckpoint_interval = 0\n", "storage.checkpoint_interval: must be more"),
    ],
)
def test_durations_that_would_break_the_daemon_later_are_refused_now(
    text: str, expected: str
) -> None:
    assert expected in error_of(text)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_bytes(b"[daemon]\ndata_dir = '\xe9t\xe9'\n")
    with pytest.raises(ConfigError, match=r"daemon\.toml: not UTF-8 text"):
        load(path)
