"""The fingerprints of recently logged messages, kept for a span of time.

The log recognises a client's retry by (source, messageId) among the events it logged
in the last `window` seconds (storage/sqlite_log.py). At the daemon's sustained
maximum that is millions of events (see DEDUP_WINDOW in storage/log.py), which Python sets
would hold at ~70 bytes each. Here each is a 64-bit fingerprint in a
sorted numpy array, 9 bytes with its slice tag, looked up for a whole group commit at
once with `searchsorted`.

Time is cut into slices of window / SLICES seconds. The newest fingerprints go to a
Python set (`live`), sealed every LIVE_MAX into the current slice's sorted array. When
a slice ends, its array is merged into PARTITIONS sorted arrays, each fingerprint
tagged with its slice, and the fingerprints of slices that have left the window are
dropped in the same pass. So a fingerprint is remembered for at least `window` after
it was added and less than one slice longer (a lookup checks the tag, so nothing is
found later than that even before its partition is merged again), and a lookup
searches one small set and PARTITIONS + 2 arrays whatever the window.

The partitions (by the fingerprint's top bits) bound what a merge copies at once to a
PARTITIONS-th of the whole, and take turns: one partition a call to `advance` (a group
commit), so a slice's end costs no commit more than a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

Fingerprints = npt.NDArray[np.int64]

SLICES = 10
"""Slices in a window: more forget closer to the window's end and merge more often."""
PARTITIONS = 16
"""Sorted arrays the sealed fingerprints are split into, by their top four bits."""
LIVE_MAX = 65_536
"""Fingerprints held in the set before they are sealed into the current slice's array."""
_SHIFT = 64 - PARTITIONS.bit_length() + 1
_EDGES = np.array([(p << _SHIFT) - (1 << 63) for p in range(1, PARTITIONS)], dtype=np.int64)
"""The smallest fingerprint of each partition but the first: fingerprints are signed."""
_EMPTY: Fingerprints = np.empty(0, dtype=np.int64)


