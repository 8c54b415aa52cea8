"""Scores, behavioural aggregates and deployed models in SQLite, synchronously.

The scorer works in one worker thread with its own connection (see
storage/sqlite_graph.py for why); it holds the daemon's write gate around each
transaction, so its chunks queue fairly with the log writer's group commits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec

from storage.graph import Stamped
from storage.log import StoredEvent
from storage.migrations import SCORE_COLUMNS
from storage.scores import (
    PROFILE,
    SCORER_CONSUMER,
    Deploy,
    ProfileInBatch,
    ProfileToScore,
    Score,
    decoded_traits,
)
from storage.sqlite_connect import chunks, marks
from storage.sqlite_errors import translated
from storage.sqlite_graph import LogConsumerStore, by_kind, read_events

"""The scorer's name in the checkpoints table and in LogProgress."""

_encode = msgspec.json.Encoder().encode
_signals = msgspec.json.Decoder(list[str]).decode
_inputs = msgspec.json.Decoder(dict[str, Any]).decode


class _TraitsToScore(msgspec.Struct):
    """The part of a profile's Activity that scoring reads; the decoder skips the rest."""

    traits: dict[str, Stamped] = {}


_activity = msgspec.json.Decoder(_TraitsToScore).decode
_traits = msgspec.json.Decoder(dict[str, Stamped]).decode


