"""The supervisor's bounded, downsampled history of every metric a run logs.

Each metric keeps at most ``buckets_per_metric`` buckets, evenly spaced in step (bucket ``k``
covers steps ``[k * width, (k + 1) * width)``); when one more would not fit, ``width`` doubles and
neighbours merge, so memory is bounded however long the run. Buckets keep min, max and last, not
a mean, so a spike is never averaged away; the last ``recent_points`` raw points are kept exactly.

NaN and ``None`` both mean "no number": they are counted per bucket (``nans``) and never enter
min or max; ±inf are values like any other. A step lower than the last one seen means the run
restarted from an earlier checkpoint: everything logged at that step or later is forgotten, the
raw points exactly (fewer than ``recent_points`` may be left until new ones arrive) and the
buckets whole, except the one straddling the step, which is kept (its min, max and count may
still include up to ``width - 1`` steps of the abandoned run).

``MetricHistory.snapshot()`` is the wire format a chart client receives when it attaches, plain
data that ``json.dumps(..., allow_nan=False)`` accepts::

    {name: {"width": int,                                     # steps per bucket, a power of two
            "buckets": [[first_step, last_step, first_time, last_time,
                         min, max, last, count, nans], ...],  # oldest first
            "recent": [[step, time, value], ...]}}            # oldest first, raw points

Steps and counts are ints; ``count`` includes the ``nans``. Floats go through `encode_float`,
the protocol's spelling of non-finite metrics (``"nan"``, ``"inf"``, ``"-inf"``; ``float()`` or
`decode_float` reads them back); ``min`` and ``max`` are ``None`` in a bucket of only NaNs.
A client rebuilds a history from it with `MetricHistory.load` and draws charts from `columns`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from array import array
from typing import Any

from engine._errors import ConfigError

__all__ = ["MetricHistory", "encode_float", "decode_float"]

_NAN = float("nan")
_INF = float("inf")
FIRST_STEP, LAST_STEP, FIRST_TIME, LAST_TIME, MIN, MAX, LAST, COUNT, NANS = range(9)
_STRIDE = 9
_FOLD = 256
_STEP_LIMIT = 2**63


def encode_float(x: float) -> float | str:
    """``x`` as strict JSON the way the protocol sends metrics: ``"nan"``, ``"inf"``, ``"-inf"``."""
    return x if math.isfinite(x) else "nan" if x != x else "inf" if x > 0 else "-inf"


def decode_float(x: float | str | None) -> float:
    """The float `encode_float` encoded; ``None`` (no number) reads as NaN."""
    return _NAN if x is None else float(x)


class _Series:
    """One metric: closed buckets packed in a flat float array, the open bucket as a list, and
    the recent raw points in arrays trimmed by half when full (amortised O(1) per point).

    ``add`` creates no objects, which keeps it cheap (and cheap under tracemalloc): it counts
    points in ``pending``, an int below `_FOLD` that CPython never allocates, and every `_FOLD`
    points moves them into ``n`` and trims the raw points. The open bucket's count is stored
    minus the points counted when it opened; `_settled` adds them back.
    """

    __slots__ = ("capacity", "limit", "width", "end", "step", "n", "pending", "open", "closed",
                 "steps", "times", "values")

    def __init__(self, capacity: int, limit: int) -> None:
        self.capacity, self.limit = capacity, limit
        self.width, self.end, self.step, self.n, self.pending = 1, -1, -1, 0, 0
        self.open: list[float] = []
        self.closed = array("d")
        self.steps, self.times, self.values = array("q"), array("d"), array("d")

    def add(self, step: int, time: float, value: float) -> None:
        if step < self.step:
            self._rewind(step)
        if step >= self.end:
            self._advance(step, time)
        b = self.open
        b[LAST_STEP], b[LAST_TIME], b[LAST] = step, time, value
        if value < b[MIN]:
            b[MIN] = value
        if value > b[MAX]:
            b[MAX] = value
        if value != value:
            b[NANS] += 1.0
        self.step = step
        self.steps.append(step)
        self.times.append(time)
        self.values.append(value)
        self.pending += 1
        if self.pending == _FOLD:
            self.n, self.pending = self.n + _FOLD, 0
            if len(self.steps) > 2 * self.limit:
                cut = len(self.steps) - self.limit
                del self.steps[:cut], self.times[:cut], self.values[:cut]

    def _settled(self) -> list[float]:
        """The open bucket with its true count (none before the first point)."""
        b = self.open
        return b and b[:COUNT] + [b[COUNT] + self.n + self.pending, b[NANS]]

    def _advance(self, step: int, time: float) -> None:
        """Close the open bucket and open the one ``step`` falls in, merging first if full."""
        self.closed.extend(self._settled())
        while len(self.closed) > (self.capacity - 1) * _STRIDE:
            self._merge()
        key = step // self.width
        self.end = (key + 1) * self.width
        if self.closed and self.closed[-_STRIDE + FIRST_STEP] // self.width == key:
            self.open = self.closed[-_STRIDE:].tolist()
            del self.closed[-_STRIDE:]
        else:
            self.open = [step, step, time, time, _INF, -_INF, _NAN, 0.0, 0.0]
        self.open[COUNT] -= self.n + self.pending

    def _merge(self) -> None:
        """Double the width; buckets now sharing a key merge (min/max across, later last)."""
        self.width *= 2
        rows = zip(*(self.closed[field::_STRIDE] for field in range(_STRIDE)))
        merged = [next(rows)]
        for row in rows:
            prev = merged[-1]
            if prev[FIRST_STEP] // self.width != row[FIRST_STEP] // self.width:
                merged.append(row)
                continue
            merged[-1] = (prev[FIRST_STEP], row[LAST_STEP], prev[FIRST_TIME], row[LAST_TIME],
                          min(prev[MIN], row[MIN]), max(prev[MAX], row[MAX]), row[LAST],
                          prev[COUNT] + row[COUNT], prev[NANS] + row[NANS])
        self.closed = array("d", itertools.chain.from_iterable(merged))

    def _rewind(self, step: int) -> None:
        """Forget what was logged at ``step`` or later: the run restarted from a checkpoint."""
        self.closed.extend(self._settled())
        del self.closed[bisect.bisect_left(self.closed[FIRST_STEP::_STRIDE], step) * _STRIDE:]
        self.open, self.end = [], -1
        cut = bisect.bisect_left(self.steps, step)
        del self.steps[cut:], self.times[cut:], self.values[cut:]

    def load(self, width: int, buckets: list[list[Any]], recent: list[list[Any]]) -> None:
        """Take the state a snapshot entry describes; counting restarts at the open bucket's count."""
        self.width = width
        self.closed = array("d", itertools.chain.from_iterable(map(_decode_bucket, buckets)))
        while len(self.closed) > self.capacity * _STRIDE:
            self._merge()
        self.open = self.closed[-_STRIDE:].tolist()
        del self.closed[-_STRIDE:]
        self.n = self.pending = 0
        self.step = int(self.open[LAST_STEP])
        self.end = (int(self.open[FIRST_STEP]) // self.width + 1) * self.width
        points = recent[max(0, len(recent) - self.limit):] if self.limit else []
        self.steps = array("q", (int(p[0]) for p in points))
        self.times = array("d", (decode_float(p[1]) for p in points))
        self.values = array("d", (decode_float(p[2]) for p in points))

    def step_range(self) -> tuple[int, int]:
        first = self.closed[FIRST_STEP] if self.closed else self.open[FIRST_STEP]
        return int(first), int(self.open[LAST_STEP])

    def columns(self, first: int, last: int, n: int) -> list[tuple[float, float, float] | None]:
        """(min, max, last) per column: raw points where they reach, buckets before them."""
        lo, hi, end = [_INF] * n, [-_INF] * n, [_NAN] * n
        span = last - first + 1
        start = max(0, len(self.steps) - self.limit)
        raw_from = self.steps[start] if start < len(self.steps) else _STEP_LIMIT
        rows = self.closed.tolist() + self._settled()
        for i in range(0, len(rows), _STRIDE):
            row = rows[i:i + _STRIDE]
            a = max(int(row[FIRST_STEP]), first)
            b = min(int(row[LAST_STEP]), raw_from - 1, last)
            if a > b or row[COUNT] <= row[NANS]:
                continue
            for c in range((a - first) * n // span, (b - first) * n // span + 1):
                lo[c], hi[c] = min(lo[c], row[MIN]), max(hi[c], row[MAX])
                if row[LAST] == row[LAST]:
                    end[c] = row[LAST]
        steps, values = self.steps, self.values
        for i in range(bisect.bisect_left(steps, max(first, raw_from), start),
                       bisect.bisect_right(steps, last, start)):
            v = values[i]
            if v == v:
                c = (steps[i] - first) * n // span
                lo[c], hi[c], end[c] = min(lo[c], v), max(hi[c], v), v
        return [(lo[c], hi[c], end[c] if end[c] == end[c] else hi[c]) if lo[c] <= hi[c] else None
                for c in range(n)]

    def buckets(self) -> list[list[Any]]:
        rows = self.closed.tolist() + self._settled()
        return [_encode_bucket(rows[i:i + _STRIDE]) for i in range(0, len(rows), _STRIDE)]

    def recent(self) -> list[list[Any]]:
        start = max(0, len(self.steps) - self.limit)
        return [[s, encode_float(t), encode_float(v)] for s, t, v in
                zip(self.steps[start:], self.times[start:], self.values[start:])]

    def summary(self) -> dict[str, Any]:
        b = self._settled()
        count = int(sum(self.closed[COUNT::_STRIDE]) + b[COUNT])
        nans = int(sum(self.closed[NANS::_STRIDE]) + b[NANS])
        numbers = count > nans
        lo = min(self.closed[MIN::_STRIDE], default=_INF)
        hi = max(self.closed[MAX::_STRIDE], default=-_INF)
        return {"step": int(b[LAST_STEP]), "last": encode_float(b[LAST]),
                "min": encode_float(min(lo, b[MIN])) if numbers else None,
                "max": encode_float(max(hi, b[MAX])) if numbers else None,
                "count": count, "nans": nans}


def _encode_bucket(row: list[float]) -> list[Any]:
    numbers = row[COUNT] > row[NANS]
    return [int(row[FIRST_STEP]), int(row[LAST_STEP]),
            encode_float(row[FIRST_TIME]), encode_float(row[LAST_TIME]),
            encode_float(row[MIN]) if numbers else None, encode_float(row[MAX]) if numbers else None,
            encode_float(row[LAST]), int(row[COUNT]), int(row[NANS])]


def _decode_bucket(row: list[Any]) -> list[float]:
    """A snapshot bucket back in the internal layout (a bucket of only NaNs has min inf, max -inf)."""
    return [row[FIRST_STEP], row[LAST_STEP], decode_float(row[FIRST_TIME]),
            decode_float(row[LAST_TIME]), _INF if row[MIN] is None else decode_float(row[MIN]),
            -_INF if row[MAX] is None else decode_float(row[MAX]), decode_float(row[LAST]),
            row[COUNT], row[NANS]]


class MetricHistory:
    """Every metric's bounded history: at most ``buckets_per_metric`` buckets and the last
    ``recent_points`` raw points each, for at most ``max_metrics`` names. Points of further names,
    or with a step outside ``[0, 2**63)``, are dropped and counted in ``dropped_points``;
    ``dropped_metrics`` counts the names refused (a lower bound past ``max_metrics`` of them, so
    that refusing names stays bounded too).
    """

    def __init__(self, buckets_per_metric: int = 512, recent_points: int = 512,
                 max_metrics: int = 500) -> None:
        if buckets_per_metric < 2 or recent_points < 0 or max_metrics < 0:
            raise ConfigError(f"buckets_per_metric={buckets_per_metric} must be at least 2, "
                              f"recent_points={recent_points} and max_metrics={max_metrics} "
                              "at least 0")
        self.buckets_per_metric, self.recent_points = buckets_per_metric, recent_points
        self.max_metrics, self.dropped_points = max_metrics, 0
        self._refused: set[str] = set()
        self._series: dict[str, _Series] = {}

    @property
    def dropped_metrics(self) -> int:
        """How many distinct metric names were refused for being over ``max_metrics``."""
        return len(self._refused)

    def add(self, name: str, step: int, time: float, value: float | None) -> None:
        """Record one point: ``step`` a non-negative int, ``value`` a float (NaN, ±inf) or None.
        Types are trusted (the protocol checks them); a name is listed once a point is recorded."""
        value = _NAN if value is None else value
        series = self._series.get(name)
        if not 0 <= step < _STEP_LIMIT:
            self.dropped_points += 1
        elif series is not None:
            series.add(step, time, value)
        elif len(self._series) < self.max_metrics:
            series = _Series(self.buckets_per_metric, self.recent_points)
            series.add(step, time, value)
            self._series[name] = series
        else:
            self.dropped_points += 1
            if len(self._refused) < self.max_metrics:
                self._refused.add(name)

    def names(self) -> list[str]:
        """The metric names held, in the order they were first logged."""
        return list(self._series)

    def latest(self, name: str) -> tuple[int, float, float] | None:
        """The last point of ``name`` as ``(step, time, value)`` with raw floats, or None if unknown."""
        series = self._series.get(name)
        if series is None:
            return None
        return int(series.open[LAST_STEP]), series.open[LAST_TIME], series.open[LAST]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric ``{"step", "last", "min", "max", "count", "nans"}`` over the whole history,
        floats encoded as in the snapshot; for a metrics table."""
        return {name: series.summary() for name, series in self._series.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every metric as ``{"width", "buckets", "recent"}`` (format in the module docstring)."""
        return {name: {"width": s.width, "buckets": s.buckets(), "recent": s.recent()}
                for name, s in self._series.items()}

    def load(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Replace every metric with what ``snapshot()`` sent (the wire format), so that points added
        afterwards give the sender's result: exactly, unless a later rewind reaches before the recent
        points the snapshot carried. Buckets beyond this history's capacity are merged to fit."""
        self._series.clear()
        for name, data in snapshot.items():
            if not data["buckets"]:
                continue
            if len(self._series) >= self.max_metrics:
                if len(self._refused) < self.max_metrics:
                    self._refused.add(name)
                continue
            series = _Series(self.buckets_per_metric, self.recent_points)
            series.load(int(data["width"]), data["buckets"], data["recent"])
            self._series[name] = series

    def step_range(self, name: str) -> tuple[int, int] | None:
        """The first and last step ``name`` was logged at, or None if unknown."""
        series = self._series.get(name)
        return None if series is None else series.step_range()

    def columns(self, name: str, first_step: int, last_step: int,
                n: int) -> list[tuple[float, float, float] | None]:
        """``(min, max, last)`` of ``name`` in each of ``n`` equal step ranges covering
        ``[first_step, last_step]`` (column of step s: ``(s - first_step) * n // span``), None where
        no number was logged; for a chart. Exact where the recent raw points reach; before them a
        bucket counts in every column it overlaps. NaN never counts; a column whose last number is
        unknown (its bucket ended in NaN) has its max as ``last``. O(buckets + recent + n)."""
        series = self._series.get(name)
        if n <= 0:
            return []
        if series is None or last_step < first_step:
            return [None] * n
        return series.columns(first_step, last_step, n)
