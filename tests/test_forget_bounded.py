"""`forget` holds ingestion only for what changed since its search, and leaves nothing
behind: on real files, in process (tests/test_forget_files.py has the races)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from actors.delivery import payload as payloads
from actors.identity.extract import Extractor
from actors.identity.settings import IdentitySection
from actors.lifecycle import search
from actors.lifecycle.forget import forget, unforget
from actors.lifecycle.identifiers import loose_identifiers
from actors.lifecycle.suppressions import Suppressions
from daemon.config import Config
from storage import sqlite_connect
from storage.errors import StorageUnavailable
from storage.held import HeldItem
from storage.lifecycle import Erased, StrayMarks, identifier_hash
from storage.log import StoredEvent
from storage.sqlite_connect import log_path
from storage.sqlite_held import SqliteHeldStore
from storage.sqlite_lifecycle import SqliteLifecycleStore
from storage.transaction import transaction
from tests.support.logfiles import forgotten, log_events, remaining, salt_of, start_merger

ANN = [
    {"type": "identify", "userId": "ann-1", "anonymousId": "anon-ann"},
    {"type": "track", "anonymousId": "anon-ann", "event": "Pricing"},
]


class Watched(SqliteLifecycleStore):
    """Notes where each search starts that runs while the write locks are held."""

    locked = False
    searches: list[tuple[str, object]]

    def begin(self) -> None:
        super().begin()
        self.locked = True

    def commit(self) -> None:
        self.locked = False
        super().commit()

    def rollback(self) -> None:
        self.locked = False
        super().rollback()

    def _note(self, what: str, after: object) -> None:
        if self.locked:
            self.searches.append((what, after))

    def events_mentioning(
        self, needles: Iterable[str], after: int, upto: int | None
    ) -> Iterator[StoredEvent]:
        self._note("log", after)
        return super().events_mentioning(needles, after, upto)

    def events_between(self, after: int, upto: int | None) -> Iterator[StoredEvent]:
        self._note("log", after)
        return super().events_between(after, upto)

    def held_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, bytes]]:
        self._note("held", after)
        return super().held_mentioning(needles, after)

    def quarantined_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[int, str, bytes]]:
        self._note("quarantine", after)
        return super().quarantined_mentioning(needles, after)

    def payloads_mentioning(
        self, needles: Iterable[str], after: StrayMarks
    ) -> Iterator[tuple[str, bytes]]:
        self._note("payloads", after)
        return super().payloads_mentioning(needles, after)


def log_raw(path: Path, bodies: list[bytes]) -> None:
    """Bodies as a poison event's might be in the log: not events at all."""
    with closing(sqlite3.connect(log_path(path), isolation_level=None)) as log:
        log.executemany(
            "INSERT INTO events (message_id, type, source, received_at, body) "
            "VALUES (?, 'track', 'web', 'now', ?)",
            [(f"raw-{n}", body) for n, body in enumerate(bodies)],
        )


