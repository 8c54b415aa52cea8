"""A destination kind that exists only here, installed as operators install a plugin
(a package with a `leadsync.destinations` entry point): read from daemon.toml with
file:line errors, accepted by check-config, and delivered to by a running daemon,
with nothing in leadsync edited for it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.plugins import check_config, install_plugin
from tests.support.posting import post
from tests.support.scoring import CTO

ECHO_KIND = '''
"""A destination that appends each payload to a file: a test's plugin."""

from pathlib import Path

from actors.delivery.sender import Sender
from actors.delivery.kinds import DestinationSettings, register


@register
class EchoDestination(DestinationSettings, tag="echo", tag_field="type", kw_only=True, frozen=True):
    ADDRESS = ("into",)
    into: str

    def sender(self, name):
        return EchoSender(Path(self.into))


class EchoSender(Sender):
    def __init__(self, into):
        self.into = into

    async def send(self, rows):
        with self.into.open("ab") as file:
            for row in rows:
                file.write(row.payload + b"\\n")
        return [None] * len(rows)
'''


def test_a_plugin_kind_is_configured_checked_and_sent_to(
    tmp_path: Path, make_daemon: Callable[..., DaemonProcess]
) -> None:
    env = install_plugin(tmp_path / "site", "echo_kind", ECHO_KIND, "leadsync.destinations", "echo")
    out = tmp_path / "echoed.jsonl"
    table = f'[destinations.echo]\ntype = "echo"\nmode = "realtime"\ninto = "{out}"\n'

    typo = tmp_path / "typo.toml"
    typo.write_text(table.replace("into =", "inot ="))
    refused = check_config(typo, env)
    assert refused.returncode != 0
    assert f"{typo}:4: destinations.echo.inot: unknown key" in refused.stderr
    unknown = check_config(typo, {})  # the plugin not installed: not a kind
    assert "a destination's type must be one of: file, segment, webhook" in unknown.stderr

    daemon = make_daemon(table)
    accepted = check_config(daemon.config_path, env)
    assert accepted.returncode == 0, accepted.stderr
    daemon.start(env=env)
    identify = {"type": "identify", "userId": "ann-1", "traits": CTO}
    assert post(daemon, [identify]) == 200

    wait_for(lambda: out.exists() and out.read_bytes().endswith(b"\n"))
    [line] = out.read_text().splitlines()
    payload = json.loads(line)
    assert payload["user_id"] == "ann-1"
    assert payload["profile"].startswith("prf_")
    assert payload["traits"]["mk_lead_grade"] in {"A", "B", "C", "D", "E"}
