"""The listeners' settings: how long a connection may idle or take to send its headers
([http] and [admin]), and the ingestion listener's [http] section. Apart from the
listeners themselves, so that reading the config loads no HTTP server."""

from __future__ import annotations

import msgspec

from actors.settings import Duration, ListenAddress, Positive


class Connections(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How long a listener keeps a connection that is idle, or slow to send headers."""

    keepalive_timeout: Duration = Duration(75)
    header_timeout: Duration = Duration(10)


class HttpSection(Connections, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The Segment-compatible ingestion listener shared by every `type = "http"` source."""

    listen: ListenAddress = ListenAddress("127.0.0.1:8321")
    max_pending_events: Positive = 20_000
    max_backlog: Positive = 1_000_000
