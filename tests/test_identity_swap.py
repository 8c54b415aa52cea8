"""The rebuild's swap (actors/identity/swap.py): what leadsync kept about the old graph
carried over to the rebuilt one. Scores, delivery states and deletion requests have
tests of their own (test_scorer.py, test_outbox.py, test_deletion_requests.py).

A kiosk seen with two emails makes one profile under the default rules, and two under
a cap of one email: rebuilding from the second to the first, the second email's own
profile id is one the new rules no longer make.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors.delivery.staging import stage_changes
from actors.identity.extract import Extractor
from actors.identity.pipeline import Graph
from actors.identity.rebuild import rebuild
from actors.identity.settings import IdentitySection
from actors.identity.swap import swap_in
from storage.errors import StorageRefused
from storage.graph import Change
from storage.held import HeldItem
from storage.rebuild import ProfileRows
from storage.sqlite_backend import SqliteBackend, SqliteSession
from storage.sqlite_connect import connect
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_outbox import SqliteOutboxStore
from storage.sqlite_rebuild import FOLLOWING
from tests.support.graph import Harness

ONE_EMAIL = IdentitySection(limits={"email": 1})
KIOSK = [
    {"type": "identify", "anonymousId": "kiosk", "traits": {"email": f"v{n}@initech.com"},
     "messageId": f"m{n}", "timestamp": f"2026-07-01T10:00:0{n}Z"}
    for n in range(2)
]  # fmt: skip


def rows(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, params).fetchall()


def uid_of(path: Path, email: str) -> str:
    ((uid,),) = rows(
        path,
        "SELECT p.uid FROM profiles p JOIN identities i ON i.profile = p.id "
        "WHERE i.kind = 'email' AND i.value = ?",
        email,
    )
    return str(uid)


async def two_profiles(path: Path) -> Path:
    """The kiosk's two emails on two profiles (a cap of one), the rebuild's to join."""
    async with Harness(path, ONE_EMAIL) as graph:
        await graph.send(*KIOSK)
        await graph.apply()
    assert len(rows(path, "SELECT uid FROM profiles")) == 2
    return path


async def test_an_old_profile_id_the_new_rules_no_longer_make_keeps_resolving(
    tmp_path: Path,
) -> None:
    path = await two_profiles(tmp_path / "g.db")
    kiosk, gone = uid_of(path, "v0@initech.com"), uid_of(path, "v1@initech.com")
    waiting = rows(path, "SELECT uid, reasons FROM profile_changes ORDER BY id")
    assert {uid for uid, _ in waiting} == {kiosk, gone}  # the scorer has taken none

    rebuild(SqliteBackend(path), IdentitySection())

    assert rows(path, "SELECT uid FROM profiles") == [(kiosk,)]
    (survivor,) = rows(path, "SELECT id FROM profiles")
    assert rows(path, "SELECT uid, profile FROM profile_redirects") == [(gone, survivor[0])]
    # The rebuild's own changes first, then those the scorer had not taken, in order,
    # then the vanished id, gone.
    after = rows(path, "SELECT uid, reasons FROM profile_changes ORDER BY id")
    made, kept = after[: -len(waiting) - 1], after[-len(waiting) - 1 :]
    assert {uid for uid, _ in made} == {kiosk}
    assert kept == [*waiting, (gone, int(Change.MERGED_AWAY))]


async def test_a_queued_row_of_a_vanished_profile_id_goes_and_the_others_follow_theirs(
    tmp_path: Path,
) -> None:
    path = await two_profiles(tmp_path / "g.db")
    kiosk, gone = uid_of(path, "v0@initech.com"), uid_of(path, "v1@initech.com")
    ids = dict(rows(path, "SELECT uid, id FROM profiles"))
    with closing(connect(path, 5)) as db:
        outbox = SqliteOutboxStore(db)
        outbox.begin()
        queued = [(ids[uid], uid, b"{}", n) for n, uid in enumerate(ids)]
        stage_changes(outbox, "crm", queued, 0.0, 0.0)
        outbox.commit()
        # The rows numbered otherwise than the rebuild will: the kiosk's must follow it.
        db.execute("UPDATE outbox SET profile = profile + 100")
        db.execute("UPDATE profiles SET id = id + 100")
        db.execute("UPDATE identities SET profile = profile + 100")

    rebuild(SqliteBackend(path), IdentitySection())

    (row,) = rows(path, "SELECT id FROM profiles")
    assert rows(path, "SELECT uid, profile FROM outbox") == [(kiosk, row[0])]
    assert gone not in {uid for (uid,) in rows(path, "SELECT uid FROM outbox")}


async def test_the_merger_s_held_events_are_the_rebuild_s(tmp_path: Path) -> None:
    """An event the merger held, which the rebuild applied, is held no more; what the
    scorer holds stays."""
    path = await two_profiles(tmp_path / "g.db")
    with closing(connect(path, 5)) as db:
        held = SqliteHeldStore(db)
        db.execute("BEGIN IMMEDIATE")
        held.hold(
            [
                HeldItem("identity", "event", "2", "KeyError", 3, b"{}"),
                HeldItem("scorer", "profile", "prf_x", "ValueError", 3),
            ],
            0.0,
        )
        db.execute("COMMIT")

    rebuild(SqliteBackend(path), IdentitySection())

    assert rows(path, "SELECT component, kind, key FROM held") == [("scorer", "profile", "prf_x")]


async def test_a_scratch_replayed_elsewhere_is_refused_and_nothing_swapped(tmp_path: Path) -> None:
    async with Harness(tmp_path / "g.db", ONE_EMAIL) as graph:
        await graph.send(*KIOSK)
        await graph.apply()
        before = graph.profiles()
        backend = SqliteBackend(graph.path)
        assert graph.storage is not None
        with backend.scratch() as work, closing(backend.session()) as db:
            rules = IdentitySection()
            Graph(work.graph, rules, Extractor(rules)).apply(
                await graph.storage.read_events(0, 1), 0
            )
            with pytest.raises(StorageRefused):
                swap_in(db, work, 2)
            assert db.graph.generation() == 0
        assert graph.profiles() == before


async def test_queued_rows_find_their_note_by_id_not_by_a_scan_each(tmp_path: Path) -> None:
    """A scan of the noted rows for each queued row made a rebuild over a long outbox
    quadratic."""
    path = await two_profiles(tmp_path / "g.db")
    backend = SqliteBackend(path)
    with (
        backend.scratch() as work,
        closing(connect(path, 5)) as db,
        SqliteSession(db).graph_swap(work) as swap,
    ):
        db.execute("BEGIN IMMEDIATE")
        swap.remember_by_uid([ProfileRows.QUEUED])
        plans = [
            step[-1]
            for sql in FOLLOWING[ProfileRows.QUEUED].rekey
            for step in db.execute(f"EXPLAIN QUERY PLAN {sql}")
        ]
    scans = [s for s in plans if s == "SCAN o" or (s.startswith("SCAN") and "old_outbox" in s)]
    assert any(s.startswith("SEARCH o USING INTEGER PRIMARY KEY") for s in plans), plans
    assert not scans, plans
