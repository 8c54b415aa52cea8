"""A run's figures as text: a line of verdict, a summary, and a table of 10-second
windows (acknowledged rate, answers, latency, each lag, the outbox, RSS, CPU)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from actors.scoring.actor import FOLD_WAIT_LIMIT
from bench.steady.observe import FOLD, MERGER, Sample
from bench.steady.run import BATCH, LAG_LIMIT, LAGS, REALTIME, RunResult
from storage.log import DEDUP_WINDOW

WINDOW = 10
"""Seconds a row of the table covers."""
MB = 2**20
DEDUP_BYTES = 9
"""What the log's dedup window holds an event for (storage/recent_messages.py)."""


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def acknowledged_rate(result: RunResult) -> float:
    record = result.record
    return sum(record.acked) / record.offered_seconds if record.offered_seconds else 0.0


def summary(result: RunResult) -> Iterator[str]:
    record, samples = result.record, result.samples
    latencies = [x for second in record.latencies for x in second]
    yield f"{result.rate:,.0f} events/s offered for {result.seconds:.0f} s: {result.verdict()}"
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(*result.load, strict=True))
    yield f"  machine load average (1, 5, 15 min) at start/end: {load}"
    early = " (stopped early: the verdict was in)" if record.stopped_early else ""
    yield (
        f"  acknowledged: {sum(record.acked):,} events, {record.offered_seconds:.1f} s of load = "
        f"{acknowledged_rate(result):,.0f} events/s{early}; answered 429: {result.refused:,}"
        f"{_reasons(result.backpressure)}; other errors: {_kinds(record.error_kinds)}"
    )
    yield (
        f"  latency, due to answered (the wait for a connection included): p50 "
        f"{percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} "
        f"ms, max {percentile(latencies, 1.0) * 1000:.0f} ms"
    )
    cpu = _cpu_shares(samples[0], samples[-1])
    late = (
        f"{record.late_sends:,} sends more than 100 ms late, the latest "
        f"{record.max_late * 1000:.0f} ms"
    )
    behind = (
        f"FELL BEHIND its schedule: {late}"
        if result.generator_behind
        else f"kept its schedule ({late})"
    )
    yield (
        f"  generator: {record.sent:,} requests of {result.settings.batch_size} events "
        f"(~{record.mean_event_bytes:.0f} B an event) over up to {result.settings.connections} "
        f"connections; its CPU {record.cpu_seconds / max(record.seconds, 1e-9):.0%} of a core; "
        f"{behind}"
    )
    if record.mix is not None:
        mix = record.mix
        shares = ", ".join(
            f"{count / mix.events:.0%} {kind}" for kind, count in sorted(mix.by_type.items())
        )
        yield (f"  traffic: {shares}; {mix.new_people} first-time visitors a batch on average")
    yield (
        f"  CPU over the run (100% = one core): daemon {cpu['daemon']:.0%}, merger worker "
        f"{cpu['worker']:.0%}, generator {cpu['generator']:.0%}, everything else {cpu['other']:.0%}"
        " (other work on the machine, and this bench's sampler and sink); the log writer "
        f"was committing {cpu['committing']:.0%} of the time (the scorer's fold waits while "
        f"that is over 50%, for {FOLD_WAIT_LIMIT:g} s at most)"
    )
    for name in LAGS:
        worst = max((lags[name] for lags in result.lags), default=0.0)
        over = result.exceeded.get(name)
        when = f", over {LAG_LIMIT:.0f} s first at {over:.0f} s" if over is not None else ""
        yield f"  lag, {name}: max {_seconds(worst)}{when}"
    yield (
        f"  lag in events, max: merger {max(s.lag(MERGER) for s in samples):,}, scorer fold "
        f"{max(s.lag(FOLD) for s in samples):,}, rescoring to-do "
        f"{max(s.todo for s in samples):,} rows"
    )
    for name in (REALTIME, BATCH):
        last = samples[-1].destinations.get(name)
        if last is not None:
            peak = max(s.destinations[name].queued + s.destinations[name].held for s in samples)
            yield (
                f"  destination {name}: {last.sent:,} sent, {last.queued:,} queued and "
                f"{last.held:,} held at the end (most at once: {peak:,})"
            )
    yield "  " + _memory(result)


