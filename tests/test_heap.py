"""A long fit freezes the heap once it has settled, so CPython's full collections stop stalling it."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

import engine._heap
from conftest import TinyClassifier, make_loader
from engine.callbacks import Callback


class FreezeCounts(Callback):
    """``gc.get_freeze_count()`` at the end of every batch, after a pause that makes the fit last."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        time.sleep(self.pause_s)
        self.counts.append(gc.get_freeze_count())


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def settle_quickly(monkeypatch):
    monkeypatch.setattr(engine._heap, "SETTLE_AFTER_S", 0.2)
    assert gc.get_freeze_count() == 0


def test_a_fit_that_runs_past_settling_freezes_the_heap_and_unfreezes_it_at_the_end(make_trainer, settle_quickly):
    counts = FreezeCounts(pause_s=0.02)
    make_trainer(max_steps=20, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))
    assert counts.counts[0] == 0
    assert counts.counts[-1] > 10_000  # torch's modules and everything else alive at that point
    assert gc.get_freeze_count() == 0


def test_garbage_made_before_the_fit_is_collected_not_frozen(make_trainer, settle_quickly):
    gc.disable()  # only the freezer's own collection may find the cycle
    try:
        garbage = Cycle()
        gone = weakref.ref(garbage)
        del garbage
        counts = FreezeCounts(pause_s=0.02)
        make_trainer(max_steps=20, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))
    finally:
        gc.enable()
    assert counts.counts[-1] == 0  # with the collector off the heap is left alone ...
    assert gone() is not None  # ... and so is the garbage

    garbage = Cycle()
    gone = weakref.ref(garbage)
    del garbage
    gc.collect(0)  # the cycle is now in an older generation, as long-lived garbage is
    counts = FreezeCounts(pause_s=0.02)
    make_trainer(max_steps=20, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))
    assert counts.counts[-1] > 0
    assert gone() is None


def test_a_short_fit_never_collects_or_freezes(make_trainer, settle_quickly):
    counts = FreezeCounts(pause_s=0.0)
    make_trainer(max_steps=5, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))
    assert counts.counts == [0] * 5


def test_objects_the_program_froze_itself_stay_frozen(make_trainer, settle_quickly):
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        counts = FreezeCounts(pause_s=0.02)
        make_trainer(max_steps=20, callbacks=[counts]).fit(TinyClassifier(), make_loader(64, batch_size=4))
        # not unfrozen (the count would drop to 0), nothing added (the fit made thousands of objects);
        # a frozen object can still be freed by its refcount
        assert before - 100 <= counts.counts[-1] <= before
        assert before - 100 <= gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()
