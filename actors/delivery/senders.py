"""The Sender for each kind of destination in daemon.toml."""

from __future__ import annotations

from actors.delivery.sender import Sender
from actors.destinations.file import FileSender
from actors.destinations.segment import SegmentSender
from actors.destinations.webhook import WebhookSender
from daemon.config import Destination, FileDestination, SegmentDestination


def sender_for(name: str, config: Destination) -> Sender:
    if isinstance(config, SegmentDestination):
        return SegmentSender(config)
    if isinstance(config, FileDestination):
        return FileSender(name, config)
    return WebhookSender(config)
