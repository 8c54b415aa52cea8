"""Likelihood to Buy: weighted events that fade with a half-life.

Exponential decay is memoryless, so what an identifier's events are worth can be kept
as one number per signal at one instant (`Intent`): a new event decays the sum to its
own time and adds its points; reading the score at any later time decays the sum
once more. A batch run therefore costs per profile, never per event, and a profile
with no new activity loses half its score every half-life.

Aggregates are kept per identifier, not per profile, because identifiers are what
events carry and what never changes: when profiles merge or split, a profile's
likelihood is still the sum over the identifiers it holds now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import msgspec

from actors.messages import Event
from actors.scoring.model import LIKELIHOOD_SEGMENTS, Model


class Intent(msgspec.Struct, array_like=True):
    """Points per signal, as they stood at `as_of` (epoch seconds of the newest event)."""

    as_of: float
    signals: dict[str, float]

    def add(self, points: float, signal: str, at: float, half_life: float) -> None:
        """Fold in one event at time `at`, in any order of arrival."""
        if at > self.as_of:
            factor = 0.5 ** ((at - self.as_of) / half_life)
            self.signals = {name: value * factor for name, value in self.signals.items()}
            self.as_of = at
        else:
            points *= 0.5 ** ((self.as_of - at) / half_life)
        self.signals[signal] = self.signals.get(signal, 0.0) + points


class LikelihoodScore(NamedTuple):
    score: int
    segment: str
    signals: list[str]
    points: dict[str, float]
    """Each signal's points now: accounts add up their members' (see scorer)."""


class LikelihoodScorer:
    def __init__(self, model: Model, source_kinds: dict[str, str]) -> None:
        spec = model.spec.likelihood
        self.half_life = float(spec.half_life)
        self.lookback = float(spec.lookback)
        self._source_kinds = source_kinds
        self._weights = [
            (
                w.type,
                w.event.casefold() if w.event else None,
                w.name.casefold() if w.name else None,
                w.source,
                w.source_kind,
                w.points,
                w.signal or w.event or w.name or w.type or w.source_kind or w.source or "",
            )
            for w in spec.events
        ]
        self._segments = sorted(
            ((spec.segments[name], name) for name in LIKELIHOOD_SEGMENTS[:-1]), reverse=True
        )
        self._lowest = self.segment(0)

    def weigh(self, event: Event) -> tuple[float, str] | None:
        """The points and signal of the first weight that matches, if any does."""
        event_name = event.event.casefold() if event.event else None
        page_name = event.name.casefold() if event.name else None
        kind = self._source_kinds.get(event.source)
        for type_, name, page, source, source_kind, points, signal in self._weights:
            if (
                (type_ is None or type_ == event.type)
                and (name is None or name == event_name)
                and (page is None or page == page_name)
                and (source is None or source == event.source)
                and (source_kind is None or source_kind == kind)
            ):
                return points, signal
        return None

    def now_points(self, intents: Iterable[Intent], now: float) -> dict[str, float]:
        """Every signal's points at `now`, summed over identifiers; what has been quiet
        for longer than the lookback counts nothing."""
        total: dict[str, float] = {}
        for intent in intents:
            age = now - intent.as_of
            if age > self.lookback:
                continue
            factor = 0.5 ** (age / self.half_life) if age > 0 else 1.0
            for name, value in intent.signals.items():
                total[name] = total.get(name, 0.0) + value * factor
        return total

    def score(self, points: dict[str, float]) -> LikelihoodScore:
        if not points:  # most profiles in a batch run: nothing weighted lately
            return LikelihoodScore(0, self._lowest, [], points)
        score = max(0, min(100, math.floor(sum(points.values()) + 0.5)))
        if len(points) == 1:
            ((name, value),) = points.items()
            signals = [name] if round(value, 2) != 0 else []
        else:
            # Ties by name, so the signals do not change with the order rows were read in.
            ranked = sorted(points.items(), key=lambda item: (-abs(item[1]), item[0]))
            signals = [name for name, value in ranked[:3] if round(value, 2) != 0]
        return LikelihoodScore(score, self.segment(score), signals, points)

    def segment(self, score: float) -> str:
        for threshold, name in self._segments:
            if score >= threshold:
                return name
        return LIKELIHOOD_SEGMENTS[-1]


def epoch(timestamp: str) -> float | None:
    """An event's ISO 8601 time as epoch seconds; None if the log holds none usable."""
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None
