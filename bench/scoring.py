"""Lead scoring: the batch recompute of every profile, and realtime fit latency.

Two parts, both by default (`--batch` or `--realtime` runs one alone).

Batch: writes N profiles straight into a fresh database (1-3 identifiers each, the
traits a fit model reads, a fifth of them in accounts, behavioural aggregates for
about half the identifiers, newest events spread over 60 days), then runs
`Scorer.run_batch` twice, as the scorer actor would: first with no scores stored
(fit, likelihood and grade of every profile, as after a deploy), then again (the
steady state every few hours: likelihood and grade only). The daemon's write gate
is a lock shared with a thread that checkpoints the WAL on the daemon's timer, as
the log writer does: without it the WAL would grow with every score written, which
no daemon sees; the size it reaches between two checkpoints is printed. Next to
each run, the limit measured in the same run: plain sqlite3 reading the rows that
run reads, in the same chunks, with nothing decoded or computed. The database is
written in a child process, so the peak RSS is the scorer's own.

Realtime (bench/realtime.py): a daemon receives identify calls, each a new userId,
at a steady rate, and sends each fit to a realtime webhook destination whose far end
is an aiohttp receiver in a process of its own. Per user, the latency from the
identify's 200 to its record at the destination, and to its fit stored; beside them
the identifies' HTTP round trip, the round trip to an aiohttp handler that does
nothing (the limit), and with `--before REV` the same figures of the daemon at git
revision REV, in the same run.

    .venv/bin/python -m bench.scoring [--profiles 1000000] [--batch | --realtime]
        [--rate 1000] [--seconds 20] [--connections 128] [--before REV]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from actors.delivery.staging import Staging
from actors.destinations.file import FileDestination
from actors.destinations.webhook import WebhookDestination
from actors.identity.extract import ANONYMOUS_ID, EMAIL, USER_ID, Extractor
from actors.identity.rules import uid_of
from actors.identity.settings import IdentitySection
from actors.scoring.batch import BATCH_CHUNK, BatchRunResult
from actors.scoring.likelihood import Intent
from actors.scoring.model import Model, example
from actors.scoring.scorer import Scorer
from bench import measure
from bench.leads import (
    COUNTRIES,
    FIRST_NAMES,
    INDUSTRIES,
    PERSONAL_DOMAINS,
    PLANS,
    TITLES,
    weighted,
)
from daemon.config import Destination, StorageSection
from storage.graph import Activity, Stamped
from storage.migrations import SCORE_COLUMNS
from storage.sqlite_connect import connect
from storage.sqlite_outbox import SqliteOutboxStore
from storage.sqlite_scores import SqliteScoreStore

if TYPE_CHECKING:
    from bench.realtime import RealtimeReport

TARGET_BATCH_SECONDS = 30.0
TARGET_BATCH_PROFILES = 1_000_000
"""The issue's target: a batch run over a million profiles in under 30 s on 2 cores."""
DAY = 86_400.0
INSERT_CHUNK = 20_000
"""Profiles written per executemany round while building the database."""

_encode = msgspec.json.Encoder().encode

