"""Reading the metric history back: rebuilding it from a snapshot, and the per-column view charts draw."""

from __future__ import annotations

import json
import math
import random

import pytest

from engine.history import MetricHistory


def fill(history: MetricHistory, name: str, points: list[tuple[int, float]]) -> None:
    for step, value in points:
        history.add(name, step, step * 0.1, value)


def wire(history: MetricHistory) -> dict:
    return json.loads(json.dumps(history.snapshot(), allow_nan=False))


@pytest.mark.parametrize("n", [1, 7, 100, 513, 4000])
@pytest.mark.parametrize("m", [0, 1, 300, 5000])
@pytest.mark.parametrize("stride", [1, 3])
def test_a_history_loaded_from_a_snapshot_continues_as_the_original(n, m, stride):
    rng = random.Random(n * 31 + m)
    points = [(i * stride, rng.choice([rng.uniform(-1, 1), math.nan, math.inf])) for i in range(n + m)]
    original = MetricHistory(buckets_per_metric=16, recent_points=100)
    fill(original, "loss", points[:n])
    fill(original, "lr", points[:n:2])

    copy = MetricHistory(buckets_per_metric=16, recent_points=100)
    copy.load(wire(original))
    fill(original, "loss", points[n:])
    fill(copy, "loss", points[n:])

    assert original.snapshot() == copy.snapshot()
    assert original.summary() == copy.summary()
    assert original.columns("loss", 0, (n + m) * stride, 37) == copy.columns("loss", 0, (n + m) * stride, 37)


def test_loading_a_snapshot_with_more_buckets_than_fit_merges_them():
    big = MetricHistory(buckets_per_metric=64)
    fill(big, "loss", [(step, 1e6 if step == 777 else 1.0) for step in range(10_000)])

    small = MetricHistory(buckets_per_metric=8)
    small.load(wire(big))

    rows = small.snapshot()["loss"]["buckets"]
    assert len(rows) <= 8
    assert sum(row[7] for row in rows) == 10_000
    assert max(row[5] for row in rows) == 1e6


def test_loading_replaces_what_the_history_held():
    history = MetricHistory()
    fill(history, "old", [(0, 1.0)])
    source = MetricHistory()
    fill(source, "new", [(0, 2.0)])

    history.load(source.snapshot())

    assert history.names() == ["new"]


def test_step_range_is_the_first_and_last_step_logged():
    history = MetricHistory(buckets_per_metric=4, recent_points=10)
    fill(history, "val_loss", [(step, 1.0) for step in range(50, 10_000, 50)])

    assert history.step_range("val_loss") == (50, 9950)
    assert history.step_range("missing") is None


def test_columns_of_raw_points_are_exact_min_max_and_last():
    history = MetricHistory()
    fill(history, "x", [(step, float(step % 7)) for step in range(100)])

    columns = history.columns("x", 0, 99, 10)

    for c, (lo, hi, last) in enumerate(columns):
        inside = [float(s % 7) for s in range(10 * c, 10 * c + 10)]
        assert (lo, hi, last) == (min(inside), max(inside), inside[-1])


def test_a_spike_in_one_step_is_the_max_of_its_column_in_a_long_run():
    history = MetricHistory()
    fill(history, "loss", [(step, 50.0 if step == 123_456 else 1.0) for step in range(1_000_000)])

    columns = history.columns("loss", 0, 999_999, 80)

    spike_column = 123_456 * 80 // 1_000_000
    assert columns[spike_column][1] == 50.0
    assert [c for c, col in enumerate(columns) if col[1] == 50.0] == [spike_column]
    assert all(col[0] == 1.0 for col in columns)


def test_columns_where_nothing_was_logged_are_none():
    history = MetricHistory()
    fill(history, "val_loss", [(0, 3.0), (90, 2.0)])

    columns = history.columns("val_loss", 0, 99, 10)

    assert columns[0] == (3.0, 3.0, 3.0) and columns[9] == (2.0, 2.0, 2.0)
    assert columns[1:9] == [None] * 8


def test_columns_before_the_recent_points_bound_the_values_within_one_bucket():
    history = MetricHistory(buckets_per_metric=8, recent_points=10)
    fill(history, "x", [(step, float(step)) for step in range(1000)])

    columns = history.columns("x", 0, 999, 4)

    width = history.snapshot()["x"]["width"]
    for c, (lo, hi, _) in enumerate(columns):
        assert 250 * c - width < lo <= 250 * c
        assert 250 * c + 249 <= hi < 250 * c + 249 + width
    assert columns[3][2] == 999.0


def test_columns_ignore_nan_and_keep_inf():
    history = MetricHistory()
    fill(history, "x", [(0, math.nan), (1, 2.0), (2, math.inf), (3, math.nan)])

    assert history.columns("x", 0, 3, 4) == [None, (2.0, 2.0, 2.0), (math.inf, math.inf, math.inf), None]


def test_columns_cover_only_the_range_asked_for():
    history = MetricHistory()
    fill(history, "x", [(step, float(step)) for step in range(100)])

    assert history.columns("x", 90, 99, 2) == [(90.0, 94.0, 94.0), (95.0, 99.0, 99.0)]


def test_columns_of_an_unknown_metric_or_empty_range_are_none():
    history = MetricHistory()
    fill(history, "x", [(5, 1.0)])

    assert history.columns("y", 0, 10, 3) == [None] * 3
    assert history.columns("x", 10, 0, 3) == [None] * 3
    assert history.columns("x", 0, 10, 0) == []
