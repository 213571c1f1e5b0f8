"""self.log: per-stage defaults, key names, epoch reductions, errors, and what reaches the loggers."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TinyClassifier, make_loader, metric_steps, read_jsonl
from engine import MetricError
from engine._metrics import MetricCollector
from engine.callbacks import Callback
from engine.loggers import JSONLinesLogger


class _Logs(TinyClassifier):
    """Calls ``train_fn(self, batch, batch_idx)`` / ``val_fn(...)`` to log, then returns the usual loss."""

    def __init__(self, train_fn=None, val_fn=None) -> None:
        super().__init__()
        self.train_fn = train_fn
        self.val_fn = val_fn

    def training_step(self, batch, batch_idx):
        if self.train_fn is not None:
            self.train_fn(self, batch, batch_idx)
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        if self.val_fn is not None:
            self.val_fn(self, batch, batch_idx)


def _jsonl_trainer(make_trainer, **kwargs):
    logger = JSONLinesLogger()
    return make_trainer(logger=logger, num_sanity_val_steps=0, **kwargs), logger


# -- on_step / on_epoch defaults and key names ---------------------------------------


def test_training_logs_default_to_every_step_and_no_epoch_value(make_trainer):
    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=1)
    trainer.fit(TinyClassifier(), make_loader(32))
    records = read_jsonl(logger.path)
    assert [step for step, _ in metric_steps(records, "train_loss")] == [0, 1, 2, 3]
    assert "train_loss_epoch" not in trainer.callback_metrics
    assert not any("epoch" in r["metrics"] and "train_loss" in r["metrics"] for r in records)


def test_validation_logs_default_to_one_epoch_value_per_run(make_trainer):
    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=2)
    trainer.fit(TinyClassifier(), make_loader(32), make_loader(24))
    records = read_jsonl(logger.path)
    assert [step for step, _ in metric_steps(records, "val_loss")] == [4, 8]
    assert [r["metrics"]["epoch"] for r in records if "val_loss" in r["metrics"]] == [0.0, 1.0]


def test_on_step_and_on_epoch_together_give_step_and_epoch_suffixed_keys(make_trainer):
    def log(self, batch, batch_idx):
        self.log("acc", float(batch_idx), on_step=True, on_epoch=True)

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=1)
    trainer.fit(_Logs(train_fn=log), make_loader(32))
    assert {"acc_step", "acc_epoch"} <= set(trainer.callback_metrics)
    records = read_jsonl(logger.path)
    assert metric_steps(records, "acc_step") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert metric_steps(records, "acc_epoch") == [(4, 1.5)]


def test_plain_name_of_a_step_and_epoch_metric_holds_the_step_value_then_the_epoch_value(make_trainer):
    seen = []

    def log(self, batch, batch_idx):
        self.log("acc", float(batch_idx), on_step=True, on_epoch=True)

    class Watch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(trainer.callback_metrics["acc"]))

    trainer = make_trainer(max_epochs=1, callbacks=[Watch()])
    trainer.fit(_Logs(train_fn=log), make_loader(32))
    assert seen == [0.0, 1.0, 2.0, 3.0]
    assert float(trainer.callback_metrics["acc"]) == 1.5


def test_on_epoch_only_in_training_logs_once_at_epoch_end(make_trainer):
    def log(self, batch, batch_idx):
        self.log("acc", float(batch_idx), on_step=False, on_epoch=True)

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=2, log_every_n_steps=1)
    trainer.fit(_Logs(train_fn=log), make_loader(32))
    assert metric_steps(read_jsonl(logger.path), "acc") == [(4, 1.5), (8, 1.5)]


def test_on_step_in_validation_logs_each_batch(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", float(batch_idx), on_step=True, on_epoch=False)

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1)
    trainer.fit(_Logs(val_fn=log), make_loader(16), make_loader(24))
    assert trainer.callback_metrics["v"] == 2.0


def test_the_same_name_in_training_and_validation_follows_each_stages_defaults(make_trainer):
    def train_log(self, batch, batch_idx):
        self.log("loss", self.loss(batch), reduce_fx="max")

    def val_log(self, batch, batch_idx):
        self.log("loss", 5.0)

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=1)
    trainer.fit(_Logs(train_fn=train_log, val_fn=val_log), make_loader(32), make_loader(16))
    steps = metric_steps(read_jsonl(logger.path), "loss")
    assert [s for s, _ in steps] == [0, 1, 2, 3, 4]
    assert steps[-1] == (4, 5.0)


# -- epoch reductions -------------------------------------------------------------------


def test_epoch_mean_is_weighted_by_batch_size(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", float(batch_idx + 1))

    trainer = make_trainer(max_epochs=1)
    result = trainer.validate(_Logs(val_fn=log), make_loader(10, batch_size=4))
    assert result == [{"v": pytest.approx((1 * 4 + 2 * 4 + 3 * 2) / 10)}]


def test_training_epoch_mean_is_weighted_by_batch_size(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", float(batch_idx + 1), on_step=False, on_epoch=True)

    trainer = make_trainer(max_epochs=1)
    trainer.fit(_Logs(train_fn=log), make_loader(10, batch_size=4))
    assert float(trainer.callback_metrics["v"]) == pytest.approx(1.8)


def test_an_explicit_batch_size_overrides_the_inferred_one(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", float(batch_idx + 1), batch_size=[1, 1, 2][batch_idx])

    result = make_trainer().validate(_Logs(val_fn=log), make_loader(10, batch_size=4))
    assert result[0]["v"] == pytest.approx((1 + 2 + 3 * 2) / 4)


@pytest.mark.parametrize(("reduce_fx", "expected"),
                         [("sum", 6.0), ("max", 3.0), ("min", 1.0), ("mean", 1.8), (torch.sum, 6.0),
                          (torch.max, 3.0)])
def test_reduce_fx_reduces_the_epoch_values(make_trainer, reduce_fx, expected):
    def log(self, batch, batch_idx):
        self.log("v", torch.tensor(float(batch_idx + 1)), reduce_fx=reduce_fx)

    result = make_trainer().validate(_Logs(val_fn=log), make_loader(10, batch_size=4))
    assert result[0]["v"] == pytest.approx(expected)


class _TwoTestSets(TinyClassifier):
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("test_loss", float(dataloader_idx + 1))
        self.log("both", float(dataloader_idx + 1), on_step=True, on_epoch=True)


def test_test_returns_one_dict_per_dataloader_with_suffixed_names(make_trainer):
    result = make_trainer().test(_TwoTestSets(), [make_loader(16), make_loader(8, seed=1)])
    assert result == [{"test_loss/dataloader_idx_0": 1.0, "both_epoch/dataloader_idx_0": 1.0},
                      {"test_loss/dataloader_idx_1": 2.0, "both_epoch/dataloader_idx_1": 2.0}]


def test_many_values_fold_to_the_exact_weighted_mean():
    collector = MetricCollector(log_every_n_steps=1)
    collector.set_stage("validate")
    collector.begin_epoch("validate")
    values = torch.arange(3000, dtype=torch.float32)
    for v in values:
        collector.log("v", v, on_step=None, on_epoch=None, prog_bar=False, logger=True, reduce_fx="mean",
                      sync_dist=False, batch_size=2 if int(v) % 2 else 1)
    weights = torch.where(values.long() % 2 == 1, 2.0, 1.0).double()
    expected = float((values.double() * weights).sum() / weights.sum())
    all_values, _ = collector.end_epoch("validate")
    assert all_values["v"] == pytest.approx(expected, rel=1e-12)


def test_materialise_gives_each_value_exactly_whatever_its_dtype_and_one_element_shape():
    from engine._metrics import materialise

    values = [torch.tensor(0.1, dtype=torch.float32), torch.tensor([2**40 + 1]), torch.tensor([[True]]),
              torch.tensor(0.1, dtype=torch.bfloat16), 3, 0.25, torch.tensor(float("nan"), dtype=torch.float16)]
    out = materialise(values)
    assert out[:6] == [float(torch.tensor(0.1, dtype=torch.float32).double()), float(2**40 + 1), 1.0,
                       float(torch.tensor(0.1, dtype=torch.bfloat16).double()), 3.0, 0.25]
    assert all(type(x) is float for x in out) and math.isnan(out[6])


# -- misuse -----------------------------------------------------------------------------


def test_changing_the_reduction_of_a_name_is_a_metric_error(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", 1.0, reduce_fx="sum" if batch_idx == 0 else "max")

    with pytest.raises(MetricError, match="reduce_fx='sum' and now with 'max'"):
        make_trainer().validate(_Logs(val_fn=log), make_loader(16))


def test_logging_a_non_scalar_tensor_is_a_metric_error(make_trainer):
    def log(self, batch, batch_idx):
        self.log("logits", self(batch[0]))

    with pytest.raises(MetricError, match=r"'logits'.*shape \(8, 3\).*log a scalar"):
        make_trainer(max_steps=1).fit(_Logs(train_fn=log), make_loader(8))


def test_logging_a_string_is_a_metric_error(make_trainer):
    def log(self, batch, batch_idx):
        self.log("name", "abc")

    with pytest.raises(MetricError, match="got str"):
        make_trainer(max_steps=1).fit(_Logs(train_fn=log), make_loader(8))


def test_an_unsupported_reduce_fx_is_a_metric_error(make_trainer):
    def log(self, batch, batch_idx):
        self.log("v", 1.0, reduce_fx="median")

    with pytest.raises(MetricError, match="'median' is not supported"):
        make_trainer(max_steps=1).fit(_Logs(train_fn=log), make_loader(8))


# -- log_dict, prog_bar, callback_metrics vs logged_metrics ----------------------------


def test_log_dict_logs_every_item(make_trainer):
    def log(self, batch, batch_idx):
        self.log_dict({"a": 1.0, "b": torch.tensor(2.0)}, on_epoch=True, on_step=False)

    trainer = make_trainer(max_epochs=1)
    trainer.fit(_Logs(train_fn=log), make_loader(16))
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == {"a": 1.0, "b": 2.0}


def test_prog_bar_metrics_are_exactly_the_prog_bar_keys(make_trainer):
    def train_log(self, batch, batch_idx):
        self.log("shown", 1.0, prog_bar=True)
        self.log("both", 2.0, prog_bar=True, on_epoch=True)
        self.log("hidden", 3.0)

    def val_log(self, batch, batch_idx):
        self.log("val_shown", 4.0, prog_bar=True)

    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(_Logs(train_fn=train_log, val_fn=val_log), make_loader(16), make_loader(8))
    assert trainer.progress_bar_metrics == {"shown": 1.0, "both_step": 2.0, "both_epoch": 2.0, "val_shown": 4.0}


def test_logger_false_reaches_callback_metrics_but_not_the_loggers(make_trainer):
    def log(self, batch, batch_idx):
        self.log("private", 7.0, logger=False)
        self.log("public", 8.0)

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=1)
    trainer.fit(_Logs(train_fn=log), make_loader(16))
    assert float(trainer.callback_metrics["private"]) == 7.0
    assert "private" not in trainer.logged_metrics
    assert float(trainer.logged_metrics["public"]) == 8.0
    assert all("private" not in r["metrics"] for r in read_jsonl(logger.path))


def test_callback_metrics_hold_the_latest_step_and_epoch_values(make_trainer):
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(), make_loader(16), make_loader(8))
    metrics = trainer.callback_metrics
    assert set(metrics) == {"train_loss", "val_loss"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())


def test_log_every_n_steps_thins_the_training_step_values(make_trainer):
    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=3)
    trainer.fit(TinyClassifier(), make_loader(80))
    assert [s for s, _ in metric_steps(read_jsonl(logger.path), "train_loss")] == [0, 3, 6, 9]


def test_log_every_n_steps_does_not_thin_validation_values(make_trainer):
    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=3, log_every_n_steps=50)
    trainer.fit(TinyClassifier(), make_loader(16), make_loader(8))
    assert [s for s, _ in metric_steps(read_jsonl(logger.path), "val_loss")] == [2, 4, 6]


def test_logged_values_match_the_loss_returned_by_training_step(make_trainer):
    losses = []

    class Record(TinyClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            losses.append(float(loss.detach()))
            return loss

    trainer, logger = _jsonl_trainer(make_trainer, max_epochs=1, log_every_n_steps=1)
    trainer.fit(Record(), make_loader(32))
    assert [v for _, v in metric_steps(read_jsonl(logger.path), "train_loss")] == pytest.approx(losses)
