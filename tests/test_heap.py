"""After a fit's first full garbage collection the heap is frozen, so later ones stop stalling the loop."""

from __future__ import annotations

import gc
from typing import Iterator

import pytest

from conftest import TinyClassifier, make_loader
from engine.callbacks import Callback


class FreezeCounts(Callback):
    """``gc.get_freeze_count()`` at the end of every batch; a full collection after batch ``collect_at``."""

    def __init__(self, collect_at: int | None = None) -> None:
        self.collect_at = collect_at
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.counts.append(gc.get_freeze_count())
        if batch_idx == self.collect_at:
            gc.collect()


@pytest.fixture(autouse=True)
def no_automatic_full_collections() -> Iterator[None]:
    """Full collections happen only where a test calls ``gc.collect()``."""
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 10**9)
    yield
    gc.set_threshold(*thresholds)


def fit(make_trainer, counts: FreezeCounts, steps: int = 8) -> None:
    make_trainer(max_steps=steps, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))


def test_after_a_full_collection_the_heap_is_frozen_until_the_fit_ends(make_trainer):
    counts = FreezeCounts(collect_at=2)
    fit(make_trainer, counts)
    assert counts.counts[:3] == [0, 0, 0]  # a full collection at the end of batch 2, frozen right after it
    assert min(counts.counts[3:]) > 10_000  # torch's modules and all else alive then
    assert gc.get_freeze_count() == 0


def test_a_fit_without_a_full_collection_leaves_the_heap_alone(make_trainer):
    counts = FreezeCounts()
    fit(make_trainer, counts)
    assert counts.counts == [0] * 8


def test_with_the_collector_off_the_heap_is_left_alone(make_trainer):
    counts = FreezeCounts(collect_at=2)
    gc.disable()
    try:
        fit(make_trainer, counts)
    finally:
        gc.enable()
    assert counts.counts == [0] * 8


def test_objects_the_program_froze_itself_stay_frozen(make_trainer):
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        counts = FreezeCounts(collect_at=2)
        fit(make_trainer, counts)
        # not unfrozen (the count would drop to 0) and nothing added (the fit's objects would be);
        # a frozen object can still be freed by its refcount
        assert before // 2 < counts.counts[-1] <= before
        assert before // 2 < gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()


def test_a_fit_stops_watching_collections_when_it_ends(make_trainer):
    callbacks = len(gc.callbacks)
    fit(make_trainer, FreezeCounts())
    assert len(gc.callbacks) == callbacks
