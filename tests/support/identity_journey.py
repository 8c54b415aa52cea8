"""The cross-device journey from the identity issue, as Segment messages, and ways to
look at the graph the daemon built from it, as an operator reading SQLite would."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from storage.graph import Activity

DESKTOP, MOBILE, USER, EMAIL = "aaa-aaa-aaa", "bbb-bbb-bbb", "97980cfea0067", "peter@initech.com"


def journey(suffix: str = "") -> list[dict[str, Any]]:
    """Seven steps with fixed event times; `suffix` keeps examples apart in one database."""
    desktop, mobile, user = DESKTOP + suffix, MOBILE + suffix, USER + suffix
    email = EMAIL.replace("@", f"{suffix}@")
    return [
        {
            "type": "page",
            "anonymousId": desktop,
            "name": "Pricing",
            "messageId": f"m1{suffix}",
            "timestamp": "2026-03-01T10:00:00Z",
        },
        {
            "type": "identify",
            "anonymousId": desktop,
            "traits": {"email": email.upper(), "newsletter": True},
            "messageId": f"m2{suffix}",
            "timestamp": "2026-03-01T10:05:00Z",
        },
        {
            "type": "track",
            "anonymousId": mobile,
            "event": "Application Installed",
            "messageId": f"m3{suffix}",
            "timestamp": "2026-03-02T08:00:00Z",
        },
        {
            "type": "identify",
            "userId": user,
            "anonymousId": desktop,
            "traits": {"name": "Peter Gibbons", "title": "Engineer", "plan": "trial"},
            "messageId": f"m4{suffix}",
            "timestamp": "2026-03-03T09:00:00Z",
        },
        {
            "type": "identify",
            "userId": user,
            "anonymousId": mobile,
            "traits": {"plan": "pro"},
            "messageId": f"m5{suffix}",
            "timestamp": "2026-03-04T09:00:00Z",
        },
        {
            "type": "track",
            "userId": user,
            "event": "transaction_succeeded",
            "properties": {"revenue": 99},
            "messageId": f"m6{suffix}",
            "timestamp": "2026-03-04T09:01:00Z",
        },
    ]


def email_opened(suffix: str = "") -> dict[str, Any]:
    """Customer.io reports by email only; its webhook source will log exactly this."""
    return {
        "type": "track",
        "event": "Email Opened",
        "source": "customerio",
        "messageId": f"m7{suffix}",
        "receivedAt": "2026-03-05T12:00:00.000Z",
        "timestamp": "2026-03-05T12:00:00.000Z",
        "context": {"traits": {"email": EMAIL.replace("@", f"{suffix}@")}},
    }


def profiles(database: Path) -> dict[str, dict[str, Any]]:
    """Every profile: its identities, trait values and counts, keyed by profile id."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        out: dict[str, dict[str, Any]] = {}
        for uid, activity in db.execute("SELECT uid, activity FROM profiles"):
            act = msgspec.json.decode(activity, type=Activity)
            out[uid] = {
                "identities": set(),
                "traits": {name: stamp.value for name, stamp in act.traits.items()},
                "events": act.events,
                "sources": act.sources,
                "first_seen": act.first_seen,
                "last_seen": act.last_seen,
            }
        for uid, kind, value in db.execute(
            "SELECT p.uid, i.kind, i.value FROM identities i JOIN profiles p ON p.id = i.profile"
        ):
            out[uid]["identities"].add(f"{kind}:{value}")
        return out


def as_schema_5(path: Path) -> None:
    """The graph as leadsync wrote it before migrations 6, 7, 8 and 9."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            ALTER TABLE identities ADD COLUMN activity BLOB NOT NULL DEFAULT x'7b7d';
            CREATE TABLE old_changes (uid TEXT PRIMARY KEY, reasons INTEGER NOT NULL,
                                      seq INTEGER NOT NULL) WITHOUT ROWID;
            INSERT INTO old_changes SELECT uid, reasons, id FROM profile_changes;
            DROP TABLE profile_changes;
            ALTER TABLE old_changes RENAME TO profile_changes;
            CREATE INDEX profile_changes_by_seq ON profile_changes (seq);
            DROP TABLE held;
            DROP TABLE suppressions;
            DROP TABLE erasures;
            DELETE FROM meta WHERE key = 'suppression_salt';
            PRAGMA user_version = 5;
            """
        )
