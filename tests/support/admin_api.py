"""What a running daemon's admin API tells an operator: scores, batch runs, the
quarantine and every sample Prometheus would scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon_process import DaemonProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Scraped samples by name and labels."""


def run_batch(daemon: DaemonProcess) -> dict[str, Any]:
    """A scoring batch run now, as `leadsync scoring run` asks for it; its figures."""
    status, result = daemon.admin("/v1/scoring/run", "POST", timeout=60)
    assert status == 200, result
    return dict(result)


def scores(daemon: DaemonProcess, user: str) -> dict[str, Any] | None:
    """The scores of the profile with this userId, or None while it has none."""
    status, body = daemon.admin(f"/v1/profiles/user_id/{user}")
    if status != 200 or body.get("scores") is None:
        return None
    found: dict[str, Any] = body["scores"]
    return found


def quarantine(daemon: DaemonProcess) -> dict[str, Any]:
    """/quarantine: how many messages were refused and the newest hundred."""
    status, answer = daemon.admin("/quarantine?limit=100")
    assert status == 200
    assert isinstance(answer, dict)
    return answer


def metrics(daemon: DaemonProcess) -> Samples:
    """Every sample Prometheus would scrape, by name and labels."""
    status, text = daemon.admin("/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(scraped: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not created yet."""
    return scraped.get((name, frozenset(labels.items())), 0.0)
