"""A registry of component kinds by their `type` tag: the built-in ones, each a module of
one package, and plugins, found through an entry-point group. Destinations and sources
each have one (actors/delivery/kinds.py, actors/source_kinds.py)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Generic, TypeVar, cast

import msgspec

from actors.settings import ConfigError

_K = TypeVar("_K", bound=type[msgspec.Struct])
_T = TypeVar("_T", bound=type[msgspec.Struct])


class KindError(ConfigError):
    """A kind that cannot be registered as it is written, or a plugin that cannot be
    loaded: said as a config problem, since the config asks for the kinds."""


class Registry(Generic[_K]):
    """`what` names the components in messages ("destination"); `package` holds the
    built-in kinds, one module each; `plugins` is the entry-point group, whose entries
    name a module that registers its kind, or the settings class itself; `check` says
    what is wrong with a kind, if anything, beyond its tag."""

    def __init__(
        self,
        what: str,
        base: _K,
        package: ModuleType,
        plugins: str,
        check: Callable[[_K], str | None],
    ) -> None:
        self._what, self._base, self._package = what, base, package
        self._plugins, self._check = plugins, check
        self._kinds: dict[str, _K] = {}
        self._discovered = False

    def register(self, kind: _T) -> _T:
        """Make a kind known by its tag; a class decorator (a subclass of the base)."""
        name = getattr(kind, "__name__", repr(kind))
        if not isinstance(kind, type) or not issubclass(kind, self._base):
            raise KindError(
                f"{name}: not a kind of {self._what} (a subclass of {self._base.__name__})"
            )
        config = kind.__struct_config__
        if not isinstance(config.tag, str) or config.tag_field != "type":
            raise KindError(f'{name}: needs tag="NAME", tag_field="type"')
        if self._kinds.get(config.tag, kind) is not kind:
            raise KindError(f"{self._what} type {config.tag!r} is registered twice")
        known = cast(_K, kind)
        if (problem := self._check(known)) is not None:
            raise KindError(f"{kind.__name__}: {problem}")
        self._kinds[config.tag] = known
        return kind

    def kinds(self) -> dict[str, _K]:
        """Every kind by its `type`, in order: the built-in modules and the plugins each
        register their own when imported, so all are imported first (once a process)."""
        if not self._discovered:
            package = self._package
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package.__name__}.{module.name}")
            for entry in entry_points(group=self._plugins):
                # A plugin that fails half-way leaves nothing registered: asked again,
                # it fails the same way, not as a kind "registered twice".
                before = dict(self._kinds)
                try:
                    loaded = entry.load()
                    if isinstance(loaded, type):  # else a module, which registered its kind
                        self.register(loaded)
                except KindError as exc:
                    self._kinds = before
                    raise KindError(f"the {self._what} plugin {entry.name!r}: {exc}") from None
                except Exception as exc:
                    self._kinds = before
                    raise KindError(
                        f"the {self._what} plugin {entry.name!r} ({entry.value}) cannot be "
                        f"loaded: {type(exc).__name__}: {exc}"
                    ) from None
            self._discovered = True
        return dict(sorted(self._kinds.items()))
