"""`forget` on real SQLite files, in-process: what a running daemon cannot be made to
show on cue. The merger's own worker applies events at the moment a race needs
(between the search outside the locks and the locked step), or not at all (events
not applied yet are found only by searching the log)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.delivery import payload as payloads
from actors.identity.settings import IdentitySection
from actors.lifecycle.forget import forget
from daemon.config import Config
from storage.held import HeldItem
from storage.lifecycle import PartlyErased, identifier_hash
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_lifecycle import SqliteLifecycleStore
from tests.support.logfiles import forgotten, log_events, remaining, salt_of

ANN = [
    {"type": "identify", "userId": "ann-1", "anonymousId": "anon-ann"},
    {"type": "track", "anonymousId": "anon-ann", "event": "Pricing"},
]


def test_an_identifier_the_merger_adds_during_the_search_is_erased_and_suppressed(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    path = tmp_path / "leadsync.db"
    log_events(path, [*ANN, {"type": "track", "anonymousId": "late-x", "event": "Pricing"}])
    merger()

    tries: list[int] = []

    @contextmanager
    def the_merger_goes_on() -> Iterator[None]:
        """Between the search and the first locked step: Ann signs in on the device
        late-x, whose first event was logged before the search (and so is found only
        by searching the whole log again for late-x, which the locks are let go for)."""
        if not tries:
            log_events(path, [{"type": "identify", "userId": "ann-1", "anonymousId": "late-x"}])
            merger()
        tries.append(1)
        yield

    hold: Callable[[], AbstractContextManager[None]] = the_merger_goes_on
    store = SqliteLifecycleStore.open(path, 5)
    try:
        erased = forget(store, ("user_id", "ann-1"), Config(), time.time(), gate=hold)
        salt = store.salt()
    finally:
        store.close()

    assert len(tries) == 2  # the whole log is not searched under the locks
    assert (erased.profiles, erased.identifiers, erased.events) == (1, 3, 4)
    assert remaining(path, "SELECT count(*) FROM log.events") == [(1,)]  # the head, a tombstone
    assert remaining(
        path, "SELECT count(*) FROM log.events WHERE CAST(body AS TEXT) LIKE '%late-x%'"
    ) == [(0,)]
    for table in ("identities", "identity_links", "profile_events", "profiles"):
        assert remaining(path, f"SELECT count(*) FROM {table}") == [(0,)], table
    hashes = {bytes(h) for (h,) in remaining(path, "SELECT hash FROM suppressions")}
    assert identifier_hash(salt, "anonymous_id", "late-x") in hashes


def test_identifiers_with_capitals_beyond_ascii_are_found_in_the_log(tmp_path: Path) -> None:
    """Not applied yet, the events are found only by the search of the log, which
    folds case: as Python folds the identifier, not as SQLite's ASCII-only lower()."""
    path = tmp_path / "leadsync.db"
    log_events(
        path,
        [
            {"type": "identify", "userId": "ÄNN-1"},
            {"type": "track", "userId": "ÄNN-1", "event": "Pricing"},
            {
                "type": "track",
                "anonymousId": "z",
                "event": "Pricing",
                "context": {"traits": {"email": "ÖLA@Ö.se"}},
            },
            {"type": "track", "userId": "ann-1", "event": "Pricing"},
        ],
    )
    store = SqliteLifecycleStore.open(path, 5)
    try:
        by_user_id = forget(store, ("user_id", "ÄNN-1"), Config(), time.time())
        by_email = forget(store, ("email", "öla@ö.se"), Config(), time.time())
    finally:
        store.close()

    assert (by_user_id.events, by_email.events) == (2, 1)
    [(body,)] = remaining(path, "SELECT body FROM log.events")
    assert b'"userId":"ann-1"' in body  # another person's: a user id is case-sensitive


class CommitFails:
    """The main file's connection, whose COMMIT fails (a disk error) while `failing`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.failing and sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_the_daemon_suppresses_only_what_both_files_committed(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """The log commits first: when the main file's commit then fails, the events are
    gone but nothing is suppressed, in the file or in the daemon's set, which is told
    only after both commits; the failure says so, and forgetting again finishes."""
    path = tmp_path / "leadsync.db"
    log_events(path, [*ANN, {"type": "track", "userId": "bob-1", "event": "Pricing"}])
    merger()
    told: list[list[bytes]] = []
    store = SqliteLifecycleStore.open(path, 5)
    main = CommitFails(store._db)
    store._db = main  # type: ignore[assignment]
    try:
        with pytest.raises(PartlyErased, match="disk I/O error"):
            forget(store, ("user_id", "ann-1"), Config(), time.time(), suppressed=told.append)
        assert told == []
        assert remaining(path, "SELECT count(*) FROM log.events") == [(1,)]  # Bob's
        assert remaining(path, "SELECT count(*) FROM suppressions") == [(0,)]
        assert remaining(path, "SELECT count(*) FROM identities WHERE value = 'ann-1'") == [(1,)]

        main.failing = False
        again = forget(store, ("user_id", "ann-1"), Config(), time.time(), suppressed=told.append)
    finally:
        store.close()
    assert (again.profiles, again.events, again.suppressed) == (1, 0, 2)
    assert [len(hashes) for hashes in told] == [2]


def test_held_events_and_deletion_requests_left_behind_are_found_by_what_they_say(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """A held event whose log row retention trimmed, and a payload dead-lettered for a
    profile of hers that is gone: both name Ann, and go; Bob's held event stays, and
    so does an earlier forget's dead-lettered deletion request (the only way left to
    erase her downstream: `leadsync dlq replay`)."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    ann_body = remaining(path, "SELECT body FROM log.events WHERE type = 'identify'")[0][0]
    bob_body = ann_body.replace(b"ann-1", b"bob-1").replace(b"anon-ann", b"anon-bob")
    deletion, digest = payloads.encode(
        payloads.Payload(profile="prf_gone", traits={}, user_id="ann-1", deleted=True)
    )
    scores, scores_digest = payloads.encode(
        payloads.Payload(profile="prf_gone", traits={"mk_lead_grade": "A"}, user_id="ann-1")
    )
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        SqliteHeldStore(db).hold(
            [
                HeldItem("identity", "event", "9001", "KeyError", 3, ann_body),
                HeldItem("identity", "event", "9002", "KeyError", 3, bob_body),
            ],
            time.time(),
        )
        db.executemany(
            "INSERT INTO dead_letters (destination, uid, payload, hash, staged_at, attempts, "
            "error, dead_at) VALUES ('hook', 'prf_gone', ?, ?, 0, 5, 'HTTP 500', 0)",
            [(deletion, digest), (scores, scores_digest)],
        )

    erased = forgotten(path, ("user_id", "ann-1"))

    assert (erased.held, erased.dead_letters) == (1, 1)
    assert remaining(path, "SELECT key FROM held") == [("9002",)]
    assert remaining(path, "SELECT payload FROM dead_letters") == [(deletion,)]


