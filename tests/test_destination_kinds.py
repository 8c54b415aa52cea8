"""The registry of destination kinds: what a kind must say to be registered, and the
resync fingerprints of the built-in kinds, which are stored with each destination's
state and must not change across versions."""

from __future__ import annotations

import pytest

from actors.delivery.kinds import DestinationSettings, KindError, kinds, register
from actors.delivery.sender import Sender
from actors.delivery.staging import fingerprint
from daemon.config import parse


def test_the_built_in_kinds_are_found_without_a_list() -> None:
    assert {"file", "segment", "webhook"} <= set(kinds())


def test_a_kind_that_does_not_say_where_it_sends_or_how_is_refused() -> None:
    class Nowhere(DestinationSettings, tag="nowhere", tag_field="type", frozen=True):
        def sender(self, name: str) -> Sender:
            raise NotImplementedError

    class Mute(DestinationSettings, tag="mute", tag_field="type", frozen=True):
        ADDRESS = ("url",)
        url: str = ""

    class Twin(DestinationSettings, tag="webhook", tag_field="type", frozen=True):
        ADDRESS = ("url",)
        url: str = ""

        def sender(self, name: str) -> Sender:
            raise NotImplementedError

    with pytest.raises(KindError, match="ADDRESS"):
        register(Nowhere)
    with pytest.raises(KindError, match="no sender"):
        register(Mute)
    with pytest.raises(KindError, match="'webhook' is registered twice"):
        register(Twin)
    assert "nowhere" not in kinds()


def test_the_fingerprints_of_built_in_destinations_are_those_of_earlier_versions() -> None:
    """Digests computed by the version before kinds registered themselves: a change
    would make every destination look new after an upgrade and receive everything."""
    config = parse(
        """
[destinations.s]
type = "segment"
write_key = "wk"
[destinations.w]
type = "webhook"
url = "https://example.com/hook"
secret = "x"
fields = {mk_fit = "fit"}
[destinations.f]
type = "file"
path = "/tmp/out"
filter = "mk_fit > 10"
""",
        "t",
    )
    assert {name: fingerprint(d) for name, d in config.destinations.items()} == {
        "s": ("2e57a012976b14e6", "f430e673d93ac3f8"),
        "w": ("a7ea6c2c94a401b7", "946b4e279367b5e0"),
        "f": ("ef0d93263b49cd74", "c3a9f2d26b2ef4ac"),
    }


def test_an_address_that_names_no_setting_is_refused() -> None:
    class Typo(DestinationSettings, tag="typo", tag_field="type", frozen=True):
        ADDRESS = ("endpoint",)
        URL_FIELDS = ("endpiont",)
        endpoint: str = ""

        def sender(self, name: str) -> Sender:
            raise NotImplementedError

    with pytest.raises(KindError, match="URL_FIELDS names 'endpiont'"):
        register(Typo)


def test_a_plugin_kinds_fingerprint_is_its_address_alone() -> None:
    """Where it sends is what ADDRESS names: a setting called `path` that is not its
    address does not make it look new when it changes."""

    class Api(DestinationSettings, tag="api-fp", tag_field="type", frozen=True):
        ADDRESS = ("base",)
        base: str = ""
        path: str = "/v1"

        def sender(self, name: str) -> Sender:
            raise NotImplementedError

    v1, v2, moved = Api(base="https://a"), Api(base="https://a", path="/v2"), Api(base="https://b")
    assert fingerprint(v1)[0] == fingerprint(v2)[0] != fingerprint(moved)[0]
