"""The scorer's interface and its rows: scores, aggregates, deployed models.

Like the graph, it works in one worker thread, synchronously, a chunk at a time;
every write happens between `begin()` and `commit()`. SQLite's is
storage/sqlite_scores.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import msgspec

from storage.log import StoredEvent

PROFILE, ACCOUNT = "profile", "account"
"""Subjects of a score."""


SCORER_CONSUMER = "scorer"
"""The scorer's name in the checkpoints table and in LogProgress."""


class Score(msgspec.Struct, omit_defaults=True):
    """A profile's or an account's current scores. Fit is rescored as traits change,
    likelihood in batch runs, so each half records the model version and the time
    (epoch seconds) that made it; after a deploy, a half not yet rescored still
    names the old version."""

    fit_score: int | None = None
    fit_segment: str | None = None
    fit_signals: list[str] = []
    fit_model: str | None = None
    fit_at: float | None = None
    ltb_score: int | None = None
    ltb_segment: str | None = None
    ltb_signals: list[str] = []
    ltb_model: str | None = None
    ltb_at: float | None = None
    grade: str | None = None
    inputs: dict[str, Any] = {}
    """The traits the fit model read, as mk_job_title, mk_country, ..."""

    def traits(self) -> dict[str, Any]:
        """The scores as the mk_* traits destinations receive."""
        traits: dict[str, Any] = {}
        if self.fit_score is not None:
            traits["mk_customer_fit_score"] = self.fit_score
            traits["mk_customer_fit_segment"] = self.fit_segment
            traits["mk_customer_fit_signals"] = self.fit_signals
        if self.ltb_score is not None:
            traits["mk_likelihood_to_buy_score"] = self.ltb_score
            traits["mk_likelihood_to_buy_segment"] = self.ltb_segment
            traits["mk_likelihood_to_buy_signals"] = self.ltb_signals
        if self.grade is not None:
            traits["mk_lead_grade"] = self.grade
        traits.update(self.inputs)
        return traits


class Damaged(dict[str, Any]):
    """Traits read from a row that cannot be decoded (damaged on disk, or by hand):
    empty, with why. The scorer holds the profile or account that carries them."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class DamagedRow(ValueError):
    """Raised for an item whose row is Damaged, so that the item is held."""


def decoded_traits(
    decode: Callable[[bytes], dict[str, Any]], raw: bytes, kind: str, key: object
) -> dict[str, Any]:
    """`decode(raw)`, or Damaged saying which row (`kind` `key`) could not be read."""
    try:
        return decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return Damaged(f"the {kind} row of {key} cannot be read: {exc}")


class ProfileToScore(msgspec.Struct):
    """What scoring one profile needs; `traits` and `account_traits` are filled only
    when the fit must be computed."""

    row: int
    uid: str
    account: str | None
    score: Score | None
    intents: list[bytes] = []
    traits: dict[str, Any] | None = None
    account_traits: dict[str, Any] | None = None


class ProfileInBatch(msgspec.Struct):
    """A profile as a batch run reads it. When its fit was made by the model in use,
    only what its likelihood and grade need is read, and only they are written back;
    otherwise `refit` holds what a whole new score needs."""

    row: int
    account: str | None
    fit_segment: str | None
    likelihood: tuple[Any, ...]
    """As stored: (ltb_score, ltb_segment, ltb_signals as JSON, ltb_model, grade)."""
    intents: list[bytes] = []
    refit: ProfileToScore | None = None
    uid: str = ""
    """The profile id: what a held profile is known by."""


class Deploy(msgspec.Struct, frozen=True):
    version: str
    deployed_at: str
    origin: str
    """What deployed it: a file path, `leadsync model deploy`, or the built-in example."""


class ScoreStore(Protocol):
    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def checkpoint(self) -> int:
        """The last log sequence folded into the behavioural aggregates."""
        ...

    def set_checkpoint(self, seq: int) -> None: ...

    def read_events(self, after: int, limit: int) -> list[StoredEvent]: ...

    def log_head(self) -> int: ...

    def intents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Behavioural aggregates by identifier (kind, value), as stored."""
        ...

    def save_intents(self, rows: dict[tuple[str, str], tuple[float, bytes]]) -> None:
        """(kind, value) -> (time of the newest event, aggregate as stored)."""
        ...

    def reset_intents(self) -> int:
        """Forget every aggregate and read the log again from the start (weights changed);
        returns the log head that the replay has to reach."""
        ...

    def forget_intents(self, older_than: float) -> int:
        """Drop aggregates whose newest event is older than this (epoch seconds)."""
        ...

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def generation(self) -> int:
        """The identity graph's generation (see GraphStore.generation): profile row ids
        and uids read before a rebuild swap mean nothing after it."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Several reads that see one state of the database."""
        ...

    def active_model(self) -> tuple[str, str] | None:
        """(version, model file text) of the newest deploy."""
        ...

    def model(self, version: str) -> tuple[str, str] | None:
        """(digest, text) of a version ever deployed."""
        ...

    def deploy(self, version: str, digest: str, text: str, origin: str) -> None: ...

    def deploys(self, limit: int) -> list[Deploy]: ...

    def changes(self, limit: int) -> list[tuple[int, str, int]]:
        """(row, profile uid, Change flags): the oldest `limit` changes the identity
        actor recorded; a profile changed in several batches has a row for each."""
        ...

    def clear_changes(self, rows: Sequence[int]) -> None:
        """Take rows from `changes` off the list; changes recorded since are rows of
        their own, and stay."""
        ...

    def members(self, group_ids: Sequence[str]) -> list[str]:
        """Uids of the profiles that belong to these accounts."""
        ...

    def profile_count(self) -> int:
        """How many profiles there are (what a batch run will walk)."""
        ...

    def unfolded(self, rows: Sequence[int], after: int, limit: int) -> dict[int, list[StoredEvent]]:
        """Per profile row, the events after log sequence `after` (the fold's
        checkpoint) whose home is one of its identifiers, oldest first; at most
        `limit` in all."""
        ...

    def profiles_by_uid(self, uids: Sequence[str]) -> list[ProfileToScore]:
        """Existing profiles among `uids`, with traits, account traits, aggregates and scores."""
        ...

    def profiles_after(self, row: int, limit: int, fit_model: str) -> list[ProfileInBatch]:
        """The next profiles in row order, with their aggregates; traits only where
        the fit was not made by `fit_model`."""
        ...

    def save_likelihoods(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(ltb_score, ltb_segment, ltb_signals as JSON, ltb_model, ltb_at, grade, row)
        for profiles whose stored fit stays."""
        ...

    def accounts_after(self, group_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """(group id, traits) of the next accounts in id order."""
        ...

    def scores(self, subject: str, ids: Sequence[str]) -> dict[str, Score]:
        """Current scores of profiles (by profile id) or accounts (by group id)."""
        ...

    def scores_by_row(self, rows: Sequence[int]) -> dict[int, Score]:
        """Profiles' scores by profile row (those that have one)."""
        ...

    def scores_after(self, row: int, limit: int) -> dict[int, Score]:
        """The next `limit` scored profiles after profile row `row`, in row order."""
        ...

    def save_profile_scores(self, scores: dict[int, Score]) -> None:
        """By profile row (`ProfileToScore.row`); a merge deletes a profile's row with it."""
        ...

    def save_account_scores(self, scores: dict[str, Score]) -> None: ...

    def forget_gone(self) -> int:
        """Delete scores of profiles and accounts that no longer exist (after a rebuild)."""
        ...
