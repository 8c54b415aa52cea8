"""bench/sustained.py's machinery run for a few seconds at a low rate, so that it
cannot rot between the times someone measures with it: the real daemon with both
destinations, the generator in its process, the samples, the report and the chart.
Only behaviour is asserted (samples taken, every request answered 200, a PNG
written), never a timing or a lag: the machine running the suite may be busy."""

from __future__ import annotations

from pathlib import Path

from bench.realtime import Receiver
from bench.steady import report
from bench.steady.run import BATCH, REALTIME, Settings, run_once

RATE, SECONDS = 1_000.0, 4.0


def test_a_short_run_at_a_low_rate_samples_reports_and_charts(tmp_path: Path) -> None:
    sink = Receiver()
    try:
        settings = Settings(people=2_000, templates=16, connections=8)
        result = run_once(settings, RATE, SECONDS, sink.url + "/nothing")
    finally:
        sink.close()

    assert result.exit_code == 0
    assert len(result.samples) >= SECONDS
    assert result.refused == 0
    assert result.errors == 0
    assert sum(result.record.acked) == RATE * SECONDS
    last = result.samples[-1]
    assert last.head == RATE * SECONDS
    assert {REALTIME, BATCH} <= last.destinations.keys()
    assert last.daemon_rss > 0
    assert last.worker_rss > 0

    lines = [*report.summary(result), *report.table(result)]
    assert any("acknowledged: 4,000 events" in line for line in lines)
    # Imported here, not at the top: matplotlib takes 0.6 s to import, which every pytest
    # worker would pay at collection for the one test that draws.
    from bench.steady import chart

    png = chart.draw(result, tmp_path / "sustained.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
