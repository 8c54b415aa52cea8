"""The event log's rows: what ingestion appends, what consumers read back, what
quarantine keeps of a refused message.

The backend's handle that appends them is `Storage` (storage/backend.py); the log's
own file is storage/sqlite_log.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

DEDUP_WINDOW = 600.0
"""Seconds for which a batch's messageIds are remembered after its commit, by default
(`[storage] dedup_window`): Segment's libraries retry for minutes. Sizing: the daemon
takes in, for long, only what its consumers apply, since past `http.max_backlog`
(1,000,000 by default) unapplied events it answers 429. So a window holds at most
about the merger's rate x window + max_backlog, at 9 bytes each (faster bursts last
only until the backlog is full; docs/benchmarks.md has the figures measured). What a
window holds is read back from the log at start."""


class EventRecord(msgspec.Struct, frozen=True):
    """One validated message ready for the log; `body` is the normalized event as JSON."""

    message_id: str
    type: str
    received_at: str
    body: bytes


class Rejected(msgspec.Struct, frozen=True):
    """A message refused at the door, kept so the operator can see what the client sent."""

    batch_index: int | None
    reason: str
    body: bytes


class AppendRequest(msgspec.Struct, frozen=True):
    """What one HTTP request (or one file chunk) adds: its events and its rejects."""

    source: str
    received_at: str
    events: Sequence[EventRecord]
    rejected: Sequence[Rejected] = ()
    cursor: str | None = None
    """The source's position after these events (a file offset, a query's last id),
    committed with them: a source that resumes from it reads each event once."""


class AppendResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int
    suppressed: int = 0
    """Events of forgotten people, dropped before the commit (actors/lifecycle.py)."""


class StoredEvent(msgspec.Struct, frozen=True):
    seq: int
    source: str
    body: bytes


class QuarantinedMessage(msgspec.Struct, frozen=True):
    id: int
    source: str
    received_at: str
    batch_index: int | None
    reason: str
    body: str
