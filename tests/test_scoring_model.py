"""Scoring models in memory: how files are checked, and what fit and likelihood compute.

Expectations are computed by hand from the shipped example model, whose rules and
points are in actors/scoring/example_model.toml.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from actors.messages import Event
from actors.scoring.fit import FitScorer, Traits
from actors.scoring.likelihood import Intent, LikelihoodScorer
from actors.scoring.model import ModelError, example, load, parse

DAY = 86_400.0

CTO = {
    "title": "CTO",
    "company_size": 200,
    "industry": "Software",
    "email": "ann@initech.com",
    "country": "Brazil",
}


def fit(traits: dict[str, Any], account: dict[str, Any] | None = None) -> Any:
    return FitScorer(example()).score(Traits(traits, account or {}))


def test_a_cto_at_a_mid_sized_software_company_with_a_work_email_is_very_good() -> None:
    score = fit(CTO)
    # Senior decision maker 35 + mid-sized company 25 + software 20 + work email 20.
    assert score.score == 100
    assert score.segment == "very good"
    assert score.signals == [
        "Senior decision maker",
        "Mid-sized company (50-999 people)",
        "Software industry",
    ]
    assert score.inputs == {
        "mk_job_title": "CTO",
        "mk_company_size": 200,
        "mk_industry": "Software",
        "mk_country": "Brazil",
    }


def test_a_gmail_address_loses_the_points_the_model_says() -> None:
    work = fit(CTO)
    personal = fit({**CTO, "email": "ann@gmail.com"})
    # The +20 work email rule no longer matches and the -10 personal one does.
    assert work.score - personal.score == 30
    assert personal.score == 70
    assert "Work email address" not in personal.signals
    # With fewer strong signals the penalty shows up among the reasons.
    weaker = fit({"email": "ann@gmail.com", "title": "Engineer"})
    assert weaker.score == 0
    assert weaker.signals == ["Personal email address"]
    assert weaker.segment == "low"


def test_traits_come_from_inputs_nested_objects_and_the_account() -> None:
    score = fit(
        {"jobTitle": "VP Engineering", "company": {"industry": "saas"}, "email": "x@acme.io"},
        account={"employees": "1,200", "country": "DE"},
    )
    # VP 35 + large company (from the account, a numeric string) 15 + saas 20 + work
    # email 20 + territory (account country) 5.
    assert score.score == 95
    assert score.inputs["mk_company_size"] == "1,200"
    assert score.inputs["mk_industry"] == "saas"
    assert score.inputs["mk_country"] == "DE"


def rule_model(condition: str) -> FitScorer:
    return FitScorer(
        parse(
            f"""
version = "t"
[fit]
segments = {{ "very good" = 75, good = 50, medium = 25 }}
[[fit.rules]]
trait = "x"
{condition}
points = 10
signal = "matched"
[likelihood]
half_life = "1d"
segments = {{ "very high" = 75, high = 50, medium = 25 }}
events = []
""",
            "t.toml",
        )
    )


@pytest.mark.parametrize(
    ("condition", "value", "matches"),
    [
        ('equals = "Germany"', "  germany ", True),
        ('equals = "Germany"', "Germanyy", False),
        ("equals = 200", "200", True),
        ("equals = true", True, True),
        ("equals = true", 1, False),
        ('in = ["a", 3]', "A", True),
        ('in = ["a", 3]', 3.0, True),
        ('in = ["a", 3]', "b", False),
        ('contains = "ware"', "Software", True),
        ('contains = "ware"', ["hardware", "SOFTWARE"], False),
        ('contains = "software"', ["hardware", "SOFTWARE"], True),
        ('regex = "(?i)^vp\\\\b"', "VP Sales", True),
        ('regex = "(?i)^vp\\\\b"', "SVP Sales", False),
        ("min = 50\nmax = 1000", 50, True),
        ("min = 50\nmax = 1000", 1000, False),
        ("min = 50\nmax = 1000", "999.5", True),
        ("min = 50\nmax = 1000", "many", False),
        ("min = 50", True, False),
        ("exists = true", "", False),
        ("exists = true", 0, True),
        ("exists = false", None, True),
        ("personal_email = true", "Someone@GMAIL.com", True),
        ("personal_email = false", "someone@initech.com", True),
        ("personal_email = false", None, False),
        ("personal_email = false", "not an address", False),
    ],
)
def test_each_condition(condition: str, value: Any, matches: bool) -> None:
    traits = {} if value is None else {"x": value}
    assert rule_model(condition).score(Traits(traits, {})).score == (10 if matches else 0)


BROKEN = """\
version = "b"

[fit.segments]
"very good" = 75
good = 50
medium = 25

[[fit.rules]]
trait = "title"
equals = "CTO"
points = 10
signal = "ok"

[[fit.rules]]
trait = "title"
regex = "(unclosed"
points = 10
signal = "broken"

