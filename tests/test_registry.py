"""The kinds' registry: a plugin that fails while it loads is said as a config problem,
and leaves nothing of itself behind."""

from __future__ import annotations

import types
from typing import Any

import msgspec
import pytest

from actors import registry
from actors.registry import KindError, Registry


class Base(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Entry:
    """An entry point whose module registers a kind, then fails."""

    name = "half"
    value = "half_kind"

    def __init__(self, kinds: Registry[type[Base]]) -> None:
        self.kinds = kinds

    def load(self) -> Any:
        @self.kinds.register
        class Half(Base, tag="half", tag_field="type", frozen=True, kw_only=True):
            pass

        raise ImportError("no module named 'missing_dependency'")


def test_a_plugin_that_fails_half_way_registers_nothing_and_fails_alike_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinds = Registry("widget", Base, types.ModuleType("empty"), "leadsync.widgets", lambda k: None)
    kinds._package.__path__ = []  # no built-in kinds
    monkeypatch.setattr(registry, "entry_points", lambda group: [Entry(kinds)])
    said = []
    for _ in range(2):
        with pytest.raises(KindError) as raised:
            kinds.kinds()
        said.append(str(raised.value))
        assert "half" not in kinds._kinds
    assert (
        said
        == [
            "the widget plugin 'half' (half_kind) cannot be loaded: "
            "ImportError: no module named 'missing_dependency'"
        ]
        * 2
    )
