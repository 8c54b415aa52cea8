"""A deletion request (`leadsync forget`, for a destination that takes one) is the
only way the destination hears of the erasure: nothing may drop it. On real files,
in process."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from actors.delivery import payload as payloads
from actors.identity.rebuild import rebuild
from actors.lifecycle.forget import forget
from daemon.config import Config, parse
from storage.sqlite_backend import SqliteBackend
from storage.sqlite_lifecycle import SqliteLifecycleStore
from storage.sqlite_outbox import SqliteOutboxStore
from tests.support.logfiles import forgotten, log_events, remaining

HOOK = '[destinations.hook]\ntype = "webhook"\nurl = "https://hooks.example.com/x"\nsecret = "s"\n'


def forgotten_with_a_deletion_queued(path: Path, merger: Callable[[], None]) -> Config:
    """Ann's profile, sent to the webhook once, then forgotten; Bob stays."""
    log_events(
        path,
        [
            {"type": "identify", "userId": "ann-1", "anonymousId": "anon-ann"},
            {"type": "identify", "userId": "bob-1"},
        ],
    )
    merger()
    config = parse(HOOK, "daemon.toml")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(
            "INSERT INTO destination_state (destination, profile, acked, staged) "
            "SELECT 'hook', profile, 1, 1 FROM identities WHERE value = 'ann-1'"
        )
    erased = forgotten(path, ("user_id", "ann-1"), config)
    assert erased.deletions == ["hook"]
    return config


def queued_deletions(path: Path) -> list[tuple[int, str]]:
    return remaining(
        path,
        "SELECT profile, uid FROM outbox WHERE destination = 'hook' "
        "AND instr(CAST(payload AS TEXT), '\"deleted\":true') > 0",
    )


def test_a_rebuild_keeps_a_queued_deletion_request(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """A rebuild renumbers the profiles and drops the rows of profiles it does not
    have; the request has none, and stays, under an id no profile can take."""
    path = tmp_path / "leadsync.db"
    config = forgotten_with_a_deletion_queued(path, merger)
    [(before, uid)] = queued_deletions(path)
    assert before < 0

    rebuild(SqliteBackend(path), config.identity)

    assert queued_deletions(path) == [(before, uid)]
    assert all(p > 0 for (p,) in remaining(path, "SELECT id FROM profiles"))


def test_dlq_replay_sends_a_dead_lettered_deletion_request_again(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Its profile is gone, which for any other letter means stale: not for this one."""
    path = tmp_path / "leadsync.db"
    forgotten_with_a_deletion_queued(path, merger)
    [(_, uid)] = queued_deletions(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(
            "INSERT INTO dead_letters (destination, uid, payload, hash, staged_at, attempts, "
            "error, dead_at) SELECT destination, uid, payload, hash, staged_at, 10, "
            "'HTTP 500', 0 FROM outbox WHERE destination = 'hook'"
        )
        db.execute("DELETE FROM outbox")
        replayed = SqliteOutboxStore(db).replay("hook", None, time.time())

    assert replayed == (1, 0)
    [(profile, again)] = queued_deletions(path)
    assert (profile < 0, again) == (True, uid)
    assert remaining(path, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_only_a_payload_that_is_a_deletion_request_is_kept_as_one(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """A client can put `{"deleted": true}` in a trait, and so in Ann's payload: that
    row is Ann's, renumbered by a rebuild and erased by forget. A real request queued
    by the previous version under the erased profile's id is kept by the rebuild."""
    path = tmp_path / "leadsync.db"
    log_events(path, [{"type": "identify", "userId": "ann-1"}])
    merger()
    trait, trait_hash = payloads.encode(
        payloads.Payload(profile="prf_a", traits={"mk_company": {"deleted": True}}, user_id="ann-1")
    )
    old, old_hash = payloads.encode(payloads.Payload(profile="prf_x", traits={}, deleted=True))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(
            "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, due_at) "
            "SELECT 'hook', profile, 'prf_a', ?, ?, 0, 0 FROM identities WHERE value = 'ann-1'",
            (trait, trait_hash),
        )
        db.execute(
            "INSERT INTO outbox (destination, profile, uid, payload, hash, staged_at, due_at) "
            "VALUES ('hook', 9999, 'prf_x', ?, ?, 0, 0)",
            (old, old_hash),
        )
    config = parse(HOOK, "daemon.toml")

    rebuild(SqliteBackend(path), config.identity)
    kept = dict(remaining(path, "SELECT uid, profile FROM outbox"))
    assert kept["prf_x"] < 0 < kept["prf_a"]

    store = SqliteLifecycleStore.open(path, 5)
    try:
        forget(store, ("user_id", "ann-1"), config, time.time())
    finally:
        store.close()
    left = [bytes(p) for (p,) in remaining(path, "SELECT payload FROM outbox ORDER BY id")]
    assert trait not in left  # hers, and gone
    assert left[0] == old
    assert [payloads.decode(p).deleted for p in left] == [True, True]  # and hers, queued
