"""The scorer in process beside the identity harness (tests/support/graph.py), on a
real database file, with a clock the test sets: messages to send it, and model variants.

Points are the shipped example model's (actors/scoring/example_model.toml): a demo
request is worth 40, fading by half every 7 days; a CTO at a 200-person software
company is a fit of 100."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from actors.identity.extract import Extractor
from actors.scoring import deploy
from actors.scoring.model import Model, example, parse
from actors.scoring.scorer import Scorer
from storage.scores import PROFILE, Score
from storage.sqlite_connect import connect
from storage.sqlite_scores import SqliteScoreStore
from tests.support.graph import Harness

DAY = 86_400.0
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()


def at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def track(name: str, when: float, n: str, **ids: str) -> dict[str, Any]:
    return {"type": "track", "event": name, "messageId": n, "timestamp": at(when), **ids}


def identify(traits: dict[str, Any], when: float, n: str, **ids: str) -> dict[str, Any]:
    return {"type": "identify", "traits": traits, "messageId": n, "timestamp": at(when), **ids}


def variant(version: str, old: str, new: str) -> Model:
    """The example model as a new version, with `old` in its text made `new`."""
    text = example().text.replace('version = "example-1"', f'version = "{version}"')
    assert old in text
    return parse(text.replace(old, new), f"{version}.toml")


class Scoring:
    """A scorer beside the identity harness, on its own connection, with a clock."""

    def __init__(self, graph: Harness, model: Model | None = None) -> None:
        self.graph = graph
        self.now = T0
        self.store = SqliteScoreStore(connect(graph.path, 5))
        self.model = model or deploy.active(self.store)
        self.scorer = self._scorer(self.model)

    def _scorer(self, model: Model) -> Scorer:
        scorer = Scorer(
            self.store, model, Extractor(self.graph.rules), {"web": "web"}, lambda: self.now
        )
        scorer.use(model)
        return scorer

    def restart(self) -> None:
        """A new scorer on a new connection: only what was committed carries over."""
        self.store = SqliteScoreStore(connect(self.graph.path, 5))
        self.scorer = self._scorer(deploy.active(self.store))

    async def send(self, *messages: dict[str, Any]) -> None:
        await self.graph.send(*messages)
        await self.graph.apply()
        while self.scorer.score_changes():
            pass

    def batch(self) -> None:
        while self.scorer.fold_events(10**9):
            pass
        self.scorer.run_batch()

    def profile_score(self, kind: str, value: str) -> Score:
        with sqlite3.connect(self.graph.path) as db:
            (uid,) = db.execute(
                "SELECT p.uid FROM profiles p JOIN identities i ON i.profile = p.id "
                "WHERE i.kind = ? AND i.value = ?",
                (kind, value),
            ).fetchone()
        return self.store.scores(PROFILE, [uid])[uid]

    def score_ids(self) -> set[str]:
        """Profile ids with a stored score; every stored score belongs to a profile."""
        with sqlite3.connect(self.graph.path) as db:
            (rows,) = db.execute("SELECT count(*) FROM profile_scores").fetchone()
            uids = {
                r[0]
                for r in db.execute(
                    "SELECT p.uid FROM profile_scores s JOIN profiles p ON p.id = s.profile"
                )
            }
        assert len(uids) == rows
        return uids


CTO = {"title": "CTO", "company_size": 200, "industry": "Software", "email": "ann@initech.com"}
