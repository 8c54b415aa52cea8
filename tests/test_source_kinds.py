"""The registry of source kinds: what a kind must say to be registered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import pytest

from actors.source_context import SourceHost
from actors.source_kinds import Build, KindError, SourceSettings, kinds, register


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
