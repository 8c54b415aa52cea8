"""Customer Fit: a model's rules applied to a profile's traits and its account's.

Comparisons are forgiving the way traits are messy: strings match without regard to
case or surrounding spaces, and a number sent as a string ("200") is a number. A
rule whose trait is missing, or has a value it cannot compare, does not match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, NamedTuple

from actors.scoring.model import FIT_SEGMENTS, FitRule, Model

PERSONAL_DOMAINS = frozenset(
    line.strip()
    for line in resources.files("actors.scoring")
    .joinpath("personal_domains.txt")
    .read_text("utf-8")
    .splitlines()
    if line.strip() and not line.startswith("#")
)
"""Free mail providers: an address there says nothing about where the person works."""


class Traits(NamedTuple):
    """What a rule can look at: the profile's own traits, and its account's under `account.`."""

    profile: Mapping[str, Any]
    account: Mapping[str, Any]


class FitScore(NamedTuple):
    score: int
    segment: str
    signals: list[str]
    """The matched rules' signals, weightiest first (either sign), at most three."""
    inputs: dict[str, Any]
    """The model's inputs found on the profile, as `mk_<name>` traits."""


class FitScorer:
    """A model compiled for speed: regexes compiled, operands normalised, and rules
    grouped by the trait they read, so each trait is looked up once per profile."""

    def __init__(self, model: Model) -> None:
        spec = model.spec
        self._base = spec.fit.base
        inputs = {name: [p.split(".") for p in paths] for name, paths in spec.inputs.items()}
        groups: dict[str, tuple[list[list[str]], list[_Rule]]] = {}
        for index, rule in enumerate(spec.fit.rules):
            # A rule may name an input (tried along its paths) or a trait path itself.
            paths = inputs.get(rule.trait, [rule.trait.split(".")])
            compiled = (_matcher(rule), rule.points, (-abs(rule.points), index), rule.signal)
            groups.setdefault(rule.trait, (paths, []))[1].append(compiled)
        self._groups = list(groups.values())
        order = list(groups)
        self._inputs = [
            (f"mk_{name}", order.index(name) if name in groups else None, paths)
            for name, paths in inputs.items()
        ]
        self._segments = sorted(
            ((spec.fit.segments[name], name) for name in FIT_SEGMENTS[:-1]), reverse=True
        )

    def score(self, traits: Traits) -> FitScore:
        total = self._base
        matched: list[tuple[tuple[float, int], str]] = []
        values = []
        for paths, rules in self._groups:
            value = _lookup(traits, paths)
            values.append(value)
            for matches, points, rank, signal in rules:
                if matches(value):
                    total += points
                    matched.append((rank, signal))
        score = max(0, min(100, math.floor(total + 0.5)))  # 72.5 is 73, not 72
        matched.sort()
        inputs = {}
        for name, group, paths in self._inputs:
            value = values[group] if group is not None else _lookup(traits, paths)
            if value is not None:
                inputs[name] = value
        return FitScore(score, self.segment(score), [s for _, s in matched[:3]], inputs)

    def segment(self, score: float) -> str:
        for threshold, name in self._segments:
            if score >= threshold:
                return name
        return FIT_SEGMENTS[-1]


_Rule = tuple[Callable[[Any], bool], float, tuple[float, int], str]
"""A compiled rule: matcher, points, rank among signals (weightiest first), signal."""


def _lookup(traits: Traits, paths: list[list[str]]) -> Any:
    """The first path that holds a value; `account.x` reads the account's traits."""
    for path in paths:
        if path[0] == "account" and len(path) > 1:
            value: Any = traits.account.get(path[1])
            rest = path[2:]
        else:
            value = traits.profile.get(path[0])
            rest = path[1:]
        for step in rest:
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None and value != "":
            return value
    return None


def _matcher(rule: FitRule) -> Callable[[Any], bool]:
    """A predicate over the trait's value (None when absent), built once per rule."""
    if rule.exists is not None:
        wanted = rule.exists
        return lambda value: (value is not None) is wanted
    if rule.personal_email is not None:
        personal = rule.personal_email
        return lambda value: (
            (d := _domain(value)) is not None and (d in PERSONAL_DOMAINS) is personal
        )
    if rule.regex is not None:
        pattern = re.compile(rule.regex)
        return lambda value: isinstance(value, str) and pattern.search(value) is not None
    if rule.contains is not None:
        needle = _fold(rule.contains)
        return lambda value: (
            needle in _fold(value)
            if isinstance(value, str)
            else isinstance(value, list) and any(_same(item, needle) for item in value)
        )
    if rule.in_ is not None:
        texts = frozenset(_fold(o) for o in rule.in_ if isinstance(o, str))
        numbers = frozenset(float(o) for o in rule.in_ if not isinstance(o, str))
        return lambda value: (
            (isinstance(value, str) and _fold(value) in texts)
            or (bool(numbers) and (n := _number(value)) is not None and n in numbers)
        )
    if rule.equals is not None:
        option = _fold(rule.equals) if isinstance(rule.equals, str) else rule.equals
        return lambda value: value is not None and _same(value, option)
    low = rule.min if rule.min is not None else float("-inf")
    high = rule.max if rule.max is not None else float("inf")
    return lambda value: (n := _number(value)) is not None and low <= n < high


def _fold(text: str) -> str:
    return text.strip().casefold()


def _same(value: Any, option: Any) -> bool:
    """`option` comes normalised from the model; `value` from a trait."""
    if isinstance(option, bool) or isinstance(value, bool):
        return value is option
    if isinstance(option, str):
        return isinstance(value, str) and _fold(value) == option
    number = _number(value)
    return number is not None and number == option


def _number(value: Any) -> float | None:
    """A trait as a number; None when it is not one a float can hold (an integer of
    310 digits is a number, but no rule's range can hold it)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip().replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return None


def _domain(value: Any) -> str | None:
    """An address's domain; a bare domain is taken as one too."""
    if not isinstance(value, str):
        return None
    # "Ann <ann@gmail.com>" is how some forms and CRMs hand addresses on.
    text = value.strip().lower().rstrip(">")
    domain = text.rpartition("@")[2]
    return domain if "." in domain and not _SPACE.search(domain) else None


_SPACE = re.compile(r"\s")
