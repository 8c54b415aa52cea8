"""Scoring model files: TOML a revenue-ops person can read, change and deploy.

A model has three parts. `fit` is rules on traits, each worth points and naming the
signal it stands for. `likelihood` is weights on events that fade with a half-life.
`grade` turns the two segments into a letter. Everything here is checked when the
file is loaded, so a broken file is refused with its line and the reason before it
can replace the running model.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec

from actors.settings import ConfigError, Duration, dec_hook, describe, dotted, read_text, where

FIT_SEGMENTS = ("very good", "good", "medium", "low")
LIKELIHOOD_SEGMENTS = ("very high", "high", "medium", "low")
GRADES = ("A", "B", "C", "D", "E")
SCORE_TRAITS = frozenset(
    f"mk_{name}"
    for name in (
        "customer_fit_score",
        "customer_fit_segment",
        "customer_fit_signals",
        "likelihood_to_buy_score",
        "likelihood_to_buy_segment",
        "likelihood_to_buy_signals",
        "lead_grade",
    )
)
"""The traits scores leave as; an input (sent on as mk_<name>) must not shadow one."""
OPERATORS = ("equals", "in", "contains", "regex", "min", "max", "exists", "personal_email")

DEFAULT_GRADE = {
    "very good": ["A", "A", "B", "C"],
    "good": ["A", "B", "C", "D"],
    "medium": ["B", "C", "D", "E"],
    "low": ["C", "D", "E", "E"],
}
"""Rows are fit segments, columns likelihood segments from "very high" to "low"."""

DEFAULT_INPUTS = {
    "job_title": ["title", "job_title", "jobTitle"],
    "country": ["country", "address.country", "account.country"],
    "company_size": [
        "company_size",
        "employees",
        "company.employee_count",
        "account.employees",
        "account.employee_count",
    ],
    "industry": ["industry", "company.industry", "account.industry"],
}

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
TraitPath = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")]
Points = Annotated[float, msgspec.Meta(ge=-100, le=100)]
Threshold = Annotated[float, msgspec.Meta(ge=0, le=100)]
Signal = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class FitRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One condition on one trait. Exactly one operator; `min` and `max` may pair up."""

    trait: TraitPath
    points: Points
    signal: Signal
    equals: str | float | bool | None = None
    in_: list[str | float] | None = msgspec.field(default=None, name="in")
    contains: str | None = None
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    exists: bool | None = None
    personal_email: bool | None = None


class FitSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    segments: dict[str, Threshold]
    rules: list[FitRule]
    base: Points = 0


