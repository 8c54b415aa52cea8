"""What every destination kind has, and the registry of kinds by their `type`.

A destination kind is one module of actors/destinations/ (or a folder of small ones), or a
module of another package installed with a `leadsync.destinations` entry point. It
holds its settings: a subclass of DestinationSettings tagged with its `type` and
decorated with `register`, which says where the kind sends (ADDRESS: a destination
pointed elsewhere has nothing yet and is sent everything again) and builds its
sender. daemon/config.py reads every kind from `kinds()`; nothing lists them by hand.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

import actors.destinations as destinations
from actors.delivery.sender import Sender
from actors.registry import KindError as KindError
from actors.registry import Registry
from actors.settings import Duration, Positive


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """At most `requests` calls in any window of `per` seconds (the way HubSpot and
    Salesforce count), and at most `daily` in a UTC day (kept across restarts)."""

    requests: Positive = 10
    per: Duration = Duration(1)
    daily: Positive | None = None


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Failed sends wait first_delay, then twice as long each time (at most
    max_delay, each ±25% at random); after `attempts` in all, the dead-letter table.
    The defaults spread nine retries over about two hours."""

    attempts: Positive = 10
    first_delay: Duration = Duration(15)
    max_delay: Duration = Duration(3600)


Mode = Literal["realtime", "batch", "both"]


class DestinationSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What every destination has; see the commented daemon.toml for each key. A kind
    subclasses it with tag="its type", tag_field="type"."""

    ADDRESS: ClassVar[tuple[str, ...]] = ()
    """The settings that say where it sends (a URL, a host and key, a directory)."""
    URL_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Settings that must be http:// or https:// URLs (checked with the file's line)."""
    LEGACY_ADDRESS: ClassVar[bool] = False
    """The built-in kinds: their fingerprints keep the shape they had before kinds said
    what their address is (actors/delivery/staging.py), so an upgrade resends nothing."""
    DELETES: ClassVar[bool] = False
    """Takes a deletion request (a payload with "deleted": true) when a person is
    forgotten; see docs/destinations.md for what each kind keeps."""

    mode: Mode = "batch"
    filter: str | None = None
    """A Python-like expression over the profile's traits, identifiers and mk_* scores;
    only profiles for which it is true are sent."""
    fields: dict[str, str] = {}
    """mk_* trait -> the destination's name for it. Empty: every mk_* trait as is."""
    rate: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    timeout: Duration = Duration(30)
    batch_size: Positive | None = None
    """Profiles per call; None means the API's maximum."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Calls in flight at once (the rate limit still holds)."""

    @property
    def kind(self) -> str:
        """The `type` key: segment, webhook, file, or a kind registered elsewhere."""
        return str(self.__struct_config__.tag)

    def sender(self, name: str) -> Sender:
        """The Sender that delivers to this destination, named `name` in daemon.toml."""
        raise NotImplementedError(f"destination type {self.kind!r} builds no sender")


def _problem(kind: type[DestinationSettings]) -> str | None:
    if not kind.ADDRESS:
        return "ADDRESS must name the settings that say where it sends"
    fields = set(kind.__struct_fields__)
    for what in ("ADDRESS", "URL_FIELDS"):
        if unknown := [f for f in getattr(kind, what) if f not in fields]:
            return f"{what} names {', '.join(map(repr, unknown))}, not settings of this kind"
    if kind.sender is DestinationSettings.sender:
        return "defines no sender()"
    return None


PLUGINS = "leadsync.destinations"
"""The entry-point group of destination kinds installed as packages of their own."""
_REGISTRY = Registry("destination", DestinationSettings, destinations, PLUGINS, _problem)
register = _REGISTRY.register
kinds = _REGISTRY.kinds
