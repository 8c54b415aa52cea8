"""What every source kind has, and the registry of kinds by their `type`.

A source kind is one module of actors/sources/ (or a folder of small ones), or a
module of another package installed with a `leadsync.sources` entry point. It holds
its settings: a subclass of SourceSettings tagged with its `type` and decorated with
`register`, whose `start` makes the actors that take in its sources' events through
their SourceContext (actors/source_context.py). daemon/config.py and daemon/app.py
read every kind from `kinds()`; nothing lists them by hand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple, Self

import msgspec

import actors.sources as sources
from actors.registry import KindError as KindError
from actors.registry import Registry
from actors.runtime import Actor
from actors.source_context import SourceHost

ClientKind = Literal["web", "ios", "android", "server"]

Build = tuple[str, Callable[[], Actor]]
"""An actor's name and how to make it (again, when the supervisor restarts it)."""


class SourceProblem(NamedTuple):
    """A rule across a kind's sources broken: said at `sources.<source>.<key...>`."""

    source: str
    key: tuple[str, ...]
    message: str


class SourceSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What every source has; a kind subclasses it with tag="its type", tag_field="type"."""

    kind: ClientKind = "server"
    """What sends its events (likelihood weights may differ by it)."""

    @property
    def type(self) -> str:
        """The `type` key: http, or a kind registered elsewhere."""
        return str(self.__struct_config__.tag)

    @classmethod
    def check(cls, named: Mapping[str, Self]) -> list[SourceProblem]:
        """Rules across this kind's sources (`named`: all of them) that no one
        source's fields can say, such as two sharing a key; checked with the config,
        before anything starts. None by default."""
        return []

    @classmethod
    async def start(cls, named: Mapping[str, Self], host: SourceHost) -> list[Build]:
        """The actors that take in the events of every source of this kind (`named`),
        each source submitting through `host.context(name)`. Called once at start."""
        raise NotImplementedError(f"source type {cls.__struct_config__.tag!r} starts nothing")


def _problem(kind: type[SourceSettings]) -> str | None:
    start = inspect.getattr_static(kind, "start")
    if start is inspect.getattr_static(SourceSettings, "start"):
        return "defines no start()"
    if not isinstance(start, classmethod):
        return "start must be an async classmethod"
    return None


PLUGINS = "leadsync.sources"
"""The entry-point group of source kinds installed as packages of their own."""
_REGISTRY = Registry("source", SourceSettings, sources, PLUGINS, _problem)
register = _REGISTRY.register
kinds = _REGISTRY.kinds
