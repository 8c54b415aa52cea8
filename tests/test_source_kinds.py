"""The registry of source kinds: what a kind must say to be registered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Self

import msgspec
import pytest

from actors.source_context import SourceHost
from actors.source_kinds import Build, KindError, SourceSettings, kinds, register
from tests.support.plugins import install_plugin, leadsync_with


def test_the_http_kind_is_found_without_a_list() -> None:
    assert "http" in kinds()


def test_a_kind_that_starts_nothing_or_takes_a_known_type_is_refused() -> None:
    class Idle(SourceSettings, tag="idle", tag_field="type", frozen=True):
        pass

    class Twin(SourceSettings, tag="http", tag_field="type", frozen=True):
        @classmethod
        async def start(cls, named: Mapping[str, Self], host: SourceHost) -> list[Build]:
            return []

    with pytest.raises(KindError, match="no start"):
        register(Idle)
    with pytest.raises(KindError, match="'http' is registered twice"):
        register(Twin)
    assert "idle" not in kinds()


def test_a_kind_written_wrong_is_refused_with_what_is_wrong() -> None:
    class Plain(SourceSettings, tag="plain", tag_field="type", frozen=True):
        async def start(self, named: object, host: object) -> list[Build]:  # type: ignore[override]
            return []

    class Stranger(msgspec.Struct, tag="stranger", tag_field="type"):
        pass

    with pytest.raises(KindError, match="start must be an async classmethod"):
        register(Plain)
    with pytest.raises(KindError, match="not a kind of source"):
        register(Stranger)


BOOM_KIND = """
from actors.source_kinds import SourceSettings, register


@register
class Boom(SourceSettings, tag="boom", tag_field="type", frozen=True):
    @classmethod
    async def start(cls, named, host):
        raise RuntimeError("the plugin's own bug")
"""


def test_a_source_that_cannot_start_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site", "boom_kind", BOOM_KIND, "leadsync.sources", "boom")
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "var"}"\nlog_format = "json"\n'
        f'[http]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
        '[sources.crm]\ntype = "boom"\n'
    )
    run = leadsync_with(env, "run", "--config", str(config))
    assert run.returncode == 2, run.stderr
    assert "sources.crm (type boom) did not start: RuntimeError: the plugin's own bug" in run.stderr
    assert "Traceback" not in run.stderr
