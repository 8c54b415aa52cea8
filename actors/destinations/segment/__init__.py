"""The `segment` destination: identify calls carrying the mk_* traits, through
Segment's HTTP tracking API (`POST /v1/batch`), or any API that speaks it (another
leadsync included).

Each identify's messageId is derived from the profile and the payload's hash, so a
send repeated after a lost acknowledgement is dropped by the receiver's
deduplication (Segment's, or leadsync's own) instead of being counted twice.
Segment answers 200 for everything it can parse; leadsync answers 200 with the
indexes of the messages it refused, or 400 with them when it refused them all: both
are read per record.
"""

from __future__ import annotations

from actors.delivery.kinds import DestinationSettings, RateLimit, register
from actors.delivery.sender import Sender
from actors.settings import Duration


@register
class SegmentDestination(
    DestinationSettings, tag="segment", tag_field="type", kw_only=True, frozen=True
):
    """identify calls with the mk_* traits, to Segment or any Segment-compatible API."""

    ADDRESS = ("host", "write_key")
    LEGACY_ADDRESS = True
    URL_FIELDS = ("host",)

    write_key: str
    host: str = "https://api.segment.io"
    rate: RateLimit = RateLimit(requests=50, per=Duration(1))
    """Segment asks for under 50 calls a second."""

    def sender(self, name: str) -> Sender:
        # Loaded here: reading the config registers this kind and need not load the
        # HTTP client (every CLI command reads the config).
        from actors.destinations.segment.sender import SegmentSender

        return SegmentSender(self)
