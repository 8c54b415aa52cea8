"""Schema migrations, applied in order at start; `PRAGMA user_version` records the last one.

Append new migrations; never edit one that has shipped, because a database in the
field has already run it.
"""

MIGRATIONS: list[str] = [
    # 1: the event log, consumer checkpoints, quarantined input, small key/value facts.
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        type        TEXT NOT NULL,
        received_at TEXT NOT NULL,
        body        BLOB NOT NULL
    );
    CREATE UNIQUE INDEX events_by_message_id ON events (source, message_id);

    CREATE TABLE checkpoints (
        consumer   TEXT PRIMARY KEY,
        seq        INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        received_at TEXT NOT NULL,
        batch_index INTEGER,
        reason      TEXT NOT NULL,
        body        BLOB NOT NULL
    );

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]
