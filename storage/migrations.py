"""Schema migrations, applied in order at start; `PRAGMA user_version` records the last one.

Two files, two lists: the event log (LOG_MIGRATIONS) and everything derived from it
(MIGRATIONS). Append new migrations; never edit one that has shipped, because a
database in the field has already run it.
"""

import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from storage.errors import SchemaTooNew

log = structlog.get_logger(__name__)


def migrate(
    db: sqlite3.Connection,
    path: Path,
    migrations: list[str],
    before: dict[int, Callable[[], None]] | None = None,
) -> None:
    """Bring the file at `path` up to date, a transaction a migration; `before[n]` runs
    just before migration n."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this leadsync knows "
            f"({len(migrations)}); run the newer leadsync or restore a backup"
        )
    for number, script in enumerate(migrations[version:], start=version + 1):
        if before and number in before:
            before[number]()
        db.execute("BEGIN IMMEDIATE")
        try:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) >= number:
                # Another process (a daemon starting, an offline rebuild) applied it
                # between our read of the version and the lock.
                db.execute("ROLLBACK")
                continue
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled it back already
                db.execute("ROLLBACK")
            raise
        log.info("schema migrated", path=str(path), version=number)


SCORE_COLUMNS = (
    "fit_score, fit_segment, fit_signals, fit_model, fit_at, "
    "ltb_score, ltb_segment, ltb_signals, ltb_model, ltb_at, grade, inputs"
)
"""The columns profile_scores and account_scores share, after their key."""

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
    # 2: the identity graph. Identifiers point straight at their profile (union-find
    # with full path compression); links keep the earliest event that joined two
    # identifiers, so a conflict can be re-decided in event-time order.
    """
    CREATE TABLE profiles (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        uid         TEXT NOT NULL UNIQUE,
        anchor_ts   TEXT NOT NULL,
        anchor_kind TEXT NOT NULL,
        anchor_value TEXT NOT NULL,
        user_id     TEXT,
        account_id  TEXT,
        kinds       BLOB NOT NULL,
        activity    BLOB NOT NULL
    );
    CREATE INDEX profiles_by_account ON profiles (account_id) WHERE account_id IS NOT NULL;

    CREATE TABLE identities (
        id       INTEGER PRIMARY KEY,
        kind     TEXT NOT NULL,
        value    TEXT NOT NULL,
        profile  INTEGER NOT NULL,
        first_ts TEXT NOT NULL,
        activity BLOB NOT NULL
    );
    CREATE UNIQUE INDEX identities_by_key ON identities (kind, value);
    CREATE INDEX identities_by_profile ON identities (profile);

    CREATE TABLE identity_links (
        a   INTEGER NOT NULL,
        b   INTEGER NOT NULL,
        ts  TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (a, b)
    ) WITHOUT ROWID;
    CREATE INDEX identity_links_by_b ON identity_links (b);

    CREATE TABLE profile_redirects (
        uid     TEXT PRIMARY KEY,
        profile INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX profile_redirects_by_profile ON profile_redirects (profile);

    CREATE TABLE identity_merges (
        id         INTEGER PRIMARY KEY,
        survivor   TEXT NOT NULL,
        merged     TEXT NOT NULL,
        reason     TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        message_id TEXT NOT NULL
    );

    CREATE TABLE profile_events (
        node INTEGER NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (node, seq)
    ) WITHOUT ROWID;

    CREATE TABLE accounts (
        group_id   TEXT PRIMARY KEY,
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        traits     BLOB NOT NULL
    );

    CREATE TABLE profile_changes (
        uid     TEXT PRIMARY KEY,
        reasons INTEGER NOT NULL,
        seq     INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: lead scoring. Model files as deployed, and the order they were deployed in
    # (the newest deploy is the active model); behavioural aggregates per identifier,
    # which survive merges and rebuilds because identifiers never change; the current
    # scores of profiles and accounts, each part with the model version that made it.
    # Profile scores are keyed by the profile's row: a batch run reads and writes them
    # in row order, beside the profiles (keyed by the profile id, a hash, every row
    # was a random page, a large share of a run's cost). A merge deletes the row with
    # the profile, a rename keeps it, and a rebuild carries each row over to the
    # profile with the same id.
    # The scorer takes its to-do list (profile_changes) oldest first, and after a
    # rebuild it holds a row for every profile: sorting it per round would cost more
    # than the work, hence the index.
    """
    CREATE TABLE models (
        version TEXT PRIMARY KEY,
        digest  TEXT NOT NULL,
        body    TEXT NOT NULL
    );

    CREATE TABLE model_deploys (
        id          INTEGER PRIMARY KEY,
        version     TEXT NOT NULL REFERENCES models (version),
        deployed_at TEXT NOT NULL,
        origin      TEXT NOT NULL
    );

    CREATE TABLE intent (
        kind    TEXT NOT NULL,
        value   TEXT NOT NULL,
        as_of   REAL NOT NULL,
        state   BLOB NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    CREATE INDEX intent_by_time ON intent (as_of);

    CREATE INDEX profile_changes_by_seq ON profile_changes (seq);

    CREATE TABLE profile_scores (
        profile     INTEGER PRIMARY KEY,
        fit_score   INTEGER,
        fit_segment TEXT,
        fit_signals TEXT,
        fit_model   TEXT,
        fit_at      REAL,
        ltb_score   INTEGER,
        ltb_segment TEXT,
        ltb_signals TEXT,
        ltb_model   TEXT,
        ltb_at      REAL,
        grade       TEXT,
        inputs      TEXT
    );

    CREATE TABLE account_scores (
        group_id    TEXT PRIMARY KEY,
        fit_score   INTEGER,
        fit_segment TEXT,
        fit_signals TEXT,
        fit_model   TEXT,
        fit_at      REAL,
        ltb_score   INTEGER,
        ltb_segment TEXT,
        ltb_signals TEXT,
        ltb_model   TEXT,
        ltb_at      REAL,
        grade       TEXT,
        inputs      TEXT
    ) WITHOUT ROWID;
    """,
    # 4: delivery. The outbox holds one row per destination and profile with the
    # newest payload not yet acknowledged (a profile changed five times before a send
    # is sent once); a negative `due_at`, -N, holds a row until batch run N ends (then
    # meta.outbox_released_run is set to N: one write, not one per row). Hashes (64-bit)
    # of what each destination acknowledged and of what was last staged make
    # only-on-change a lookup. Both are keyed by the profile's row, like its scores: a
    # batch run stages in row order, so its writes land on neighbouring pages (keyed by
    # the profile id, a hash, each row was a random page: a full recompute staging for
    # two destinations took five times as long). A rebuild carries them over by profile
    # id; a profile merged away takes its queued rows with it (hence the index by
    # profile). Dead letters keep the payload, attempts and last error until replayed. Usage
    # counts requests per UTC day, for daily caps that must survive restarts.
    """
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        profile     INTEGER NOT NULL,
        uid         TEXT NOT NULL,
        payload     BLOB NOT NULL,
        hash        INTEGER NOT NULL,
        staged_at   REAL NOT NULL,
        due_at      REAL NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        UNIQUE (destination, profile)
    );
    CREATE INDEX outbox_due ON outbox (destination, due_at);
    CREATE INDEX outbox_by_profile ON outbox (profile);

    CREATE TABLE destination_state (
        destination TEXT NOT NULL,
        profile     INTEGER NOT NULL,
        acked       INTEGER,
        staged      INTEGER NOT NULL,
        PRIMARY KEY (destination, profile)
    ) WITHOUT ROWID;

    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        uid         TEXT NOT NULL,
        payload     BLOB NOT NULL,
        hash        INTEGER NOT NULL,
        staged_at   REAL NOT NULL,
        attempts    INTEGER NOT NULL,
        error       TEXT NOT NULL,
        dead_at     REAL NOT NULL
    );
    CREATE INDEX dead_letters_by_destination ON dead_letters (destination, id);

    CREATE TABLE destination_usage (
        destination TEXT NOT NULL,
        day         TEXT NOT NULL,
        requests    INTEGER NOT NULL,
        PRIMARY KEY (destination, day)
    ) WITHOUT ROWID;
    """,
    # 5: the event log moved to a file of its own (LOG_MIGRATIONS), so ingestion's
    # commits never wait for the merger's or the scorer's: SQLite has one writer per
    # file. storage.sqlite copies the rows across before this runs.
    """
    DROP TABLE main.events;
    DROP TABLE main.quarantine;
    """,
    # 6: an identifier no longer keeps its own activity. It was rewritten with every
    # event, a random page each, to be read only when a conflict re-decides a profile,
    # which now folds the identifiers' events again from the log (profile_events).
    """
    ALTER TABLE identities DROP COLUMN activity;
    """,
    # 7: the scorer's to-do list is a queue. Keyed by profile id (a hash), with flags
    # OR-ed in place, each batch's changes were random pages in two B-trees; appended
    # in order they fill pages one after another, and the scorer ORs a profile's rows
    # together when it takes them. Pending changes keep their order.
    """
    CREATE TABLE profile_change_queue (
        id      INTEGER PRIMARY KEY,
        uid     TEXT NOT NULL,
        reasons INTEGER NOT NULL
    );
    INSERT INTO profile_change_queue (uid, reasons)
        SELECT uid, reasons FROM profile_changes ORDER BY seq;
    DROP TABLE profile_changes;
    ALTER TABLE profile_change_queue RENAME TO profile_changes;
    """,
    # 8: items a consumer could not process (an event the merger or the scorer fails
    # on, a profile or account the scorer fails on) are set aside here with the error,
    # so one bad item never stops the pipeline; `leadsync held` lists, retries, drops.
    """
    CREATE TABLE held (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        component TEXT NOT NULL,
        kind      TEXT NOT NULL,
        key       TEXT NOT NULL,
        error     TEXT NOT NULL,
        attempts  INTEGER NOT NULL,
        body      BLOB,
        held_at   REAL NOT NULL,
        retry     INTEGER NOT NULL DEFAULT 0,
        UNIQUE (component, kind, key)
    );
    CREATE INDEX held_to_retry ON held (component, kind) WHERE retry = 1;
    """,
    # 9: the data lifecycle (storage/lifecycle.py). `leadsync forget` keeps, per
    # identifier of the person erased, a keyed hash (never the value) so that their
    # future events are dropped at ingestion; `request` groups one forget's entries,
    # which `unforget` lifts together. `erasures` records that a forget happened and
    # how much it removed, nothing about whom. The key is made here, once per database.
    """
    CREATE TABLE suppressions (
        hash    BLOB PRIMARY KEY,
        request INTEGER NOT NULL,
        kind    TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX suppressions_by_request ON suppressions (request);

    CREATE TABLE erasures (
        id          INTEGER PRIMARY KEY,
        erased_at   REAL NOT NULL,
        identifiers INTEGER NOT NULL,
        events      INTEGER NOT NULL,
        profiles    INTEGER NOT NULL
    );

    INSERT INTO meta (key, value) VALUES ('suppression_salt', lower(hex(randomblob(16))))
        ON CONFLICT (key) DO NOTHING;
    """,
]

LOG_MIGRATIONS: list[str] = [
    # 1: the event log and quarantined input, as main migration 1 had them but for the
    # unique index on (source, message_id): retries are recognised in memory (see
    # storage/sqlite_log.py). meta holds the readiness probe's writes.
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        type        TEXT NOT NULL,
        received_at TEXT NOT NULL,
        body        BLOB NOT NULL
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
