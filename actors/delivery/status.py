"""What one destination shows in /status and /metrics."""

from __future__ import annotations

import msgspec


class DestinationStatus(msgspec.Struct, frozen=True):
    """What /status and /metrics show of one destination at one moment
    (`DestinationActor.status`): its actor replaces it whole, never changes it."""

    type: str
    mode: str
    state: str = "starting"
    queued: int = 0
    held: int = 0
    dead_letters: int = 0
    sent: int = 0
    failed: int = 0
    dead_lettered: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    rate: float = 0.0
    """Calls per second over the last rate window."""
    paused_for: float = 0.0
    """Seconds left of a pause (Retry-After, or the destination down)."""
    used_today: int = 0
    """Calls in the current UTC day, for the daily cap."""
    lag: float | None = None
    """Seconds from score stored to acknowledgement recorded, for the oldest record of
    the last call that delivered any (the histogram in /metrics has them all)."""
    writing: str | None = None
    """What the sender writes to now, if it says (the file destination's part file)."""