class EventWeight(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Matches an event when every field given matches; the first weight that matches
    an event is the one it counts for."""

    points: Points
    signal: Signal | None = None
    type: str | None = None
    event: str | None = None
    name: str | None = None
    source: str | None = None
    source_kind: str | None = None


class LikelihoodSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    half_life: Duration
    segments: dict[str, Threshold]
    events: list[EventWeight]
    lookback: Duration = Duration(90 * 86400)


class ModelFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    fit: FitSection
    likelihood: LikelihoodSection
    description: str = ""
    inputs: dict[Name, list[TraitPath]] = msgspec.field(default_factory=lambda: DEFAULT_INPUTS)
    grade: dict[str, list[str]] = msgspec.field(default_factory=lambda: DEFAULT_GRADE)


class Model(msgspec.Struct, frozen=True):
    """A checked model, with its text kept so a deploy stores exactly what was checked."""

    spec: ModelFile
    text: str
    digest: str
    """Of the text: one version must always mean the same model."""
    likelihood_digest: str
    """Of what the stored behavioural aggregates depend on (weights, half-life, and the
    lookback past which they are deleted): when it changes, they are rebuilt from the log."""

    @property
    def version(self) -> str:
        return self.spec.version


class ModelError(ConfigError):
    """A model file that cannot be used: file, line, key and the reason."""


def load(path: str | Path) -> Model:
    return parse(read_text(path, "model file", ModelError), str(path))


def example() -> Model:
    """The model shipped with leadsync, active until one is deployed."""
    text = resources.files("actors.scoring").joinpath("example_model.toml").read_text("utf-8")
    return parse(text, "<example model>")


def parse(text: str, filename: str) -> Model:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{filename}: not valid TOML: {exc}") from None
    try:
        spec = msgspec.convert(raw, ModelFile, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ModelError(
            describe(exc, (), filename, text, "actors/scoring/example_model.toml")
        ) from None
    _check(spec, filename, text)
    weights = msgspec.json.encode(
        [float(spec.likelihood.half_life), float(spec.likelihood.lookback), spec.likelihood.events],
        order="deterministic",
    )
    return Model(
        spec,
        text,
        hashlib.sha256(text.encode()).hexdigest(),
        hashlib.sha256(weights).hexdigest(),
    )


def _check(spec: ModelFile, filename: str, text: str) -> None:
    def fail(key: tuple[str, ...], problem: str) -> None:
        raise ModelError(f"{where(filename, text, key)}{dotted(key)}: {problem}")

    _check_segments(spec.fit.segments, FIT_SEGMENTS, ("fit", "segments"), fail)
    _check_segments(spec.likelihood.segments, LIKELIHOOD_SEGMENTS, ("likelihood", "segments"), fail)
    if spec.likelihood.half_life <= 0:
        fail(("likelihood", "half_life"), "must be more than 0")
    if spec.likelihood.lookback < spec.likelihood.half_life:
        fail(("likelihood", "lookback"), "must be at least the half_life")
    for index, rule in enumerate(spec.fit.rules):
        key = ("fit", "rules", str(index))
        given = [op for op in OPERATORS if _operand(rule, op) is not None]
        if not given or (len(given) > 1 and set(given) != {"min", "max"}):
            fail(
                key,
                f"needs exactly one condition (one of: {', '.join(OPERATORS)}; "
                f"min and max may go together), found {', '.join(given) or 'none'}",
            )
        if rule.regex is not None:
            try:
                re.compile(rule.regex)
            except re.error as exc:
                fail((*key, "regex"), f"not a valid regular expression: {exc}")
        for bound in ("min", "max"):
            value = getattr(rule, bound)
            if value is not None and not math.isfinite(value):
                fail((*key, bound), "must be a finite number")
        if rule.min is not None and rule.max is not None and rule.min >= rule.max:
            fail((*key, "max"), f"must be more than min ({rule.min:g})")
    for name in spec.inputs:
        if f"mk_{name}" in SCORE_TRAITS:
            fail(("inputs", name), f"mk_{name} is a score's own name; call the input otherwise")
    for index, weight in enumerate(spec.likelihood.events):
        if not any((weight.type, weight.event, weight.name, weight.source, weight.source_kind)):
            fail(
                ("likelihood", "events", str(index)),
                "matches every event; give at least one of type, event, name, source, source_kind",
            )
    for segment in FIT_SEGMENTS:
        row = spec.grade.get(segment)
        if row is None:
            fail(("grade",), f'needs a row for fit segment "{segment}"')
        elif len(row) != 4 or any(letter not in GRADES for letter in row):
            fail(
                ("grade", segment),
                "must be four grades (A to E), one per likelihood segment: "
                "very high, high, medium, low",
            )
    for segment in spec.grade:
        if segment not in FIT_SEGMENTS:
            fail(("grade", segment), f"not a fit segment (one of: {', '.join(FIT_SEGMENTS)})")


def _check_segments(
    segments: dict[str, float], names: tuple[str, ...], key: tuple[str, ...], fail: Any
) -> None:
    """Every segment but the last needs a threshold, and they must fall in order."""
    wanted = names[:-1]
    for name in segments:
        if name not in wanted:
            fail((*key, name), f"not a segment with a threshold (those are: {', '.join(wanted)})")
    for name in wanted:
        if name not in segments:
            fail(key, f'needs a threshold for "{name}" (anything below the last is "{names[-1]}")')
    thresholds = [segments[name] for name in wanted]
    if thresholds != sorted(thresholds, reverse=True) or len(set(thresholds)) != len(thresholds):
        fail(key, "thresholds must fall from first to last: " + ", ".join(wanted))


def _operand(rule: FitRule, op: str) -> Any:
    return rule.in_ if op == "in" else getattr(rule, op)
