"""The supervisor's metric history: bounded, downsampled by min/max/last buckets, exact recent points."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import pytest

from engine import ConfigError
from engine.history import MetricHistory, decode_float, encode_float

ROOT = Path(__file__).resolve().parent.parent


class Bucket(NamedTuple):
    first_step: int
    last_step: int
    first_time: float
    last_time: float
    min: float | None
    max: float | None
    last: float | None
    count: int
    nans: int


def buckets(history: MetricHistory, name: str) -> list[Bucket]:
    return [Bucket(*row) for row in history.snapshot()[name]["buckets"]]


def test_a_single_spike_among_a_million_flat_points_shows_as_a_bucket_max():
    history = MetricHistory()
    for step in range(1_000_000):
        history.add("loss", step, float(step), 1e9 if step == 654_321 else 1.0)

    rows = buckets(history, "loss")
    spiked = [b for b in rows if b.max == 1e9]
    assert len(spiked) == 1 and spiked[0].first_step <= 654_321 <= spiked[0].last_step
    assert all(b.min == 1.0 for b in rows)


def test_min_max_last_and_count_are_exact_after_many_merges():
    rng = random.Random(0)
    history = MetricHistory(buckets_per_metric=8)
    points = [(step, rng.uniform(-5, 5)) for step in range(1000) for _ in range(rng.randint(1, 3))]
    for step, value in points:
        history.add("x", step, 0.0, value)

    rows = buckets(history, "x")
    assert sum(b.count for b in rows) == len(points)
    for b in rows:
        inside = [v for s, v in points if b.first_step <= s <= b.last_step]
        assert (b.min, b.max, b.last, b.count) == (min(inside), max(inside), inside[-1], len(inside))


def test_bucket_count_never_exceeds_capacity_even_with_sparse_and_repeated_steps():
    history = MetricHistory(buckets_per_metric=4)
    for step in [0, 0, 1, 5, 5, 5, 100, 101, 1000, 10_000, 10_000, 123_456, 10**9]:
        history.add("val_loss", step, 0.0, 1.0)
        assert len(buckets(history, "val_loss")) <= 4


def test_buckets_are_evenly_spaced_in_step():
    history = MetricHistory(buckets_per_metric=16)
    for step in range(0, 5000, 3):
        history.add("x", step, 0.0, 1.0)

    width = history.snapshot()["x"]["width"]
    keys = [b.first_step // width for b in buckets(history, "x")]
    assert width & (width - 1) == 0
    assert keys == list(range(len(keys)))
    assert all(b.last_step // width == b.first_step // width for b in buckets(history, "x"))


def test_recent_points_are_the_last_raw_points_exactly():
    history = MetricHistory(buckets_per_metric=4, recent_points=100)
    points = [[step, step * 0.5, math.sin(step)] for step in range(10_000)]
    for step, time, value in points:
        history.add("x", step, time, value)

    assert history.snapshot()["x"]["recent"] == points[-100:]


def test_nan_is_counted_and_never_enters_min_or_max():
    history = MetricHistory(buckets_per_metric=2)
    for step, value in enumerate([3.0, math.nan, 1.0, math.nan, 2.0, math.nan, math.nan, 5.0]):
        history.add("loss", step, 0.0, value)

    assert history.summary()["loss"] | {"step": None} == {
        "step": None, "last": 5.0, "min": 1.0, "max": 5.0, "count": 8, "nans": 4}
    assert sum(b.nans for b in buckets(history, "loss")) == 4


def test_none_is_counted_as_nan():
    history = MetricHistory()
    history.add("grad_norm", 0, 0.0, 2.0)
    history.add("grad_norm", 1, 0.0, None)

    assert history.summary()["grad_norm"] == {"step": 1, "last": "nan", "min": 2.0, "max": 2.0,
                                              "count": 2, "nans": 1}


def test_a_bucket_of_only_nan_has_no_min_or_max():
    history = MetricHistory()
    history.add("loss", 0, 0.0, math.nan)

    assert buckets(history, "loss") == [Bucket(0, 0, 0.0, 0.0, None, None, "nan", 1, 1)]


def test_inf_is_kept_as_a_value():
    history = MetricHistory()
    for step, value in enumerate([1.0, math.inf, -math.inf]):
        history.add("x", step, 0.0, value)

    assert history.summary()["x"] | {"step": None} == {
        "step": None, "last": "-inf", "min": "-inf", "max": "inf", "count": 3, "nans": 0}


def test_going_back_in_step_forgets_everything_logged_at_that_step_or_later():
    history = MetricHistory(recent_points=1000)
    for step in range(100):
        history.add("loss", step, float(step), 1.0)
    history.add("loss", 50, 500.0, 7.0)

    snapshot = history.snapshot()["loss"]
    assert [p[0] for p in snapshot["recent"]] == list(range(51))
    assert snapshot["recent"][-1] == [50, 500.0, 7.0]
    assert buckets(history, "loss")[-1] == Bucket(50, 50, 500.0, 500.0, 7.0, 7.0, 7.0, 1, 0)
    assert history.summary()["loss"]["count"] == 51


def test_going_back_in_step_keeps_the_bucket_straddling_the_step():
    history = MetricHistory(buckets_per_metric=4)
    for step in range(100):
        history.add("loss", step, 0.0, 1.0)
    history.add("loss", 40, 1.0, 2.0)
    history.add("loss", 41, 2.0, 3.0)

    rows = buckets(history, "loss")
    assert rows[-1].first_step < 40 and (rows[-1].last_step, rows[-1].last) == (41, 3.0)
    assert history.latest("loss") == (41, 2.0, 3.0)


def test_metrics_beyond_max_metrics_are_dropped_and_counted():
    history = MetricHistory(max_metrics=3)
    for i in range(6):
        for step in range(5):
            history.add(f"m{i}", step, 0.0, 1.0)

    assert history.names() == ["m0", "m1", "m2"]
    assert (history.dropped_metrics, history.dropped_points) == (3, 15)
    assert history.latest("m5") is None


def test_refused_names_remembered_never_outnumber_max_metrics():
    history = MetricHistory(max_metrics=2)
    for i in range(10_000):
        history.add(f"m{i}", 0, 0.0, 1.0)

    assert (history.dropped_metrics, history.dropped_points) == (2, 9_998)


def test_points_with_a_step_out_of_range_are_dropped_and_counted():
    history = MetricHistory()
    history.add("loss", 3, 0.0, 1.0)
    history.add("loss", -1, 0.0, 2.0)
    history.add("loss", 2**64, 0.0, 3.0)
    history.add("acc", -5, 0.0, 4.0)

    assert history.dropped_points == 3
    assert history.names() == ["loss"] and history.latest("loss") == (3, 0.0, 1.0)


def test_a_point_that_cannot_be_recorded_leaves_no_metric_behind():
    history = MetricHistory()
    with pytest.raises(TypeError):
        history.add("loss", "3", 0.0, 1.0)

    assert history.names() == [] and history.summary() == {}


def test_snapshot_is_strict_json_and_decodes_to_the_values_logged():
    history = MetricHistory()
    values = [1.5, math.nan, math.inf, -math.inf, None, 0.0]
    for step, value in enumerate(values):
        history.add("x", step, float(step), value)

    wire = json.loads(json.dumps(history.snapshot(), allow_nan=False))
    decoded = [decode_float(v) for _, _, v in wire["x"]["recent"]]
    assert [repr(v) for v in decoded] == [repr(math.nan if v is None else v) for v in values]
    json.dumps(history.summary(), allow_nan=False)


def test_non_finite_values_are_spelled_as_the_protocol_spells_them():
    encoded = [encode_float(x) for x in (2.5, math.nan, math.inf, -math.inf)]

    assert encoded == [2.5, "nan", "inf", "-inf"]
    assert [repr(float(x)) for x in encoded] == ["2.5", "nan", "inf", "-inf"]


def test_memory_stays_under_one_mib_with_two_million_points():
    names = ["loss", "lr", "grad_norm", "tokens_per_s"]
    steps = list(range(500_000))
    tracemalloc.start()
    try:
        history = MetricHistory()
        for step in steps:
            for name in names:
                history.add(name, step, 1.7e9, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sum(s["count"] for s in history.summary().values()) == 2_000_000
    assert peak < 1024 * 1024


def test_invalid_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="buckets_per_metric"):
        MetricHistory(buckets_per_metric=1)
    with pytest.raises(ConfigError, match="recent_points"):
        MetricHistory(recent_points=-1)


def test_the_module_does_not_import_torch():
    code = "import sys, engine.history; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
