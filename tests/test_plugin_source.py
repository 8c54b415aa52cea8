"""A source kind that exists only here, installed as operators install a plugin (a
package with a `leadsync.sources` entry point): read from daemon.toml with file:line
errors, its own rules across sources (its `check`) said by check-config, accepted by
check-config, started by the daemon, its events logged, merged
and scored like any others, and its position (a file offset) committed with its
events, so that after kill -9 it reads on from there: nothing twice, nothing lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.plugins import check_config, install_plugin

LINES_KIND = '''
"""A source that reads a file of Segment messages, one a line, as it grows."""

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio

from actors import tracking_api
from actors.runtime import Actor
from actors.source_kinds import SourceProblem, SourceSettings, register


@register
class LinesSource(SourceSettings, tag="lines", tag_field="type", kw_only=True, frozen=True):
    path: str

    @classmethod
    def check(cls, named):
        first = {}
        return [
            SourceProblem(name, ("path",), f"sources.{first[s.path]} reads that file already")
            for name, s in named.items()
            if first.setdefault(s.path, name) != name
        ]

    @classmethod
    async def start(cls, named, host):
        return [
            (f"lines:{name}", lambda name=name, s=s: Lines(host.context(name), Path(s.path)))
            for name, s in named.items()
        ]


class Lines(Actor):
    def __init__(self, context, path):
        super().__init__(f"lines:{context.name}")
        self.context, self.path, self.stopping = context, path, anyio.Event()

    def stop(self):
        self.stopping.set()

    async def run(self, ready):
        offset = int(await self.context.cursor() or 0)
        ready()
        while not self.stopping.is_set():
            data = self.path.read_bytes()[offset:] if self.path.exists() else b""
            whole = data[: data.rfind(b"\\n") + 1]
            if whole:
                now = datetime.now(UTC)
                batch = [json.loads(line) for line in whole.splitlines()]
                body = json.dumps({"batch": batch}).encode()
                parsed = tracking_api.parse("batch", body, self.context.name, now)
                await self.context.room()
                offset += len(whole)
                await self.context.submit(
                    parsed.events, tracking_api.iso(now), parsed.rejected, cursor=str(offset)
                )
            with anyio.move_on_after(0.1):
                await self.stopping.wait()
'''


def append(path: Path, *messages: dict[str, Any]) -> None:
    """No messageId: a line read twice would be logged twice, so only the committed
    cursor keeps the count right."""
    with path.open("a") as file:
        for message in messages:
            file.write(json.dumps(message) + "\n")


def test_a_plugin_source_is_configured_checked_and_resumes_from_its_cursor(
    tmp_path: Path, make_daemon: Callable[..., DaemonProcess]
) -> None:
    env = install_plugin(tmp_path / "site", "lines_kind", LINES_KIND, "leadsync.sources", "lines")
    feed = tmp_path / "feed.jsonl"
    table = f'[sources.crm]\ntype = "lines"\npath = "{feed}"\n'

    typo = tmp_path / "typo.toml"
    typo.write_text(table.replace("path =", "pth ="))
    refused = check_config(typo, env)
    assert f"{typo}:3: sources.crm.pth: unknown key" in refused.stderr
    assert "a source's type must be one of: http" in check_config(typo, {}).stderr
    twice = tmp_path / "twice.toml"
    twice.write_text(table + table.replace("[sources.crm]", "[sources.crm2]"))
    clash = check_config(twice, env)
    assert clash.returncode != 0
    assert f"{twice}:6: sources.crm2.path: sources.crm reads that file already" in clash.stderr

    daemon = make_daemon(table)
    accepted = check_config(daemon.config_path, env)
    assert accepted.returncode == 0, accepted.stderr
    assert "source     crm (type lines, kind server)" in accepted.stdout

    def logged() -> list[str]:
        rows = daemon.query("SELECT body FROM events WHERE source = 'crm' ORDER BY seq")
        return [json.loads(body).get("event") or json.loads(body)["type"] for (body,) in rows]

    append(feed, {"type": "identify", "userId": "ann-1", "traits": {"email": "ann@x.io"}})
    append(feed, {"type": "track", "userId": "ann-1", "event": "Pricing"})
    daemon.start(env=env)
    wait_for(lambda: logged() == ["identify", "Pricing"])
    wait_for(lambda: daemon.query("SELECT count(*) FROM identities WHERE value = 'ann-1'"))

    daemon.kill()
    append(feed, {"type": "track", "userId": "ann-1", "event": "Demo Requested"})
    daemon.start(env=env)
    wait_for(lambda: len(logged()) >= 3)
    assert logged() == ["identify", "Pricing", "Demo Requested"]
    [(profile,)] = daemon.query("SELECT profile FROM identities WHERE value = 'ann@x.io'")
    assert daemon.query("SELECT profile FROM identities WHERE value = 'ann-1'") == [(profile,)]
