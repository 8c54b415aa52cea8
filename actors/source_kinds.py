"""What every source kind has, and the registry of kinds by their `type`.

A source kind is one module of actors/sources/ (or a folder of small ones), or a
module of another package installed with a `leadsync.sources` entry point. It holds
its settings: a subclass of SourceSettings tagged with its `type` and decorated with
`register`, whose `start` makes the actors that take in its sources' events through
their SourceContext (actors/source_context.py). daemon/config.py and daemon/app.py
read every kind from `kinds()`; nothing lists them by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Literal, Self, TypeVar

import msgspec

import actors.sources as sources
from actors.runtime import Actor
from actors.settings import ConfigError
from actors.source_context import SourceHost

ClientKind = Literal["web", "ios", "android", "server"]

Build = tuple[str, Callable[[], Actor]]
"""An actor's name and how to make it (again, when the supervisor restarts it)."""


class SourceSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What every source has; a kind subclasses it with tag="its type", tag_field="type"."""

    kind: ClientKind = "server"
    """What sends its events (likelihood weights may differ by it)."""

    @property
    def type(self) -> str:
        """The `type` key: http, or a kind registered elsewhere."""
        return str(self.__struct_config__.tag)

    @classmethod
    async def start(cls, named: Mapping[str, Self], host: SourceHost) -> list[Build]:
        """The actors that take in the events of every source of this kind (`named`),
        each source submitting through `host.context(name)`. Called once at start."""
        raise NotImplementedError(f"source type {cls.__struct_config__.tag!r} starts nothing")


_S = TypeVar("_S", bound=type[SourceSettings])
_KINDS: dict[str, type[SourceSettings]] = {}

PLUGINS = "leadsync.sources"
"""The entry-point group of source kinds installed as packages of their own."""
_discovered = False


class KindError(ConfigError):
    """A source kind that cannot be registered as it is written, or a plugin that cannot
    be loaded: said as a config problem, since the config asks for the kinds."""


def register(kind: _S) -> _S:
    """Make a kind known by its tag; a class decorator."""
    tag = kind.__struct_config__.tag
    if not isinstance(tag, str) or kind.__struct_config__.tag_field != "type":
        raise KindError(f'{kind.__name__}: needs tag="NAME", tag_field="type"')
    if _KINDS.get(tag, kind) is not kind:
        raise KindError(f"source type {tag!r} is registered twice")
    if kind.start.__func__ is SourceSettings.start.__func__:  # type: ignore[attr-defined]
        raise KindError(f"{kind.__name__}: defines no start()")
    _KINDS[tag] = kind
    return kind


def kinds() -> dict[str, type[SourceSettings]]:
    """Every source kind by its `type`: the modules of actors/sources/ and the plugins
    installed each register their own when imported, so all are imported first (once)."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(sources.__path__):
            importlib.import_module(f"{sources.__name__}.{module.name}")
        for entry in entry_points(group=PLUGINS):
            try:
                loaded = entry.load()
            except Exception as exc:
                raise KindError(
                    f"the source plugin {entry.name!r} ({entry.value}) cannot be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if isinstance(loaded, type) and issubclass(loaded, SourceSettings):
                register(loaded)
        _discovered = True
    return dict(sorted(_KINDS.items()))