# ---------------------------------------------------------------------------- data


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Builder:
    """Rows as the identity merger and the scorer would have left them."""

    def __init__(self, profiles: int, seed: int, now: float, model: Model) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.accounts = max(1, profiles // 250)
        self.titles = weighted(TITLES)
        self.industries = weighted(INDUSTRIES)
        self.countries = weighted(COUNTRIES)
        self.signals = [
            (w.signal or w.event or w.name or w.type or "", w.points)
            for w in model.spec.likelihood.events
        ]
        self.signal_odds = [1.0 / (index + 1) ** 0.5 for index in range(len(self.signals))]
        self.next_identity = 1

    def _pick(self, table: tuple[list[str], list[int]]) -> str:
        return self.rng.choices(table[0], table[1])[0]

    def _size(self) -> int | str:
        size = int(self.rng.lognormvariate(4.5, 1.6)) + 1
        return str(size) if self.rng.random() < 0.1 else size

    def account_rows(self) -> list[tuple[str, str, str, bytes]]:
        rows = []
        for n in range(self.accounts):
            seen = self.now - self.rng.uniform(0, 365 * DAY)
            stamp = _iso(seen)
            values: dict[str, Any] = {
                "name": f"Company {n}",
                "domain": f"company{n}.com",
                "industry": self._pick(self.industries),
                "employees": self._size(),
                "country": self._pick(self.countries),
                "plan": self.rng.choice(PLANS),
            }
            traits = {k: Stamped(v, stamp, f"group-{n}", "backend") for k, v in values.items()}
            rows.append((f"acct_{n:06d}", stamp, _iso(self.now), _encode(traits)))
        return rows

    def chunk(
        self, first: int, last: int
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, str, float, bytes]]]:
        """(profiles, identities, intent) rows for profile ids first..last-1."""
        rng = self.rng
        profiles: list[tuple[Any, ...]] = []
        identities: list[tuple[Any, ...]] = []
        intents: list[tuple[str, str, float, bytes]] = []
        for pid in range(first, last):
            first_seen = self.now - rng.uniform(0, 365 * DAY)
            last_seen = rng.uniform(first_seen, self.now)
            stamp = _iso(last_seen)
            message = f"msg-{pid}"
            account = rng.randrange(self.accounts) if rng.random() < 0.2 else None
            values: dict[str, Any] = {}
            if rng.random() < 0.8:
                values["title"] = self._pick(self.titles)
            if rng.random() < 0.6:
                values["company_size"] = self._size()
            if rng.random() < 0.6:
                values["industry"] = self._pick(self.industries)
            if rng.random() < 0.7:
                values["country"] = self._pick(self.countries)
            email = None
            if rng.random() < 0.85:
                if account is not None:
                    domain = f"company{account}.com"
                elif rng.random() < 0.35:
                    domain = rng.choice(PERSONAL_DOMAINS)
                else:
                    domain = f"firm{rng.randrange(300_000)}.com"
                email = f"{rng.choice(FIRST_NAMES)}.{pid}@{domain}"
                values["email"] = email
            activity = Activity(
                first_seen=_iso(first_seen),
                last_seen=stamp,
                events=rng.randint(1, 200),
                sources={"web": rng.randint(1, 150), "backend": rng.randint(1, 50)},
                traits={k: Stamped(v, stamp, message, "backend") for k, v in values.items()},
                account=(
                    None
                    if account is None
                    else Stamped(f"acct_{account:06d}", stamp, message, "backend")
                ),
            )
            keys = self._identifiers(pid, rng.choice((1, 1, 2, 2, 3)), email)
            stamps = sorted(rng.uniform(first_seen, last_seen) for _ in keys)
            stamps[0] = first_seen
            for (kind, value), at in zip(keys, stamps, strict=True):
                identities.append((self.next_identity, kind, value, pid, _iso(at)))
                self.next_identity += 1
                if rng.random() < 0.5:
                    intents.append((kind, value, *self._intent()))
            kinds = Counter(kind for kind, _ in keys)
            anchor = (_iso(first_seen), *keys[0])
            profiles.append(
                (
                    pid,
                    uid_of(anchor),
                    *anchor,
                    next((v for k, v in keys if k == USER_ID), None),
                    None if account is None else f"acct_{account:06d}",
                    _encode(dict(kinds)),
                    _encode(activity),
                )
            )
        return profiles, identities, intents

    def _identifiers(self, pid: int, count: int, email: str | None) -> list[tuple[str, str]]:
        keys = [(ANONYMOUS_ID, f"{self.rng.getrandbits(64):016x}-{pid:08x}")]
        if count >= 2 and email is not None:
            keys.append((EMAIL, email))
        if count == 3 or (count == 2 and email is None):
            keys.append((USER_ID, f"usr_{pid:09d}"))
        return keys

    def _intent(self) -> tuple[float, bytes]:
        """(as_of, state): the newest event's time, and points per signal at that time."""
        rng = self.rng
        as_of = self.now - rng.uniform(0, 60 * DAY)
        picked = rng.choices(self.signals, self.signal_odds, k=rng.randint(1, 3))
        return as_of, _encode(
            Intent(
                as_of, {name: round(points * rng.uniform(0.3, 2.0), 3) for name, points in picked}
            )
        )


def build(path: Path, profiles: int, seed: int, now: float) -> None:
    """Runs in a child process: the parent's peak RSS stays the scorer's."""
    model = example()
    builder = Builder(profiles, seed, now, model)
    db = sqlite3.connect(path, isolation_level=None)
    # No journal while building (a WAL of the whole file would be written twice);
    # the daemon's WAL mode is set back at the end.
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -524288")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO accounts (group_id, first_seen, last_seen, traits) VALUES (?, ?, ?, ?)",
        builder.account_rows(),
    )
    for first in range(1, profiles + 1, INSERT_CHUNK):
        rows, identities, intents = builder.chunk(first, min(first + INSERT_CHUNK, profiles + 1))
        db.executemany(
            "INSERT INTO profiles (id, uid, anchor_ts, anchor_kind, anchor_value, user_id, "
            "account_id, kinds, activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.executemany(
            "INSERT INTO identities (id, kind, value, profile, first_ts) VALUES (?, ?, ?, ?, ?)",
            identities,
        )
        db.executemany(
            "INSERT INTO intent (kind, value, as_of, state) VALUES (?, ?, ?, ?)", intents
        )
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()