class RecentMessages:
    """Fingerprints (signed 64-bit ints, Python's `hash`) added at a time, found for at
    least `window` seconds after it. Times come from the caller, never decreasing (a
    time before the current slice counts as in it)."""

    def __init__(self, window: float) -> None:
        if not window > 0:
            raise ValueError(f"the dedup window must be positive, got {window!r}")
        self.window = window
        self.span = window / SLICES
        self._slice: int | None = None
        """The number of the current slice (time // span)."""
        self._live: set[int] = set()
        self._current: Fingerprints = _EMPTY
        """The current slice's sealed fingerprints, sorted."""
        self._parts: list[Fingerprints] = [_EMPTY] * PARTITIONS
        self._tags: list[npt.NDArray[np.uint8]] = [np.empty(0, np.uint8)] * PARTITIONS
        """Each fingerprint's slice number, modulo 256 (at most 2 * SLICES + 2 are held)."""
        self._ended: Fingerprints = _EMPTY
        """The last slice that ended, sorted, until every partition has taken its part."""
        self._ended_tag = np.uint8(0)
        self._todo: list[int] = []
        """Partitions that have not yet taken their part of `_ended`."""

    def __len__(self) -> int:
        """Fingerprints held."""
        bounds = _bounds(self._ended)
        held = len(self._live) + self._current.size + sum(p.size for p in self._parts)
        return held + sum(bounds[p + 1] - bounds[p] for p in self._todo)

    @property
    def nbytes(self) -> int:
        """Memory held, about: the arrays, and the set at what CPython's sets cost."""
        arrays = self._current.nbytes + self._ended.nbytes
        arrays += sum(p.nbytes + t.nbytes for p, t in zip(self._parts, self._tags, strict=True))
        return arrays + len(self._live) * 70

    def advance(self, now: float) -> None:
        """Move to `now`: end the current slice if it is over, forgetting what left
        the window."""
        number = int(now // self.span)
        if self._slice is None:
            self._slice = number
        elif number > self._slice:
            self._seal()
            self._end(self._slice, number)
            self._slice = number
        if self._todo:
            self._merge(self._todo.pop())

    def seen(self, fingerprints: Sequence[int]) -> list[bool]:
        """Which of `fingerprints` were added within the window."""
        if not fingerprints:
            return []
        wanted = np.array(fingerprints, dtype=np.int64)
        order = np.argsort(wanted)
        ordered = wanted[order]
        hit = np.zeros(ordered.size, dtype=np.bool_)
        _probe(self._current, ordered, hit)
        _probe(self._ended, ordered, hit)
        bounds = _bounds(ordered)
        now = np.uint8((self._slice or 0) % 256)
        for part, tags, low, high in zip(self._parts, self._tags, bounds, bounds[1:], strict=False):
            if low < high and part.size:
                wanted = ordered[low:high]
                at = np.searchsorted(part, wanted)
                np.minimum(at, part.size - 1, out=at)
                hit[low:high] |= (part[at] == wanted) & (now - tags[at] <= SLICES)
        found = np.empty_like(hit)
        found[order] = hit
        live = self._live
        return [h or f in live for h, f in zip(found.tolist(), fingerprints, strict=True)]

    def add(self, fingerprints: Iterable[int]) -> None:
        """Remember `fingerprints` as added in the current slice."""
        live = self._live
        live.update(fingerprints)
        if len(live) >= LIVE_MAX:
            self._seal()

    def add_sorted(self, fingerprints: Fingerprints) -> None:
        """`add` for a sorted array (the window read back from the log at start)."""
        self._current = _merged(self._current, fingerprints)

    def _seal(self) -> None:
        if self._live:
            sealed = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
            sealed.sort()
            self._current = _merged(self._current, sealed)
            self._live = set()

    def _end(self, ended: int, now: int) -> None:
        """Slice `ended` is over and `now` begins: queue its merge into the partitions.
        Slice k holds fingerprints added up to (k + 1) * span, so it is in the window
        while (k + 1) * span + window > now * span, that is while now - k <= SLICES."""
        while self._todo:  # the merge of the slice before, if calls were too few
            self._merge(self._todo.pop())
        self._ended, self._current = self._current, _EMPTY
        self._ended_tag = np.uint8(ended % 256)
        if now - ended > SLICES:  # a long pause: everything held is older than that
            self._ended = _EMPTY
            self._parts = [_EMPTY] * PARTITIONS
            self._tags = [np.empty(0, np.uint8)] * PARTITIONS
        else:
            self._todo = list(range(PARTITIONS))

    def _merge(self, p: int) -> None:
        """Partition p drops what left the window and takes its part of `_ended`."""
        assert self._slice is not None
        part, tags = self._parts[p], self._tags[p]
        self._parts[p], self._tags[p] = _EMPTY, np.empty(0, np.uint8)  # no third copy
        keep = np.uint8(self._slice % 256) - tags <= SLICES  # wraps modulo 256, as tags do
        if not keep.all():
            part, tags = part[keep], tags[keep]
        bounds = _bounds(self._ended)
        new = self._ended[bounds[p] : bounds[p + 1]]
        if new.size:
            at = np.searchsorted(part, new)
            part, tags = np.insert(part, at, new), np.insert(tags, at, self._ended_tag)
        self._parts[p], self._tags[p] = part, tags
        if not self._todo:
            self._ended = _EMPTY


def _bounds(sorted_: Fingerprints) -> list[int]:
    """Where each partition's fingerprints start in `sorted_`, and its end."""
    return [0, *np.searchsorted(sorted_, _EDGES).tolist(), sorted_.size]


def _probe(sorted_: Fingerprints, wanted: Fingerprints, hit: npt.NDArray[np.bool_]) -> None:
    """Set `hit` where `wanted` (sorted) is in `sorted_`."""
    if not sorted_.size:
        return
    at = np.searchsorted(sorted_, wanted)
    np.minimum(at, sorted_.size - 1, out=at)
    hit |= sorted_[at] == wanted


def _merged(a: Fingerprints, b: Fingerprints) -> Fingerprints:
    if not a.size:
        return b
    if not b.size:
        return a
    return np.insert(a, np.searchsorted(a, b), b)
