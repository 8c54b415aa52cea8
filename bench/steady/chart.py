"""A run's lags, acknowledged rate, outbox and RSS over time, as a PNG (matplotlib's
Figure alone, no pyplot: no global state, no display)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from bench.steady.observe import FOLD, MERGER
from bench.steady.run import BATCH, LAG_LIMIT, LAGS, REALTIME, RunResult

MB = 2**20


def draw(result: RunResult, path: Path) -> Path:
    samples, record = result.samples, result.record
    at = [s.at for s in samples]
    figure = Figure(figsize=(10, 12), layout="constrained")
    lags, events, outbox, memory = figure.subplots(4, 1, sharex=True)
    figure.suptitle(
        f"leadsync sustained: {result.rate:,.0f} events/s offered for {result.seconds:.0f} s "
        f"- {result.verdict()}",
        fontsize=10,
    )
    for name in LAGS:
        lags.plot(at, [min(x[name], 4 * LAG_LIMIT) for x in result.lags], label=name)
    lags.axhline(LAG_LIMIT, color="red", linestyle="--", linewidth=0.8, label="limit")
    lags.set_ylabel("lag, seconds of events")
    lags.set_title("lags as judged (capped at 4x the limit)", fontsize=9)
    lags.legend(fontsize=8, loc="upper left")

    seconds = range(len(record.acked))
    events.plot(seconds, record.acked, label="acknowledged events/s", linewidth=0.8)
    events.axhline(result.rate, color="grey", linestyle=":", label="offered")
    for name, consumer in (("merger", MERGER), ("scorer fold", FOLD)):
        events.plot(at, [s.lag(consumer) for s in samples], label=f"{name} lag, events")
    events.set_ylabel("events")
    events.legend(fontsize=8, loc="upper left")

    for name in (REALTIME, BATCH):
        if name in samples[-1].destinations:
            outbox.plot(
                at,
                [s.destinations[name].queued + s.destinations[name].held for s in samples],
                label=f"{name}: queued + held rows",
            )
    outbox.plot(at, [s.todo or 0 for s in samples], label="rescoring to-do rows")
    outbox.set_ylabel("rows")
    outbox.legend(fontsize=8, loc="upper left")

    memory.plot(at, [s.daemon_rss / MB for s in samples], label="daemon")
    memory.plot(at, [s.worker_rss / MB for s in samples], label="merger worker")
    memory.set_ylabel("RSS, MB")
    memory.set_xlabel("seconds since the load began")
    memory.legend(fontsize=8, loc="upper left")
    memory.set_ylim(bottom=0)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path