def _memory(result: RunResult) -> str:
    samples = result.samples
    after_minute = next((s for s in samples if s.at >= 60), None)
    last = samples[-1]
    text = (
        f"RSS: daemon {last.daemon_rss / MB:.0f} MB at the end, "
        f"peak {result.peak_rss / MB:.0f} MB; "
        f"merger worker {last.worker_rss / MB:.0f} MB, peak {result.worker_peak_rss / MB:.0f} MB"
    )
    if after_minute is not None and after_minute is not last:
        growth = last.daemon_rss / after_minute.daemon_rss - 1
        window = DEDUP_BYTES * (last.head - after_minute.head)
        text += (
            f"; daemon after the first minute {after_minute.daemon_rss / MB:.0f} MB, "
            f"{growth:+.0%} by the end, of which up to {window / MB:.0f} MB is the dedup "
            f"window by design ({DEDUP_BYTES} B an event logged since, for its "
            f"{DEDUP_WINDOW / 60:g} minutes)"
        )
    return text


def table(result: RunResult) -> Iterator[str]:
    record, samples = result.record, result.samples
    yield (
        f"  {'s':>5}{'acked/s':>9}{'429':>6}{'p99 ms':>8}{'merger':>10}{'fold':>10}{'to-do':>8}"
        f"{'rt q':>7}{'rt lag':>7}{'batch q+h':>10}{'RSS MB':>8}{'wkr MB':>7}"
        f"{'daemon':>7}{'wkr':>5}{'gen':>5}{'other':>6}{'commit':>7}"
    )
    previous = samples[0]
    for start in range(0, len(record.acked), WINDOW):
        window = [s for s in samples if start < s.at <= start + WINDOW]
        if not window:
            continue
        seconds = range(start, min(start + WINDOW, len(record.acked)))
        acked = sum(record.acked[s] for s in seconds) / max(len(seconds), 1)
        refused = sum(record.refused[s] for s in seconds)
        latencies = [x for s in seconds for x in record.latencies[s]]
        last = window[-1]
        rt = last.destinations.get(REALTIME)
        batch = last.destinations.get(BATCH)
        cpu = _cpu_shares(previous, last)
        previous = last
        yield (
            f"  {start:>5}{acked:>9,.0f}{refused:>6}{percentile(latencies, 0.99) * 1000:>8.0f}"
            f"{max(s.lag(MERGER) for s in window):>10,}{max(s.lag(FOLD) for s in window):>10,}"
            f"{max(s.todo for s in window):>8,}"
            f"{rt.queued if rt else 0:>7,}{(rt.lag or 0.0) if rt else 0.0:>7.1f}"
            f"{(batch.queued + batch.held) if batch else 0:>10,}"
            f"{last.daemon_rss / MB:>8.0f}{last.worker_rss / MB:>7.0f}"
            f"{cpu['daemon']:>7.0%}{cpu['worker']:>5.0%}{cpu['generator']:>5.0%}{cpu['other']:>6.0%}"
            f"{cpu['committing']:>7.0%}"
        )
    yield (
        "  s: start of the window; acked/s: events acknowledged a second; 429: requests "
        "refused; p99: latency of the requests due in it; merger, fold: most events behind "
        "the log's head; to-do: most rows waiting to be rescored; rt q, rt lag: the realtime "
        "destination's queued rows and its last lag (s, score stored to acknowledged); batch "
        "q+h: the batch destination's rows queued and held; RSS, wkr: the daemon's and the "
        "merger worker's RSS; daemon, wkr, gen, other: CPU (100% = one core); commit: share "
        "of the time the log writer spent committing"
    )


def _cpu_shares(first: Sample, last: Sample) -> dict[str, float]:
    span = last.at - first.at
    if span <= 0:
        return dict.fromkeys(("daemon", "worker", "generator", "other", "committing"), 0.0)
    shares = {name: (last.cpu[name] - first.cpu[name]) / span for name in last.cpu}
    shares["other"] = shares.pop("machine") - shares["daemon"] - shares["worker"]
    shares["other"] -= shares["generator"]
    shares["committing"] = (last.committing - first.committing) / span
    return shares


def _seconds(value: float) -> str:
    return "unbounded (nothing drained)" if math.isinf(value) else f"{value:.2f} s"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v:,}" for k, v in kinds.items()) or "none"


def _reasons(backpressure: dict[str, float]) -> str:
    shown = {k: v for k, v in backpressure.items() if v}
    return " (" + ", ".join(f"{k}: {v:,.0f}" for k, v in shown.items()) + ")" if shown else ""