def hold(path: Path, body: bytes, key: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        SqliteHeldStore(db).hold([HeldItem("identity", "event", key, "KeyError", 3, body)], 0)


def test_under_the_locks_only_what_came_after_the_search_is_searched(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Ann's events, a held event and a dead letter of hers are found outside the
    locks. Between that search and the locks, more of her events are logged and
    another event of hers is held: the locked step searches only the rows added since
    (not the whole log, held table or dead letters), and erases both."""
    path = tmp_path / "leadsync.db"
    log_events(path, [*ANN, {"type": "track", "userId": "bob-1", "event": "Pricing"}])
    merger()
    ann_body = remaining(path, "SELECT body FROM log.events WHERE type = 'identify'")[0][0]
    hold(path, ann_body, "9001")
    letter, digest = payloads.encode(
        payloads.Payload(profile="prf_gone", traits={}, user_id="ann-1")
    )
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(
            "INSERT INTO dead_letters (destination, uid, payload, hash, staged_at, attempts, "
            "error, dead_at) VALUES ('hook', 'prf_gone', ?, ?, 0, 5, 'HTTP 500', 0)",
            (letter, digest),
        )
    head = remaining(path, "SELECT max(seq) FROM log.events")[0][0]

    @contextmanager
    def meanwhile() -> Iterator[None]:
        log_events(path, [{"type": "track", "userId": "ann-1", "event": "Demo Requested"}])
        hold(path, ann_body, "9002")
        yield

    store = Watched.open(path, 5)
    store.searches = []
    try:
        erased = forget(store, ("user_id", "ann-1"), Config(), time.time(), gate=meanwhile)
    finally:
        store.close()

    assert store.searches, "the locked step searched nothing"
    for what, after in store.searches:
        if what == "log":
            assert isinstance(after, int), store.searches
            assert after >= head, store.searches
        else:
            assert after != StrayMarks(), store.searches
    assert (erased.events, erased.held, erased.dead_letters) == (3, 2, 1)
    assert remaining(path, "SELECT key FROM held") == []
    assert remaining(path, "SELECT count(*) FROM dead_letters") == [(0,)]
    bodies = [bytes(b) for (b,) in remaining(path, "SELECT body FROM log.events")]
    assert not any(b"ann" in body for body in bodies), bodies


def test_a_quarantined_message_is_found_however_the_client_escaped_it(tmp_path: Path) -> None:
    """The quarantine keeps what the client sent: characters beyond ASCII as \\uXXXX
    (capitals too), a slash as \\/. Only Müller's messages go; Muller's stays."""
    path = tmp_path / "leadsync.db"
    ours = [
        b'{"type":"identify","userId":"m\\u00fcller/1","timestamp":7}',
        b'{"type":"identify","userId":"M\\u00DCLLER\\/1","timestamp":7}',
    ]
    theirs = b'{"type":"identify","userId":"muller/1","timestamp":7}'
    log_events(path, [], rejected=[*ours, theirs])
    store = SqliteLifecycleStore.open(path, 5)
    try:
        first = forget(store, ("user_id", "müller/1"), Config(), time.time())
        second = forget(store, ("user_id", "MÜLLER/1"), Config(), time.time())
    finally:
        store.close()

    assert (first.quarantined, second.quarantined) == (1, 1)
    assert remaining(path, "SELECT body FROM log.quarantine") == [(theirs,)]


def test_any_escape_a_client_uses_and_any_case_is_seen_through(tmp_path: Path) -> None:
    """Go escapes "&" as \\u0026; Python escapes É as \\u00C9; a Kelvin sign folds
    to "k" in Python (not in SQLite). Each of these is found, quarantined or logged."""
    path = tmp_path / "leadsync.db"
    log_events(
        path,
        [{"type": "identify", "anonymousId": "z", "traits": {"email": "\u212aim@x.io"}}],
        rejected=[
            b'{"type":"identify","userId":"tom\\u0026jerry","timestamp":7}',
            b'{"type":"identify","traits":{"email":"\\u00C9mile@x.io"},"timestamp":7}',
        ],
    )
    store = SqliteLifecycleStore.open(path, 5)
    try:
        tom = forget(store, ("user_id", "tom&jerry"), Config(), time.time())
        emile = forget(store, ("email", "émile@x.io"), Config(), time.time())
        kim = forget(store, ("email", "kim@x.io"), Config(), time.time())
    finally:
        store.close()

    assert (tom.quarantined, emile.quarantined, kim.events) == (1, 1, 1)
    assert remaining(path, "SELECT count(*) FROM log.quarantine") == [(0,)]


def test_what_forget_erases_is_not_left_in_the_files_free_space(
    tmp_path: Path, merger: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever SQLite build the machine has: this one's default overwrites deleted
    content, so connections here are opened as a build without that would open them."""
    path = tmp_path / "leadsync.db"
    log_events(path, [*ANN, {"type": "track", "userId": "bob-1", "event": "Pricing"}])
    merger()

    def insecure(opener: Callable[..., sqlite3.Connection]) -> Callable[..., sqlite3.Connection]:
        def opened(*args: object) -> sqlite3.Connection:
            db = opener(*args)
            db.execute("PRAGMA secure_delete = OFF")
            return db

        return opened

    monkeypatch.setattr("storage.sqlite_lifecycle.connect", insecure(sqlite_connect.connect))
    monkeypatch.setattr(
        "storage.sqlite_lifecycle.open_connection", insecure(sqlite_connect.open_connection)
    )
    store = SqliteLifecycleStore.open(path, 5)
    try:
        forget(store, ("user_id", "ann-1"), Config(), time.time())
    finally:
        store.close()
    for file in (path, log_path(path)):
        with closing(sqlite3.connect(file)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = file.read_bytes()
        assert b"anon-ann" not in raw, file.name
        assert b"ann-1" not in raw, file.name
        assert b"bob-1" in raw, file.name  # what is kept is still there to be read


def test_forgetting_an_identifier_already_suppressed_joins_the_two_forgets(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Forgetting Ann's device again (say, from a request made twice) must not split her
    suppression: unforgetting her user id lifts every identifier of hers."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    store = SqliteLifecycleStore.open(path, 5)
    try:
        forget(store, ("user_id", "ann-1"), Config(), time.time())
        forget(store, ("anonymous_id", "anon-ann"), Config(), time.time())
        with transaction(store):
            lifted = unforget(store, ("user_id", "ann-1"))
        salt = store.salt()
    finally:
        store.close()

    assert sorted(lifted) == sorted(
        identifier_hash(salt, *i) for i in [("user_id", "ann-1"), ("anonymous_id", "anon-ann")]
    )
    assert remaining(path, "SELECT count(*) FROM suppressions") == [(0,)]


def test_a_forgotten_device_drops_only_the_events_that_name_nobody_else() -> None:
    salt = b"k" * 16
    rules = Config().identity
    forgotten = [("user_id", "ann-1"), ("anonymous_id", "dev"), ("email", "ann@x.io")]
    screen = Suppressions(salt, {identifier_hash(salt, *i) for i in forgotten}, rules)

    assert screen.covers([("anonymous_id", "dev")])
    assert screen.covers([("anonymous_id", "dev"), ("anonymous_id", "other-tab")])
    assert screen.covers([("user_id", "ann-1")])
    assert screen.covers([("user_id", "bob-1"), ("email", "ann@x.io")])
    assert not screen.covers([("user_id", "bob-1"), ("anonymous_id", "dev")])
    assert not screen.covers([("anonymous_id", "dev"), ("email", "carol@x.io")])
    assert not screen.covers([("anonymous_id", "someone-else")])


def test_a_profile_someone_else_signed_in_on_is_not_taken_with_her(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pat@x has a profile of its own with the device anon-x; Carol's email came on that
    device too (kept apart by a cap of one email). Ann's sign-in on anon-x, not applied
    yet, does not make that profile hers: someone else's identified event touches it.
    Her event goes; the profile, its events and anon-x stay, unsuppressed."""
    path = tmp_path / "leadsync.db"
    rules = IdentitySection(limits={"email": 1})
    apply = start_merger(path, monkeypatch, rules)
    merge = next(apply)
    log_events(
        path,
        [
            {"type": "identify", "anonymousId": "anon-x", "traits": {"email": "pat@x.io"}},
            {"type": "identify", "anonymousId": "anon-x", "traits": {"email": "carol@x.io"}},
        ],
    )
    merge()
    log_events(path, [{"type": "identify", "userId": "ann-1", "anonymousId": "anon-x"}])
    erased = forgotten(path, ("user_id", "ann-1"), Config(identity=rules))
    salt = salt_of(path)
    merge()
    next(apply, None)

    assert (erased.profiles, erased.events) == (0, 1)
    bodies = [bytes(b) for (b,) in remaining(path, "SELECT body FROM log.events")]
    assert [b"x.io" in body for body in bodies] == [True, True, False]  # hers: a tombstone
    assert not any(b"ann-1" in body for body in bodies)
    kept = {v for (v,) in remaining(path, "SELECT value FROM identities")}
    assert {"pat@x.io", "carol@x.io", "anon-x"} <= kept
    hashes = {bytes(h) for (h,) in remaining(path, "SELECT hash FROM suppressions")}
    assert hashes == {identifier_hash(salt, "user_id", "ann-1")}


def test_a_person_with_thousands_of_identifiers_is_searched_for_all_of_them(
    tmp_path: Path,
) -> None:
    """Each of Ann's 1,500 events brings a device id of its own: the search for them
    all must not make one SQL expression SQLite refuses as too deep."""
    path = tmp_path / "leadsync.db"
    devices = [{"type": "track", "userId": "ann-1", "anonymousId": f"d{n}"} for n in range(1500)]
    for event in devices:
        event["event"] = "Pricing"
    log_events(path, [*devices, {"type": "track", "userId": "bob-1", "event": "Pricing"}])
    rejected = [b'{"type":"identify","anonymousId":"d1499","timestamp":7}']
    log_events(path, [], rejected=rejected)
    unreadable = [b'{"type": "track", "userId": "ANN-1"', b'{"type": "track", "userId": "bob-1"']
    log_raw(path, unreadable)
    erased = forgotten(path, ("user_id", "ann-1"))

    assert (erased.events, erased.quarantined, erased.suppressed) == (1501, 1, 1501)
    left = [bytes(b) for (b,) in remaining(path, "SELECT body FROM log.events ORDER BY seq")]
    assert [b"bob-1" in body for body in left] == [True, True]  # his, and his unreadable one


def test_forgetting_someone_on_a_forgotten_device_leaves_the_first_forget_alone(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Ann is forgotten with her device; Bob signs in on it (kept: someone else), and is
    forgotten in turn. Unforgetting Bob lifts Bob alone: the device stays Ann's, and
    suppressed, until she is unforgotten."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    store = SqliteLifecycleStore.open(path, 5)
    try:
        forget(store, ("user_id", "ann-1"), Config(), time.time())
        log_events(path, [{"type": "identify", "userId": "bob-1", "anonymousId": "anon-ann"}])
        merger()
        forget(store, ("user_id", "bob-1"), Config(), time.time())
        with transaction(store):
            bob = unforget(store, ("user_id", "bob-1"))
        with transaction(store):
            ann = unforget(store, ("user_id", "ann-1"))
        salt = store.salt()
    finally:
        store.close()

    assert bob == [identifier_hash(salt, "user_id", "bob-1")]
    assert sorted(ann) == sorted(
        identifier_hash(salt, *i) for i in [("user_id", "ann-1"), ("anonymous_id", "anon-ann")]
    )


def test_a_device_someone_else_signs_in_on_before_the_locks_is_not_taken_with_her(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ann's second device dev2 has a profile of its own (a cap of one anonymous id a
    profile), which her search adopts as hers. Bob signs in on dev2 before the locks:
    dev2 is his too, so it stays, with its profile, unsuppressed."""
    path = tmp_path / "leadsync.db"
    rules = IdentitySection(limits={"anonymous_id": 1})
    apply = start_merger(path, monkeypatch, rules)
    merge = next(apply)
    log_events(
        path,
        [
            {"type": "identify", "userId": "ann-1", "anonymousId": "dev1"},
            {"type": "track", "userId": "ann-1", "anonymousId": "dev2", "event": "Pricing"},
        ],
    )
    merge()
    assert len(remaining(path, "SELECT id FROM profiles")) == 2

    @contextmanager
    def bob_signs_in() -> Iterator[None]:
        if not remaining(path, "SELECT 1 FROM log.events WHERE body LIKE '%bob-1%'"):
            log_events(path, [{"type": "identify", "userId": "bob-1", "anonymousId": "dev2"}])
        yield

    store = SqliteLifecycleStore.open(path, 5)
    try:
        erased = forget(
            store,
            ("user_id", "ann-1"),
            Config(identity=rules),
            time.time(),
            gate=bob_signs_in,
        )
        salt = store.salt()
    finally:
        store.close()
    next(apply, None)

    assert erased.profiles == 1
    assert remaining(path, "SELECT value FROM identities") == [("dev2",)]
    hashes = {bytes(h) for (h,) in remaining(path, "SELECT hash FROM suppressions")}
    assert identifier_hash(salt, "anonymous_id", "dev2") not in hashes


def test_a_rejected_group_calls_traits_are_the_accounts_not_a_persons() -> None:
    """Read leniently (a message refused at the door), a group call's email is its
    account's: a forgotten person's address there does not make it theirs."""
    extractor = Extractor(Config().identity)
    group = b'{"type":"group","groupId":"acme","traits":{"email":"ann@x.io"},"timestamp":7}'
    identify = b'{"type":"identify","traits":{"email":"ann@x.io"},"timestamp":7}'
    assert loose_identifiers(extractor, group, "web") == []
    assert loose_identifiers(extractor, identify, "web") == [("email", "ann@x.io")]


class Door:
    """The daemon's suppression set as forget screens it, and a person who signs in on
    yet another device each time the locks are about to be taken."""

    def __init__(self, path: Path, merger: Callable[[], None]) -> None:
        self.path, self.merger = path, merger
        self.hashes: set[bytes] = set()
        self.screened: list[list[bytes]] = []
        self.lifted: list[list[bytes]] = []
        self.devices = iter(range(100))

    @contextmanager
    def another_device(self) -> Iterator[None]:
        device = f"d{next(self.devices)}"
        log_events(self.path, [{"type": "identify", "userId": "ann-1", "anonymousId": device}])
        self.merger()
        yield

    def screen(self, hashes: list[bytes]) -> list[bytes]:
        new = [h for h in hashes if h not in self.hashes]
        self.hashes.update(new)
        self.screened.append(new)
        return new

    def unscreen(self, hashes: list[bytes]) -> None:
        self.hashes.difference_update(hashes)
        self.lifted.append(hashes)

    def forget(self, store: SqliteLifecycleStore) -> Erased:
        return forget(
            store,
            ("user_id", "ann-1"),
            Config(),
            time.time(),
            gate=self.another_device,
            suppressed=self.hashes.update,
            screen=self.screen,
            unscreen=self.unscreen,
        )


def test_a_person_changing_under_every_try_is_screened_at_the_door_for_the_last(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Each time the locks are about to be taken, Ann signs in on yet another device:
    the first two tries let go. Before the last, what is known of her is screened at
    the door (the daemon's set), and all of it ends up suppressed, nothing let through
    again."""
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    door = Door(path, merger)
    store = SqliteLifecycleStore.open(path, 5)
    try:
        erased = door.forget(store)
        salt = store.salt()
    finally:
        store.close()

    assert next(door.devices) == 3  # three tries
    [first] = door.screened
    assert identifier_hash(salt, "user_id", "ann-1") in first
    assert door.lifted == [[]]
    assert erased.profiles == 1
    assert set(first) <= door.hashes
    assert identifier_hash(salt, "anonymous_id", "d2") in door.hashes


def test_the_screen_is_lifted_when_the_last_try_fails(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    path = tmp_path / "leadsync.db"
    log_events(path, ANN)
    merger()
    door = Door(path, merger)
    store = SqliteLifecycleStore.open(path, 5)
    real_commit = store.commit

    def commit() -> None:
        if next(door.devices) >= 3:  # the last try's
            raise StorageUnavailable("disk I/O error")
        real_commit()

    store.commit = commit  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageUnavailable):
            door.forget(store)
    finally:
        store.close()
    assert door.hashes == set()
    assert door.screened
    assert door.lifted == door.screened


def test_reading_the_log_through_finds_what_searching_it_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MANY_NEEDLES identifiers the log is read through rather than searched: the
    same data forgotten both ways leaves the same files behind."""
    events: list[dict[str, object]] = [
        {"type": "identify", "userId": "ann-1", "anonymousId": "a0"},
        {"type": "track", "anonymousId": "a1", "userId": "ann-1", "event": "Pricing"},
        {"type": "identify", "anonymousId": "a2", "traits": {"email": "ANN@x.io"}},
        {"type": "identify", "userId": "ann-1", "traits": {"email": "ann@x.io"}},
        {"type": "track", "userId": "bob-1", "anonymousId": "a0", "event": "Pricing"},
        {"type": "track", "userId": "bob-1", "properties": {"friend": "ann-1"}, "event": "x"},
    ]
    results = []
    for many in (0, 10**9):
        path = tmp_path / str(many) / "leadsync.db"
        path.parent.mkdir()
        log_events(path, events)
        log_raw(path, [b'{"userId": "ann-1"', b'{"userId": "bob-1"'])
        monkeypatch.setattr(search, "MANY_NEEDLES", many)
        store = SqliteLifecycleStore.open(path, 5)
        try:
            erased = forget(store, ("user_id", "ann-1"), Config(), time.time())
        finally:
            store.close()
        left = remaining(path, "SELECT seq FROM log.events ORDER BY seq")
        results.append((erased, left))
    assert results[0] == results[1]
    assert results[0][0].events == 5


def test_every_device_past_the_cap_is_taken_with_her(
    tmp_path: Path, merger: Callable[[], None]
) -> None:
    """Past the cap of 100 anonymous ids a profile, each further device of Ann's is a
    profile of its own: all of them are hers (decided in one pass over the log, not one
    a profile), and one Bob signed in on stays his."""
    path = tmp_path / "leadsync.db"
    at = "2026-03-01T10:{:02}:{:02}Z".format  # in order: which devices the cap keeps out
    signs_in = [
        {
            "type": "identify",
            "userId": "ann-1",
            "anonymousId": f"d{n}",
            "timestamp": at(*divmod(n, 60)),
        }
        for n in range(140)
    ]
    others = [{"type": "track", "userId": f"bob-{n}", "event": "Pricing"} for n in range(300)]
    log_events(path, [*signs_in, *others])
    carol = {"type": "track", "userId": "carol-1", "anonymousId": "d139", "event": "x"}
    log_events(path, [{**carol, "timestamp": at(59, 0)}])
    merger()
    assert len(remaining(path, "SELECT id FROM profiles")) == 1 + 40 + 300 + 1 - 1

    erased = forgotten(path, ("user_id", "ann-1"))

    assert erased.profiles == 1 + 39  # d139 is Carol's too
    left = {v for (v,) in remaining(path, "SELECT value FROM identities WHERE value LIKE 'd%'")}
    assert left == {"d139"}
    assert len(remaining(path, "SELECT id FROM profiles")) == 300 + 1
