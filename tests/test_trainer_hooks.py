"""The order in which module hooks and callback hooks fire (the sequence docs/hooks.md lists)."""

from __future__ import annotations

import pytest

from conftest import TinyClassifier, make_loader
from engine import Module
from engine.callbacks import Callback, ModelCheckpoint

_MODULE_HOOKS = [n for n in vars(Module) if n.startswith("on_") or n in ("setup", "teardown")]
_CALLBACK_HOOKS = [n for n in vars(Callback) if n.startswith("on_") or n in ("setup", "teardown")]


def _recording_classes(calls: list[str]) -> tuple[type, type]:
    """A TinyClassifier and a Callback that append "module.<hook>" / "callback.<hook>" to ``calls``."""

    def module_hook(name):
        def hook(self, *args):
            calls.append(f"module.{name}")
        return hook

    def callback_hook(name):
        def hook(self, trainer, module, *args):
            calls.append(f"callback.{name}")
        return hook

    base = type("RecordingBase", (TinyClassifier,), {n: module_hook(n) for n in _MODULE_HOOKS})

    class RecordingModule(base):
        def training_step(self, batch, batch_idx):
            calls.append("module.training_step")
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            calls.append("module.validation_step")
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            calls.append("module.test_step")
            return super().test_step(batch, batch_idx)

        def predict_step(self, batch, batch_idx):
            calls.append("module.predict_step")
            return super().predict_step(batch, batch_idx)

        def configure_optimizers(self):
            calls.append("module.configure_optimizers")
            return super().configure_optimizers()

    recording_callback = type("RecordingCallback", (Callback,), {n: callback_hook(n) for n in _CALLBACK_HOOKS})
    return RecordingModule, recording_callback


_TRAIN_BATCH = [
    "module.on_train_batch_start",
    "callback.on_train_batch_start",
    "module.training_step",
    "module.on_before_backward",
    "callback.on_before_backward",
    "module.on_after_backward",
    "callback.on_after_backward",
    "module.on_before_optimizer_step",
    "callback.on_before_optimizer_step",
    "module.on_before_zero_grad",
    "callback.on_before_zero_grad",
    "module.on_train_batch_end",
    "callback.on_train_batch_end",
]

FIT_ONE_EPOCH_TWO_BATCHES_WITH_VALIDATION = [
    "module.setup",
    "callback.setup",
    "module.configure_optimizers",
    "module.on_fit_start",
    "callback.on_fit_start",
    "callback.on_sanity_check_start",
    "module.on_validation_batch_start",
    "module.validation_step",
    "module.on_validation_batch_end",
    "callback.on_sanity_check_end",
    "module.on_train_start",
    "callback.on_train_start",
    "module.on_train_epoch_start",
    "callback.on_train_epoch_start",
    *_TRAIN_BATCH,
    *_TRAIN_BATCH,
    "module.on_validation_start",
    "callback.on_validation_start",
    "module.on_validation_epoch_start",
    "callback.on_validation_epoch_start",
    "module.on_validation_batch_start",
    "callback.on_validation_batch_start",
    "module.validation_step",
    "module.on_validation_batch_end",
    "callback.on_validation_batch_end",
    "module.on_validation_epoch_end",
    "callback.on_validation_epoch_end",
    "module.on_validation_end",
    "callback.on_validation_end",
    "module.on_train_epoch_end",
    "callback.on_train_epoch_end",
    "module.on_train_end",
    "callback.on_train_end",
    "module.on_fit_end",
    "callback.on_fit_end",
    "module.teardown",
    "callback.teardown",
]


def test_fit_hooks_fire_in_the_documented_order(make_trainer):
    calls: list[str] = []
    module_cls, callback_cls = _recording_classes(calls)
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=1, callbacks=[callback_cls()])
    trainer.fit(module_cls(), make_loader(16, batch_size=8), make_loader(8, batch_size=8))
    assert calls == FIT_ONE_EPOCH_TWO_BATCHES_WITH_VALIDATION


def test_test_hooks_fire_in_the_documented_order(make_trainer):
    calls: list[str] = []
    module_cls, callback_cls = _recording_classes(calls)
    make_trainer(callbacks=[callback_cls()]).test(module_cls(), make_loader(8, batch_size=8))
    assert calls == [
        "module.setup", "callback.setup",
        "module.on_test_start", "callback.on_test_start",
        "module.on_test_epoch_start", "callback.on_test_epoch_start",
        "module.on_test_batch_start", "callback.on_test_batch_start",
        "module.test_step",
        "module.on_test_batch_end", "callback.on_test_batch_end",
        "module.on_test_epoch_end", "callback.on_test_epoch_end",
        "module.on_test_end", "callback.on_test_end",
        "module.teardown", "callback.teardown",
    ]


def test_predict_hooks_fire_in_the_documented_order(make_trainer):
    calls: list[str] = []
    module_cls, callback_cls = _recording_classes(calls)
    make_trainer(callbacks=[callback_cls()]).predict(module_cls(), make_loader(8, batch_size=8))
    assert calls == [
        "module.setup", "callback.setup",
        "module.on_predict_start", "callback.on_predict_start",
        "module.on_predict_epoch_start", "callback.on_predict_epoch_start",
        "module.on_predict_batch_start", "callback.on_predict_batch_start",
        "module.predict_step",
        "module.on_predict_batch_end", "callback.on_predict_batch_end",
        "module.on_predict_epoch_end", "callback.on_predict_epoch_end",
        "module.on_predict_end", "callback.on_predict_end",
        "module.teardown", "callback.teardown",
    ]


def test_optimizer_hooks_fire_only_on_batches_that_step(make_trainer):
    calls: list[str] = []
    module_cls, callback_cls = _recording_classes(calls)
    make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[callback_cls()]).fit(
        module_cls(), make_loader(32, batch_size=8))
    assert calls.count("module.training_step") == 4
    assert calls.count("module.on_before_backward") == 4
    assert calls.count("module.on_before_optimizer_step") == 2
    assert calls.count("callback.on_before_zero_grad") == 2


def test_callbacks_run_in_the_order_given_with_checkpoints_last(make_trainer, tmp_path):
    order: list[str] = []

    class Named(Callback):
        def __init__(self, name):
            self.name = name

        def on_train_epoch_end(self, trainer, module):
            order.append(self.name)

    class SpyCheckpoint(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, module):
            order.append("checkpoint")
            super().on_train_epoch_end(trainer, module)

    callbacks = [Named("a"), SpyCheckpoint(dirpath=tmp_path / "ckpt"), Named("b")]
    make_trainer(max_epochs=1, callbacks=callbacks).fit(TinyClassifier(), make_loader(8))
    assert order == ["a", "b", "checkpoint"]


def test_exceptions_reach_on_exception_and_teardown_still_runs(make_trainer):
    calls: list[str] = []
    module_cls, callback_cls = _recording_classes(calls)

    class Boom(module_cls):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(max_steps=1, callbacks=[callback_cls()]).fit(Boom(), make_loader(8))
    assert calls[-3:] == ["callback.on_exception", "module.teardown", "callback.teardown"]
    assert "module.on_fit_end" not in calls
