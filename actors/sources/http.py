"""The `http` source: Segment's tracking API, one write key a source, every http source
on the one listener of [http] (actors/http_source.py)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Self

import structlog

from actors.http_settings import HttpSection
from actors.source_context import SourceHost
from actors.source_kinds import Build, SourceProblem, SourceSettings, register
from storage.backend import Storage

log = structlog.get_logger(__name__)

GENERATED_KEY = "generated_write_key:{}"
"""The meta row that keeps a source's generated write key (`leadsync sources` reads it)."""


@register
class HttpSource(SourceSettings, tag="http", tag_field="type", frozen=True, kw_only=True):
    """One write key on the Segment-compatible API.

    A missing write_key means "generate one on first start and keep it in data_dir",
    which is what the embedded default config uses so `leadsync run` works with no file.
    """

    write_key: str | None = None

    @classmethod
    def check(cls, named: Mapping[str, Self]) -> list[SourceProblem]:
        """A write key says which source an event came from: no two may share one."""
        problems: list[SourceProblem] = []
        owners: dict[str, str] = {}
        for name, source in named.items():
            if source.write_key is None:
                continue
            if (owner := owners.get(source.write_key)) is not None:
                problems.append(
                    SourceProblem(
                        name,
                        ("write_key",),
                        f"the same write key is already used by sources.{owner}; "
                        "each source needs its own",
                    )
                )
            else:
                owners[source.write_key] = name
        return problems

    @classmethod
    async def start(cls, named: Mapping[str, Self], host: SourceHost) -> list[Build]:
        settings: HttpSection = host.config.http
        keys = await write_keys(named, host.storage)
        kinds: dict[str, str] = {name: source.kind for name, source in named.items()}
        # Here, not at the top: reading the config registers this kind, and need not
        # load the HTTP server (every CLI command reads the config).
        from actors.http_source import HttpSourceActor

        return [("http", lambda: HttpSourceActor(settings, host, keys, kinds))]


async def write_keys(named: Mapping[str, HttpSource], storage: Storage) -> dict[str, str]:
    """Each source's write key; one generated on first start is kept in the database.
    A generated key is logged in full once, when generated; later starts say where it is."""
    keys: dict[str, str] = {}
    for name, source in named.items():
        if source.write_key is not None:
            keys[name] = source.write_key
            continue
        meta_key = GENERATED_KEY.format(name)
        key = await storage.get_meta(meta_key)
        if key is None:
            key = secrets.token_urlsafe(24)
            await storage.set_meta(meta_key, key)
            log.warning(
                "generated a write key, shown this once (`leadsync sources` shows it again); "
                "set sources.<name>.write_key to choose one",
                source=name,
                write_key=key,
            )
        else:
            log.info(
                "using the write key generated at first start: `leadsync sources` shows it",
                source=name,
            )
        keys[name] = key
    return keys