# ---------------------------------------------------------------------------- batch

_PROFILES_AFTER = (
    "SELECT p.id, p.uid, p.account_id, "
    + ", ".join(f"s.{column.strip()}" for column in SCORE_COLUMNS.split(","))
    + " FROM profiles p LEFT JOIN profile_scores s ON s.profile = p.id "
    "WHERE p.id > ? ORDER BY p.id LIMIT ?"
)
_INTENTS_OF = (
    "SELECT i.profile, n.state FROM identities i "
    "JOIN intent n ON n.kind = i.kind AND n.value = i.value WHERE i.profile BETWEEN ? AND ?"
)
_TRAITS_OF = (
    "SELECT p.id, p.activity, a.traits FROM profiles p "
    "LEFT JOIN accounts a ON a.group_id = p.account_id WHERE p.id BETWEEN ? AND ?"
)


def read_limit(path: Path, with_traits: bool) -> float:
    """Plain sqlite3 reading, chunk by chunk, the rows a batch run reads (the traits
    too when every fit is due), with nothing decoded: the floor under the scorer."""
    db = connect(path, 5)
    started = time.perf_counter()
    after = 0
    while rows := db.execute(_PROFILES_AFTER, (after, BATCH_CHUNK)).fetchall():
        span = (rows[0][0], rows[-1][0])
        db.execute(_INTENTS_OF, span).fetchall()
        if with_traits:
            db.execute(_TRAITS_OF, span).fetchall()
        after = rows[-1][0]
    seconds = time.perf_counter() - started
    db.close()
    return seconds


@dataclass
class Checkpointer:
    """The log writer's timer (storage.maintain): a TRUNCATE checkpoint under the write
    gate every checkpoint interval, recording how large the WAL had grown."""

    path: Path
    gate: threading.Lock = field(default_factory=threading.Lock)
    largest_wal: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def held(self) -> AbstractContextManager[None]:
        return _holding(self.gate)

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._run)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self._checkpoint()

    def _run(self) -> None:
        while not self._stop.wait(StorageSection().checkpoint_interval):
            self._checkpoint()

    def _checkpoint(self) -> None:
        wal = self.path.with_name(self.path.name + "-wal")
        db = sqlite3.connect(self.path, timeout=60)
        with self.held():
            self.largest_wal = max(self.largest_wal, wal.stat().st_size if wal.exists() else 0)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        db.close()


@contextmanager
def _holding(lock: threading.Lock) -> Iterator[None]:
    with lock:
        yield


@dataclass
class BatchReport:
    profiles: int
    identities: int
    intents: int
    in_accounts: int
    build_seconds: float
    runs: list[tuple[str, BatchRunResult, float]]
    """(label, result, limit seconds) per run."""
    rss_before: int
    rss: int
    database_bytes: int
    largest_wal: int
    destinations: list[str]
    """Staged for, if any (--destinations)."""

    def lines(self) -> Iterator[str]:
        yield (
            f"leadsync scoring batch: {self.profiles:,} profiles, {self.identities:,} identifiers "
            f"({self.intents:,} with behavioural aggregates), {self.in_accounts:,} profiles in "
            f"accounts; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}; database built in {self.build_seconds:.0f}s"
        )
        target = TARGET_BATCH_SECONDS * self.profiles / TARGET_BATCH_PROFILES
        yield ""
        yield (
            f"{'':40}{'seconds':>9}{'target s':>10}{'profiles/s':>12}{'limit s':>9}"
            f"{'limit/s':>12}{'run/limit':>11}{'changed':>11}"
        )
        for label, result, limit in self.runs:
            yield (
                f"{label:40}{result.seconds:>9.1f}{target:>10.1f}"
                f"{result.profiles / result.seconds:>12,.0f}{limit:>9.1f}"
                f"{result.profiles / limit:>12,.0f}{result.seconds / limit:>11.1f}"
                f"{result.changed:>11,}"
            )
        yield ""
        yield (
            f"target: under {TARGET_BATCH_SECONDS:.0f} s for {TARGET_BATCH_PROFILES:,} profiles "
            "on 2 cores (scaled linearly to other sizes): "
            + ", ".join(
                f"{label.split(':')[0]} {'met' if result.seconds < target else 'NOT met'}"
                for label, result, _ in self.runs
            )
        )
        yield (
            "limit: plain sqlite3 reading the rows the run reads (profiles and their scores, "
            "identifiers' aggregates; run 1 also traits and account traits), chunks of "
            f"{BATCH_CHUNK:,}, nothing decoded, nothing written"
        )
        yield (
            "changed: profiles and accounts whose stored scores changed; fits scored: "
            + ", ".join(
                f"{label.split(':')[0]} {result.fit_rescored:,}" for label, result, _ in self.runs
            )
            + f"; accounts scored: {self.runs[0][1].accounts:,} a run"
        )
        if self.destinations:
            yield (
                f"staged for destinations ({', '.join(self.destinations)}), inside the runs: "
                + ", ".join(
                    f"{label.split(':')[0]} {result.staged:,} outbox rows"
                    for label, result, _ in self.runs
                )
            )
        yield (
            f"peak RSS {self.rss / 2**20:.0f} MB (before scoring {self.rss_before / 2**20:.0f} "
            f"MB); database {self.database_bytes / 2**20:,.0f} MB; WAL at most "
            f"{self.largest_wal / 2**20:,.0f} MB between checkpoints"
        )


