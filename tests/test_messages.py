"""What leadsync says when something is off, as an operator reads it: config values
that must be one of a few, a SIGHUP that cannot apply everything, a destination name
mistyped, a receiver that is down, and counts (whole numbers, singular for one)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from tests.support.admin_api import run_batch
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess, free_port, wait_for
from tests.support.posting import post
from tests.support.scoring import CTO

FILES = '\n[destinations.out]\ntype = "file"\npath = "out"\nmode = "realtime"\n'


def test_a_value_not_among_the_choices_is_refused_with_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text('[destinations.f]\ntype = "file"\npath = "o"\nmode = "sometimes"\n')
    result = leadsync("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"leadsync: {path}:4: destinations.f.mode: Invalid enum value 'sometimes'; "
        'expected one of "realtime", "batch", "both"\n'
    )
    path.write_text('[daemon]\nlog_format = "xml"\n')
    result = leadsync_here("check-config", "--config", str(path))
    assert 'expected one of "auto", "json", "console"' in result.stderr


def test_dlq_names_an_unknown_destination_and_the_configured_ones(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon(FILES).start()
    config = str(daemon.config_path)
    for command in ("list", "replay"):
        result = leadsync("dlq", command, "--destination", "nope", "--config", config)
        assert result.returncode == 1, command
        assert result.stderr == "leadsync: unknown destination nope (configured: out)\n"
        assert result.stdout == ""
    known = leadsync_here("dlq", "list", "--destination", "out", "--config", config)
    assert (known.returncode, known.stdout) == (0, "no dead letters for out\n")


def test_a_receiver_that_is_down_over_http_is_reported_without_ssl(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    port = free_port()  # nothing listens there
    daemon = make_daemon(
        f'\n[destinations.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{port}/in"\n'
        'secret = "s"\nmode = "realtime"\n'
    ).start()
    assert post(daemon, [{"type": "identify", "userId": "ann", "traits": CTO}]) == 200

    def error() -> str | None:
        found: str | None = daemon.admin("/status")[1]["destinations"]["hook"]["last_error"]
        return found

    reason = wait_for(error)
    assert reason == (
        f"request failed: ClientConnectorError: cannot connect to 127.0.0.1:{port}: "
        "Connection refused"
    )
    assert "ssl" not in reason.lower()


def test_counts_are_whole_numbers_and_one_is_singular(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon(FILES).start()
    assert post(daemon, [{"type": "identify", "userId": "ann", "traits": CTO}]) == 200
    wait_for(lambda: daemon.admin("/v1/profiles/user_id/ann")[0] == 200)
    result = run_batch(daemon)
    assert result["profiles"] == 1
    assert type(result["profiles"]) is int
    raw = leadsync_here("status", "--config", str(daemon.config_path), "--json").stdout
    figures = json.loads(raw)["scoring"]["last_batch"]
    counts = {k: v for k, v in figures.items() if k not in ("seconds", "complete")}
    assert counts
    assert all(type(v) is int for v in counts.values()), figures
    assert '"profiles": 1,' in raw
    table = leadsync_here("status", "--config", str(daemon.config_path)).stdout
    assert " (1 profile in " in " ".join(table.split())  # as wrapped to the terminal


def test_sighup_names_the_sections_that_take_a_restart(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon(FILES).start()
    text = daemon.config_path.read_text()
    listen = f'listen = "127.0.0.1:{daemon.http_port}"'
    changed = text.replace('shutdown_grace = "20s"', 'shutdown_grace = "21s"').replace(
        listen, f"{listen}\nmax_backlog = 99999"
    )
    assert changed.count("21s") == 1
    assert "max_backlog" in changed
    daemon.config_path.write_text(changed)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    [warning] = wait_for(
        lambda: [line for line in daemon.log_lines() if "take a restart" in line["event"]]
    )
    assert warning["sections"] == ["daemon", "http"]


def test_backpressure_answers_count_events_in_words_that_agree() -> None:
    from actors.source_context import _events

    assert _events(1) == "1 event is"
    assert _events(20_000) == "20,000 events are"
    assert _events(1, "logged ") == "1 logged event is"
