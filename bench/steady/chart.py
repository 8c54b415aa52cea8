"""A run's lags, acknowledged rate, outbox and RSS over time, as a PNG (matplotlib's
Figure alone, no pyplot: no global state, no display)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.figure import Figure

from bench.steady.observe import FOLD, MERGER
from bench.steady.run import BATCH, LAG_LIMIT, LAGS, REALTIME, RunResult

MB = 2**20
CAP = 4 * LAG_LIMIT
"""Lags in seconds are drawn up to this: past it the events panel says how far."""


def draw(result: RunResult, path: Path) -> Path:
    samples, record = result.samples, result.record
    at = [s.at for s in samples]
    figure = Figure(figsize=(10, 14), layout="constrained")
    lags, rate, events, rows, memory = figure.subplots(5, 1, sharex=True)
    title = (
        f"leadsync sustained: {result.rate:,.0f} events/s offered for {result.seconds:.0f} s"
        f" - {result.verdict()}"
    )
    figure.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)

    for name in LAGS:
        lags.plot(at, [min(x[name], CAP) for x in result.lags], label=name)
    lags.axhline(LAG_LIMIT, color="red", linestyle="--", linewidth=0.8, label="limit")
    lags.set_ylabel("lag, seconds")
    lags.set_title(
        f"lags as judged: seconds of events, or waited (drawn up to {CAP:.0f} s)", fontsize=9
    )
    lags.legend(fontsize=8, loc="upper left")

    seconds = [s + 0.5 for s in range(len(record.acked))]
    rate.plot(seconds, record.acked, label="acknowledged events/s", linewidth=0.9)
    rate.plot(
        seconds,
        [n * result.settings.batch_size for n in record.refused],
        label="events/s answered 429",
        linewidth=0.9,
    )
    rate.axhline(result.rate, color="grey", linestyle=":", label="offered")
    rate.set_ylabel("events/s")
    rate.set_ylim(bottom=0)
    rate.legend(fontsize=8, loc="lower left")

    for name, consumer in (("merger", MERGER), ("scorer fold", FOLD)):
        events.plot(at, [s.lag(consumer) for s in samples], label=f"{name}")
    events.set_ylabel("events behind the head")
    events.legend(fontsize=8, loc="upper left")

    for name in (REALTIME, BATCH):
        if name in samples[-1].destinations:
            rows.plot(
                at,
                [s.destinations[name].queued + s.destinations[name].held for s in samples],
                label=f"{name}: queued + held",
            )
    rows.plot(at, [s.todo for s in samples], label="rescoring to-do")
    rows.set_ylabel("rows (log above 10)")
    rows.set_yscale("symlog", linthresh=10)
    rows.legend(fontsize=8, loc="upper left")

    memory.plot(at, [s.daemon_rss / MB for s in samples], label="daemon")
    memory.plot(at, [s.worker_rss / MB for s in samples], label="merger worker")
    memory.set_ylabel("RSS, MB")
    memory.set_xlabel("seconds since the load began")
    memory.legend(fontsize=8, loc="upper left")
    memory.set_ylim(bottom=0)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path