DESTINATIONS: dict[str, Destination] = {
    "crm": WebhookDestination(url="http://127.0.0.1:9/", secret="s", mode="both"),
    "files": FileDestination(path="/nonexistent", mode="batch"),
}
"""With --destinations: what a batch run stages for (nothing is sent; the bench times
the run, and staging is part of it)."""


def run_batch(profiles: int, seed: int, destinations: bool) -> BatchReport:
    with tempfile.TemporaryDirectory(prefix="leadsync-bench-") as directory:
        path = Path(directory) / "leadsync.db"
        measure.migrate(path)
        print(f"writing {profiles:,} profiles ...", flush=True)
        started = time.perf_counter()
        writer = multiprocessing.get_context("fork").Process(
            target=build, args=(path, profiles, seed, time.time())
        )
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"building the database failed ({writer.exitcode})")
        build_seconds = time.perf_counter() - started
        db = sqlite3.connect(path)
        identities, intents, in_accounts = db.execute(
            "SELECT (SELECT count(*) FROM identities), (SELECT count(*) FROM intent), "
            "(SELECT count(*) FROM profiles WHERE account_id IS NOT NULL)"
        ).fetchone()
        db.close()

        checkpointer = Checkpointer(path)
        scorer_db = connect(path, 5)
        scorer = Scorer(
            SqliteScoreStore(scorer_db),
            example(),
            Extractor(IdentitySection()),
            {},
            gate=checkpointer.held,
            staging=Staging(SqliteOutboxStore(scorer_db), DESTINATIONS) if destinations else None,
        )
        runs: list[tuple[str, BatchRunResult, float]] = []
        rss_before = measure.peak_rss()
        for label, first in (
            ("run 1: fit + likelihood (no scores)", True),
            ("run 2: likelihood + grade (steady)", False),
        ):
            print(f"{label} ...", flush=True)
            limit = read_limit(path, with_traits=first)
            with checkpointer.running():
                result = scorer.run_batch()
            runs.append((label, result, limit))
        rss = measure.peak_rss()
        scorer_db.close()
        return BatchReport(
            destinations=list(DESTINATIONS) if destinations else [],
            profiles=profiles,
            identities=identities,
            intents=intents,
            in_accounts=in_accounts,
            build_seconds=build_seconds,
            runs=runs,
            rss_before=rss_before,
            rss=rss,
            database_bytes=path.stat().st_size,
            largest_wal=checkpointer.largest_wal,
        )


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--batch", action="store_true", help="run only the batch part")
    parser.add_argument("--realtime", action="store_true", help="run only the realtime part")
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--destinations",
        action="store_true",
        help="batch runs also stage outbox rows for two destinations (both and batch modes)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="identifies a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the realtime run")
    parser.add_argument(
        "--connections", type=int, default=128, help="keep-alive connections at most"
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="realtime: also measure the daemon of this git revision (git archive), first",
    )
    args = parser.parse_args()
    both = not (args.batch or args.realtime)
    reports: list[BatchReport | RealtimeReport] = []
    if args.batch or both:
        reports.append(run_batch(args.profiles, args.seed, args.destinations))
    if args.realtime or both:
        # Here, not at the top: bench.realtime reads this module's tables of traits.
        from bench.realtime import run_realtime

        reports.append(run_realtime(args.rate, args.seconds, args.connections, args.before))
    for report in reports:
        print()
        for line in report.lines():
            print(line)


if __name__ == "__main__":
    main()
