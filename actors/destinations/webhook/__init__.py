"""The webhook destination: signed JSON POSTs to a URL the operator owns.

One POST per call:

    POST <url>
    Content-Type: application/json
    User-Agent: leadsync/<version>
    X-Leadsync-Timestamp: 1700000000
    X-Leadsync-Signature: v1=<hex HMAC-SHA256(secret, b"1700000000." + body)>

    {"sent_at": "2023-11-14T22:13:20.000Z",
     "profiles": [{"id": "<delivery id>", "staged_at": "...", "profile": "...",
                   "traits": {...}, "user_id": ..., "email": ..., "anonymous_id": ...}]}

The timestamp is signed with the body (as Stripe does), so a captured request cannot be
replayed later: `verify` is the receiver's check, and refuses a timestamp more than five
minutes away from its own clock. A delivery id names one payload of one profile, so a
receiver can drop a repeat: a send whose answer was lost is sent again.

The receiver answers 2xx when it took the batch. To refuse some records and keep the
rest, it answers 2xx with `{"rejected": [{"index": i, "error": "...", "retryable": b}]}`
(index into "profiles"; retryable false unless said): those records are retried or
dead-lettered one by one. Any other answer concerns the whole call (see `_judge`).
"""

from __future__ import annotations

from actors.delivery.kinds import DestinationSettings, register
from actors.delivery.sender import Sender


@register
class WebhookDestination(
    DestinationSettings, tag="webhook", tag_field="type", kw_only=True, frozen=True
):
    """Signed JSON POSTs; docs/destinations.md says how a receiver verifies them."""

    ADDRESS = ("url",)
    LEGACY_ADDRESS = True
    URL_FIELDS = ("url",)
    DELETES = True

    url: str
    secret: str
    """The HMAC-SHA256 key. Use env:NAME so daemon.toml holds no secret."""

    def sender(self, name: str) -> Sender:
        # Loaded here: reading the config registers this kind and need not load the
        # HTTP client (every CLI command reads the config).
        from actors.destinations.webhook.sender import WebhookSender

        return WebhookSender(self)
