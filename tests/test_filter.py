"""Destination filters: what an operator writes in daemon.toml, and what it lets through."""

from __future__ import annotations

import pytest

from actors.delivery.filter import Filter, FilterError


@pytest.mark.parametrize(
    ("expression", "profile", "expected"),
    [
        ("email != None", {"email": "a@b.io"}, True),
        ("email != None", {}, False),
        (
            'mk_customer_fit_segment in ["good", "very good"]',
            {"mk_customer_fit_segment": "good"},
            True,
        ),
        ('mk_customer_fit_segment in ["good", "very good"]', {}, False),
        ("company_size >= 100 and country == 'DE'", {"company_size": 250, "country": "DE"}, True),
        # A comparison that makes no sense for this profile is false on its own...
        ('mk_likelihood_to_buy_score >= 50 or plan == "enterprise"', {"plan": "enterprise"}, True),
        ("not (mk_likelihood_to_buy_score >= 50)", {}, True),
        ('"vip" in tags', {}, False),
        ('"vip" in tags', {"tags": ["vip"]}, True),
        # ...and so does a number written as a string.
        ("company_size >= 100", {"company_size": "250"}, False),
    ],
)
def test_what_a_filter_lets_through(
    expression: str, profile: dict[str, object], expected: bool
) -> None:
    assert Filter(expression).matches(profile) is expected


def test_the_names_a_filter_reads_are_known_before_it_runs() -> None:
    names = Filter('email != None and mk_lead_grade in ["A", "B"] and plan == "pro"').names
    assert names == {"email", "mk_lead_grade", "plan"}


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("email ==", "not an expression"),
        ("len(email) > 3", "Function 'len' not defined"),
        ("email.__class__", "__class__"),
        ("__import__('os').system('true')", "not defined"),
    ],
)
def test_what_a_filter_may_not_do_is_refused_when_it_is_read(expression: str, problem: str) -> None:
    with pytest.raises(FilterError, match=problem):
        Filter(expression)
