"""Which profiles a destination may receive: a Python-like expression, checked once.

    email != None and mk_customer_fit_segment in ["good", "very good"]

simpleeval evaluates it (no calls, no attribute access, no imports), so an operator's
typo cannot run code. Names are the profile's traits, its identifiers (user_id,
email, anonymous_id) and its mk_* scores; a name the profile lacks is None, because
most profiles lack most traits and that must not be an error.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

import simpleeval


class FilterError(ValueError):
    """The expression cannot be parsed, or uses what a filter may not."""


class Filter:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._evaluator = simpleeval.EvalWithCompoundTypes(functions={}, operators=_OPERATORS)
        try:
            self._tree = self._evaluator.parse(expression)
        except SyntaxError as exc:
            raise FilterError(f"not an expression: {exc.msg} at column {exc.offset}") from None
        self.names = frozenset(
            node.id for node in ast.walk(self._tree) if isinstance(node, ast.Name)
        ) - {"None", "True", "False"}
        """Every name the expression reads, so callers fetch traits only when needed."""
        try:
            self.matches({})  # an expression that cannot run on an empty profile is refused now
        except FilterError:
            raise
        except Exception as exc:
            raise FilterError(f"{type(exc).__name__}: {exc}") from None

    def matches(self, values: Mapping[str, Any]) -> bool:
        self._evaluator.names = lambda node: values.get(node.id)
        try:
            return bool(self._evaluator.eval(self.expression, previously_parsed=self._tree))
        except simpleeval.InvalidExpression as exc:
            raise FilterError(str(exc)) from None
        except TypeError:
            return False  # arithmetic on a value the profile lacks (None + 1)


def _lenient(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A comparison that makes no sense for this profile (None >= 50, a number in a
    string) is false, on its own: `score >= 50 or plan == "enterprise"` still holds
    for an enterprise without a score."""

    def compared(left: Any, right: Any) -> bool:
        try:
            return bool(compare(left, right))
        except TypeError:
            return False

    return compared


_OPERATORS = {
    kind: _lenient(op) if kind in (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn) else op
    for kind, op in simpleeval.DEFAULT_OPERATORS.items()
}