[likelihood]
half_life = "7d"
segments = { "very high" = 75, high = 50, medium = 25 }
events = []
"""


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (BROKEN, "b.toml:16: fit.rules[1].regex: not a valid regular expression"),
        (
            BROKEN.replace('regex = "(unclosed"', 'matches = "x"'),
            "b.toml:16: fit.rules[1].matches: unknown key",
        ),
        (
            BROKEN.replace('regex = "(unclosed"', 'exists = true\nequals = "x"'),
            "b.toml:14: fit.rules[1]: needs exactly one condition",
        ),
        (BROKEN.replace("good = 50", "good = 80"), "b.toml:3: fit.segments: thresholds must fall"),
        (BROKEN.replace('half_life = "7d"', 'half_life = "soon"'), "likelihood.half_life"),
        (
            BROKEN.replace('points = 10\nsignal = "ok"', 'points = 500\nsignal = "ok"'),
            "b.toml:11: fit.rules[0].points: Expected `float` <= 100",
        ),
        (BROKEN.replace("[fit.segments]", "[fit.segments"), "b.toml: not valid TOML"),
    ],
)
def test_a_broken_model_is_refused_with_its_line_and_reason(broken: str, message: str) -> None:
    with pytest.raises(ModelError) as refused:
        parse(broken, "b.toml")
    assert message in str(refused.value)


def test_a_grade_matrix_needs_every_fit_segment_and_four_letters(tmp_path: Path) -> None:
    text = example().text.replace('low = ["C", "D", "E", "E"]', 'low = ["C", "D", "F"]')
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ModelError, match=r"m\.toml:\d+: grade\.low: must be four grades"):
        load(path)


def event(**fields: Any) -> Event:
    return Event(
        type=fields.pop("type", "track"),
        message_id="m",
        source=fields.pop("source", "web"),
        received_at="2026-01-01T00:00:00Z",
        timestamp="2026-01-01T00:00:00Z",
        **fields,
    )


def test_an_event_counts_for_the_first_weight_it_matches() -> None:
    scorer = LikelihoodScorer(example(), {"web": "web", "app": "ios"})
    assert scorer.weigh(event(event="demo requested")) == (40, "Requested a demo")
    assert scorer.weigh(event(type="page", name="Pricing")) == (10, "Viewed pricing")
    assert scorer.weigh(event(type="page", name="Blog")) == (1, "Visited the website")
    assert scorer.weigh(event(event="Logged In")) is None


def test_source_kind_matches_the_kind_of_the_source_the_event_came_in_on() -> None:
    model = parse(
        example().text.replace(
            '[[likelihood.events]]\nevent = "Demo Requested"',
            '[[likelihood.events]]\nsource_kind = "ios"\npoints = 3\n'
            'signal = "Active in the iOS app"\n\n[[likelihood.events]]\n'
            'event = "Demo Requested"',
        ),
        "m.toml",
    )
    scorer = LikelihoodScorer(model, {"web": "web", "app": "ios"})
    assert scorer.weigh(event(event="Demo Requested", source="app")) == (
        3,
        "Active in the iOS app",
    )
    assert scorer.weigh(event(event="Demo Requested", source="web"))[0] == 40  # type: ignore[index]


def test_a_score_halves_every_half_life_and_new_events_raise_it() -> None:
    scorer = LikelihoodScorer(example(), {})
    half_life = scorer.half_life
    t0 = 1_780_000_000.0
    intent = Intent(t0, {})
    intent.add(40, "Requested a demo", t0, half_life)
    intent.add(10, "Viewed pricing", t0, half_life)
    assert scorer.score(scorer.now_points([intent], t0)).score == 50
    later = scorer.score(scorer.now_points([intent], t0 + half_life))
    assert later.score == 25
    assert later.segment == "medium"
    intent.add(40, "Requested a demo", t0 + half_life, half_life)
    raised = scorer.score(scorer.now_points([intent], t0 + half_life))
    assert raised.score == 65
    assert raised.signals == ["Requested a demo", "Viewed pricing"]
    # Quiet for longer than the lookback: nothing counts.
    assert scorer.score(scorer.now_points([intent], t0 + 91 * DAY)).score == 0


def test_the_order_events_arrive_in_does_not_change_the_aggregate() -> None:
    half_life = 7 * DAY
    rng = random.Random(4)
    events = [(rng.uniform(0, 30 * DAY), rng.choice([1.0, 10.0, 40.0])) for _ in range(12)]
    results = []
    for order in itertools.islice(itertools.permutations(events), 0, 2000, 97):
        intent = Intent(0.0, {})
        for at, points in order:
            intent.add(points, "s", at, half_life)
        results.append((intent.as_of, intent.signals["s"]))
    first_as_of, first_value = results[0]
    for as_of, value in results:
        assert as_of == first_as_of
        assert value == pytest.approx(first_value, rel=1e-9)


def test_an_input_may_not_shadow_a_score() -> None:
    text = example().text.replace("[inputs]\n", '[inputs]\nlead_grade = ["grade"]\n')
    with pytest.raises(ModelError, match=r"inputs\.lead_grade: mk_lead_grade is a score"):
        parse(text, "m.toml")


def test_a_deployed_model_this_version_cannot_read_falls_back_to_the_one_before(
    tmp_path: Path,
) -> None:
    from actors.scoring import deploy
    from storage.sqlite_rebuild import scratch
    from storage.sqlite_scores import SqliteScoreStore

    store = SqliteScoreStore(scratch(tmp_path / "m.db"))
    older = parse(example().text.replace('"example-1"', '"older"'), "older.toml")
    store.deploy(older.version, older.digest, older.text, "test")
    store.deploy("from-the-future", "x", 'version = "from-the-future"\n[fit]\nnew = 1\n', "test")
    assert deploy.active(store).version == "older"