@translated
class SqliteScoreStore(LogConsumerStore):
    consumer = SCORER_CONSUMER

    def read_events(self, after: int, limit: int) -> list[StoredEvent]:
        return read_events(self._db, after, limit)

    def log_head(self) -> int:
        return int(self._db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)

    def intents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        found: dict[tuple[str, str], bytes] = {}
        for kind, values in by_kind(keys).items():
            for chunk in chunks(values):
                for value, state in self._db.execute(
                    f"SELECT value, state FROM intent WHERE kind = ? AND value IN ({marks(chunk)})",
                    (kind, *chunk),
                ):
                    found[kind, value] = state
        return found

    def save_intents(self, rows: dict[tuple[str, str], tuple[float, bytes]]) -> None:
        self._db.executemany(
            "INSERT INTO intent (kind, value, as_of, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, value) DO UPDATE SET as_of = excluded.as_of, "
            "state = excluded.state",
            [(kind, value, as_of, state) for (kind, value), (as_of, state) in rows.items()],
        )

    def reset_intents(self) -> int:
        self._db.execute("DELETE FROM intent")
        self.set_checkpoint(0)
        return self.log_head()

    def forget_intents(self, older_than: float) -> int:
        return self._db.execute("DELETE FROM intent WHERE as_of < ?", (older_than,)).rowcount

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def active_model(self) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT m.version, m.body FROM model_deploys d JOIN models m ON m.version = d.version "
            "ORDER BY d.id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def model(self, version: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT digest, body FROM models WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def deploy(self, version: str, digest: str, text: str, origin: str) -> None:
        self._db.execute(
            "INSERT INTO models (version, digest, body) VALUES (?, ?, ?) "
            "ON CONFLICT (version) DO NOTHING",
            (version, digest, text),
        )
        self._db.execute(
            "INSERT INTO model_deploys (version, deployed_at, origin) VALUES (?, ?, ?)",
            (version, datetime.now(UTC).isoformat(timespec="seconds"), origin),
        )

    def deploys(self, limit: int) -> list[Deploy]:
        return [
            Deploy(*row)
            for row in self._db.execute(
                "SELECT version, deployed_at, origin FROM model_deploys ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]

    def changes(self, limit: int) -> list[tuple[int, str, int]]:
        return self._db.execute(
            "SELECT id, uid, reasons FROM profile_changes ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def clear_changes(self, rows: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM profile_changes WHERE id = ?", [(row,) for row in rows])

    def members(self, group_ids: Sequence[str]) -> list[str]:
        return self._select(
            "SELECT uid FROM profiles WHERE account_id IN ", group_ids, lambda row: str(row[0])
        )

    def profile_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM profiles").fetchone()[0])

    def unfolded(self, rows: Sequence[int], after: int, limit: int) -> dict[int, list[StoredEvent]]:
        found: dict[int, list[StoredEvent]] = {}
        for chunk in chunks(rows):
            for profile, seq, source, body in self._db.execute(
                "SELECT i.profile, e.seq, e.source, e.body FROM identities i "
                "JOIN profile_events pe ON pe.node = i.id AND pe.seq > ? "
                "JOIN events e ON e.seq = pe.seq "
                f"WHERE i.profile IN ({marks(chunk)}) ORDER BY pe.seq LIMIT ?",
                (after, *chunk, limit),
            ):
                found.setdefault(profile, []).append(StoredEvent(seq, source, body))
                limit -= 1
            if limit <= 0:
                break
        return found

    def profiles_by_uid(self, uids: Sequence[str]) -> list[ProfileToScore]:
        found: list[ProfileToScore] = []
        for chunk in chunks(uids):
            rows = self._db.execute(
                "SELECT p.id, p.uid, p.account_id, p.activity, a.traits, "
                f"{_prefixed('s')} FROM profiles p "
                "LEFT JOIN accounts a ON a.group_id = p.account_id "
                "LEFT JOIN profile_scores s ON s.profile = p.id "
                f"WHERE p.uid IN ({marks(chunk)})",
                chunk,
            ).fetchall()
            profiles = {
                row_id: ProfileToScore(
                    row_id,
                    uid,
                    account,
                    score_of(score),
                    [],
                    traits=decoded_traits(_profile_traits, activity, "profile", uid),
                    account_traits=(
                        decoded_traits(_account_traits, account_traits, "account", account)
                        if account_traits
                        else {}
                    ),
                )
                for row_id, uid, account, activity, account_traits, *score in rows
            }
            ids = list(profiles)
            for profile, state in self._db.execute(
                "SELECT i.profile, n.state FROM identities i "
                "JOIN intent n ON n.kind = i.kind AND n.value = i.value "
                f"WHERE i.profile IN ({marks(ids)})",
                ids,
            ):
                profiles[profile].intents.append(state)
            found += profiles.values()
        return found

    def profiles_after(self, row: int, limit: int, fit_model: str) -> list[ProfileInBatch]:
        rows = self._db.execute(
            "SELECT p.id, p.uid, p.account_id, s.fit_model, s.fit_segment, s.ltb_score, "
            "s.ltb_segment, s.ltb_signals, s.ltb_model, s.grade FROM profiles p "
            "LEFT JOIN profile_scores s ON s.profile = p.id "
            "WHERE p.id > ? ORDER BY p.id LIMIT ?",
            (row, limit),
        ).fetchall()
        if not rows:
            return []
        profiles = {r[0]: ProfileInBatch(r[0], r[2], r[4], r[5:], [], uid=r[1]) for r in rows}
        for profile, state in self._db.execute(
            "SELECT i.profile, n.state FROM identities i "
            "JOIN intent n ON n.kind = i.kind AND n.value = i.value "
            "WHERE i.profile BETWEEN ? AND ?",
            (rows[0][0], rows[-1][0]),
        ):
            if (target := profiles.get(profile)) is not None:
                target.intents.append(state)
        stale = {r[0]: r[1] for r in rows if r[3] != fit_model}
        for chunk in chunks(list(stale)):
            for profile, activity, account_traits in self._db.execute(
                "SELECT p.id, p.activity, a.traits FROM profiles p "
                "LEFT JOIN accounts a ON a.group_id = p.account_id "
                f"WHERE p.id IN ({marks(chunk)})",
                chunk,
            ):
                target = profiles[profile]
                target.refit = ProfileToScore(
                    profile,
                    stale[profile],
                    target.account,
                    None,
                    target.intents,
                    traits=decoded_traits(_profile_traits, activity, "profile", stale[profile]),
                    account_traits=(
                        decoded_traits(_account_traits, account_traits, "account", target.account)
                        if account_traits
                        else {}
                    ),
                )
        return list(profiles.values())

    def save_likelihoods(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._db.executemany(
            "UPDATE profile_scores SET ltb_score = ?, ltb_segment = ?, ltb_signals = ?, "
            "ltb_model = ?, ltb_at = ?, grade = ? WHERE profile = ?",
            rows,
        )

    def accounts_after(self, group_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        return [
            (group, decoded_traits(_account_traits, traits, "account", group))
            for group, traits in self._db.execute(
                "SELECT group_id, traits FROM accounts WHERE group_id > ? ORDER BY group_id "
                "LIMIT ?",
                (group_id, limit),
            )
        ]

    def scores(self, subject: str, ids: Sequence[str]) -> dict[str, Score]:
        if subject == PROFILE:
            sql = (
                f"SELECT p.uid, {_prefixed('s')} FROM profiles p "
                "JOIN profile_scores s ON s.profile = p.id WHERE p.uid IN "
            )
        else:
            sql = f"SELECT group_id, {SCORE_COLUMNS} FROM account_scores WHERE group_id IN "
        found: dict[str, Score] = {}
        for chunk in chunks(ids):
            for key, *columns in self._db.execute(f"{sql}({marks(chunk)})", chunk):
                score = score_of(columns)
                if score is not None:
                    found[key] = score
        return found

    def scores_by_row(self, rows: Sequence[int]) -> dict[int, Score]:
        found: dict[int, Score] = {}
        for chunk in chunks(rows):
            for row, *columns in self._db.execute(
                f"SELECT profile, {SCORE_COLUMNS} FROM profile_scores "
                f"WHERE profile IN ({marks(chunk)})",
                chunk,
            ):
                if (score := score_of(columns)) is not None:
                    found[row] = score
        return found

    def scores_after(self, row: int, limit: int) -> dict[int, Score]:
        found: dict[int, Score] = {}
        for profile, *columns in self._db.execute(
            f"SELECT profile, {SCORE_COLUMNS} FROM profile_scores WHERE profile > ? "
            "ORDER BY profile LIMIT ?",
            (row, limit),
        ):
            if (score := score_of(columns)) is not None:
                found[profile] = score
        return found

    def save_profile_scores(self, scores: dict[int, Score]) -> None:
        # Only for profiles that still exist: the merger may have merged one away (and
        # deleted its scores) since the scorer read it.
        self._db.executemany(
            f"INSERT OR REPLACE INTO profile_scores (profile, {SCORE_COLUMNS}) "
            f"SELECT {marks(range(13))} WHERE EXISTS (SELECT 1 FROM profiles WHERE id = ?)",
            [(row, *_columns(score), row) for row, score in sorted(scores.items())],
        )

    def save_account_scores(self, scores: dict[str, Score]) -> None:
        self._db.executemany(
            f"INSERT OR REPLACE INTO account_scores (group_id, {SCORE_COLUMNS}) "
            f"VALUES ({marks(range(13))})",
            [(group, *_columns(score)) for group, score in sorted(scores.items())],
        )

    def forget_gone(self) -> int:
        gone = self._db.execute(
            "DELETE FROM profile_scores WHERE profile NOT IN (SELECT id FROM profiles)"
        ).rowcount
        return (
            gone
            + self._db.execute(
                "DELETE FROM account_scores WHERE group_id NOT IN (SELECT group_id FROM accounts)"
            ).rowcount
        )


def _columns(s: Score) -> tuple[Any, ...]:
    return (
        s.fit_score,
        s.fit_segment,
        _encode(s.fit_signals),
        s.fit_model,
        s.fit_at,
        s.ltb_score,
        s.ltb_segment,
        _encode(s.ltb_signals),
        s.ltb_model,
        s.ltb_at,
        s.grade,
        _encode(s.inputs),
    )


def _values(traits: dict[str, Stamped]) -> dict[str, Any]:
    return {name: stamped.value for name, stamped in traits.items()}


def _profile_traits(activity: bytes) -> dict[str, Any]:
    return _values(_activity(activity).traits)


def _account_traits(traits: bytes) -> dict[str, Any]:
    return _values(_traits(traits))


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in SCORE_COLUMNS.split(","))


def score_of(columns: Sequence[Any]) -> Score | None:
    (
        fit_score,
        fit_segment,
        fit_signals,
        fit_model,
        fit_at,
        ltb_score,
        ltb_segment,
        ltb_signals,
        ltb_model,
        ltb_at,
        grade,
        inputs,
    ) = columns
    if fit_model is None and ltb_model is None:
        return None
    return Score(
        fit_score,
        fit_segment,
        _signals(fit_signals) if fit_signals else [],
        fit_model,
        fit_at,
        ltb_score,
        ltb_segment,
        _signals(ltb_signals) if ltb_signals else [],
        ltb_model,
        ltb_at,
        grade,
        _inputs(inputs) if inputs else {},
    )