def test_an_unapplied_event_homed_at_a_new_email_of_hers_is_erased(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Not applied yet, an identify with her anonymous id and an email no profile has
    is filed under that email, which the merger would join to her: it goes, and the
    email is hers. Past the email cap it would not join her, and stays."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    log_events(
        path,
        [
            {"type": "identify", "anonymousId": "anon-ann", "traits": {"email": "new@x.io"}},
            {"type": "track", "userId": "bob-1", "event": "Pricing"},
        ],
    )
    erased = forgotten(path, ("user_id", "ann-1"))
    merger()

    assert (erased.events, erased.suppressed) == (3, 3)
    held = "SELECT count(*) FROM identities WHERE value IN ('anon-ann', 'new@x.io')"
    assert remaining(path, held) == [(0,)]
    assert remaining(path, "SELECT count(*) FROM identities WHERE value = 'bob-1'") == [(1,)]


def test_an_unapplied_email_the_cap_keeps_out_of_her_profile_is_not_hers(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    path = tmp_path / "leadsync.db"
    log_events(path, [{**ANN[0], "traits": {"email": "ann@x.io"}}])
    merger()
    other = {"type": "identify", "anonymousId": "anon-ann", "traits": {"email": "eve@x.io"}}
    log_events(path, [other])
    config = Config(identity=IdentitySection(limits={"email": 1}))
    erased = forgotten(path, ("user_id", "ann-1"), config)

    assert (erased.events, erased.suppressed) == (1, 3)
    query = "SELECT count(*) FROM log.events WHERE CAST(body AS TEXT) LIKE '%eve@x.io%'"
    assert remaining(path, query) == [(1,)]


def test_an_email_only_profile_her_unapplied_event_joins_to_her_is_erased(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """ann@x has a profile of its own, without a user id; her identify not applied yet
    joins it to her: that profile, its events and the email go, and are suppressed.
    Bob's profile stays."""
    path = tmp_path / "leadsync.db"
    log_events(
        path,
        [
            *ANN,
            {"type": "identify", "anonymousId": "anon-x", "traits": {"email": "ann@x.io"}},
            {"type": "track", "anonymousId": "anon-x", "event": "Pricing"},
        ],
    )
    merger()
    log_events(
        path,
        [
            {"type": "identify", "userId": "ann-1", "traits": {"email": "ann@x.io"}},
            {"type": "track", "userId": "bob-1", "event": "Pricing"},
        ],
    )
    erased = forgotten(path, ("user_id", "ann-1"))
    salt = salt_of(path)
    merger()

    assert (erased.profiles, erased.events) == (2, 5)
    assert remaining(path, "SELECT count(*) FROM log.events") == [(1,)]  # Bob's
    assert remaining(path, "SELECT count(*) FROM profiles") == [(1,)]  # Bob's
    hashes = {bytes(h) for (h,) in remaining(path, "SELECT hash FROM suppressions")}
    assert identifier_hash(salt, "email", "ann@x.io") in hashes
    assert identifier_hash(salt, "anonymous_id", "anon-x") in hashes


def test_a_device_a_re_decision_gives_to_someone_else_meanwhile_is_not_suppressed(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Ann's sign-in on the device dev is not applied when the search follows dev (no
    profile has it). Before the locked step, Bob's older sign-in on it comes, and the
    merger, re-deciding by event time, gives dev to Bob: Ann's event goes, Bob's and
    his device stay, and dev is not suppressed."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    log_events(
        path,
        [
            {
                "type": "identify",
                "userId": "ann-1",
                "anonymousId": "dev",
                "timestamp": "2026-02-01T00:00:00Z",
            }
        ],
    )

    @contextmanager
    def bob_was_first() -> Iterator[None]:
        log_events(
            path,
            [
                {
                    "type": "identify",
                    "userId": "bob-1",
                    "anonymousId": "dev",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
            ],
        )
        merger()
        yield

    hold: Callable[[], AbstractContextManager[None]] = bob_was_first
    store = SqliteLifecycleStore.open(path, 5)
    try:
        erased = forget(store, ("user_id", "ann-1"), Config(), time.time(), gate=hold)
        salt = store.salt()
    finally:
        store.close()

    assert (erased.profiles, erased.events, erased.suppressed) == (1, 3, 2)
    hashes = {bytes(h) for (h,) in remaining(path, "SELECT hash FROM suppressions")}
    assert identifier_hash(salt, "anonymous_id", "dev") not in hashes
    assert remaining(path, "SELECT value FROM identities ORDER BY value") == [
        ("bob-1",),
        ("dev",),
    ]
