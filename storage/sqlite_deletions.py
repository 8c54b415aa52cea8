"""Deletion requests in the outbox: the payloads `leadsync forget` queues for the
destinations that take them ("deleted": true), for a profile that no longer exists.

Such a row belongs to no profile, so it holds a negative profile id of its own (below
every other row's), which is what marks it in the outbox: staging, which upserts by
(destination, profile id), never lands on it, and a rebuild, which renumbers the
profiles and drops the rows of profiles it does not have, leaves it be. It goes out,
and into the dead letters and back with `dlq replay`, like any row.
"""

from __future__ import annotations

import sqlite3

import msgspec

MAY_BE_DELETION = "instr(CAST(payload AS TEXT), '\"deleted\":true') > 0"
"""SQL true for every deletion request, and for any payload that merely contains the
text (a client's trait can): a first cut, which is_deletion confirms."""


class _Marked(msgspec.Struct):
    deleted: bool = False


_marked = msgspec.json.Decoder(_Marked).decode


def is_deletion(payload: bytes) -> bool:
    """Whether a payload is a deletion request: `"deleted": true` at its top level, not
    anywhere in it (a profile's traits carry what clients sent, objects too)."""
    try:
        return _marked(payload).deleted
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


def deletion_slot(db: sqlite3.Connection) -> int:
    """A profile id for one more deletion request: below every row's in the outbox."""
    return int(db.execute("SELECT min(0, coalesce(min(profile), 0)) - 1 FROM outbox").fetchone()[0])
