"""EarlyStopping, LearningRateMonitor and ProgressBar, observed through a real fit."""

from __future__ import annotations

import io
import re

import pytest
import torch

from conftest import TinyClassifier, make_loader, metric_steps, read_jsonl
from engine import ConfigError
from engine.callbacks import EarlyStopping, LearningRateMonitor, ProgressBar
from engine.loggers import JSONLinesLogger


class _Scored(TinyClassifier):
    """Logs ``score = scores[current_epoch]`` in validation (or at train epoch end without val data)."""

    def __init__(self, scores) -> None:
        super().__init__()
        self.scores = list(scores)

    def validation_step(self, batch, batch_idx):
        self.log("score", self.scores[self.current_epoch])

    def on_train_epoch_end(self):
        self.log("train_score", self.scores[self.current_epoch])


# -- EarlyStopping ------------------------------------------------------------------------


def _fit_with_stopper(make_trainer, stopper, scores, max_epochs=10, val=True):
    trainer = make_trainer(max_epochs=max_epochs, num_sanity_val_steps=0, callbacks=[stopper])
    trainer.fit(_Scored(scores), make_loader(16), make_loader(8) if val else None)
    return trainer


def test_early_stopping_stops_after_patience_checks_without_improvement(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=2)
    trainer = _fit_with_stopper(make_trainer, stopper, [3, 2, 2.5, 2.2, 1, 1, 1, 1, 1, 1])
    assert stopper.stopped_epoch == 3
    assert trainer.current_epoch == 4
    assert trainer.global_step == 8
    assert stopper.best_score == 2
    assert "did not improve for 2 checks" in stopper.stop_reason


def test_early_stopping_resets_patience_on_improvement(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=2)
    trainer = _fit_with_stopper(make_trainer, stopper, [5, 6, 4, 6, 3, 6, 6, 0, 0, 0])
    assert stopper.stopped_epoch == 6
    assert trainer.current_epoch == 7


def test_early_stopping_mode_max_treats_larger_as_better(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=1, mode="max")
    _fit_with_stopper(make_trainer, stopper, [1, 2, 3, 2, 5, 5])
    assert stopper.stopped_epoch == 3


def test_early_stopping_min_delta_requires_a_large_enough_improvement(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=2, min_delta=0.5)
    _fit_with_stopper(make_trainer, stopper, [3, 2.8, 2.6, 0, 0])
    assert stopper.stopped_epoch == 2


def test_early_stopping_check_finite_stops_at_the_first_nan(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=5)
    trainer = _fit_with_stopper(make_trainer, stopper, [3, float("nan"), 1, 1])
    assert stopper.stopped_epoch == 1
    assert trainer.current_epoch == 2
    assert "not finite" in stopper.stop_reason


def test_early_stopping_stopping_threshold_stops_when_reached(make_trainer):
    stopper = EarlyStopping(monitor="score", stopping_threshold=0.5)
    _fit_with_stopper(make_trainer, stopper, [3, 2, 0.4, 0.1])
    assert stopper.stopped_epoch == 2


def test_early_stopping_divergence_threshold_stops_when_crossed(make_trainer):
    stopper = EarlyStopping(monitor="score", divergence_threshold=10)
    _fit_with_stopper(make_trainer, stopper, [3, 20, 1, 1])
    assert stopper.stopped_epoch == 1


def test_early_stopping_without_validation_checks_at_train_epoch_end(make_trainer):
    stopper = EarlyStopping(monitor="train_score", patience=1)
    trainer = _fit_with_stopper(make_trainer, stopper, [3, 2, 2, 1, 1], val=False)
    assert stopper.stopped_epoch == 2
    assert trainer.current_epoch == 3


def test_early_stopping_with_validation_disabled_checks_at_train_epoch_end(make_trainer):
    stopper = EarlyStopping(monitor="train_score", patience=1)
    trainer = make_trainer(max_epochs=10, limit_val_batches=0, callbacks=[stopper])
    trainer.fit(_Scored([3, 2, 2, 1, 1]), make_loader(16), make_loader(8))
    assert stopper.stopped_epoch == 2


def test_early_stopping_on_a_missing_metric_is_a_config_error_listing_logged_ones(make_trainer):
    stopper = EarlyStopping(monitor="val_acc")
    with pytest.raises(ConfigError, match=r"monitor='val_acc'.*\['score', 'train_loss'\]"):
        _fit_with_stopper(make_trainer, stopper, [1, 1])


def test_early_stopping_ignores_the_sanity_check(make_trainer):
    stopper = EarlyStopping(monitor="score", patience=0)
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=1, callbacks=[stopper])
    trainer.fit(_Scored([1.0]), make_loader(16), make_loader(8))
    assert stopper.stopped_epoch == -1
    assert stopper.best_score == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [({"mode": "avg"}, "mode='avg'"), ({"patience": -1}, "patience")])
def test_bad_early_stopping_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EarlyStopping(monitor="x", **kwargs)


# -- LearningRateMonitor ------------------------------------------------------------------


class _StepLR(TinyClassifier):
    def __init__(self, interval: str, groups: int = 1) -> None:
        super().__init__()
        self.interval = interval
        self.groups = groups

    def configure_optimizers(self):
        if self.groups == 1:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
        else:
            opt = torch.optim.SGD([{"params": [self.layer.weight], "lr": 0.1},
                                   {"params": [self.layer.bias], "lr": 0.01}], momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def test_lr_monitor_writes_each_steps_lr_with_a_step_scheduler(make_trainer):
    logger = JSONLinesLogger()
    trainer = make_trainer(max_steps=5, log_every_n_steps=1, logger=logger, callbacks=[LearningRateMonitor()])
    trainer.fit(_StepLR("step"), make_loader(40))
    logged = metric_steps(read_jsonl(logger.path), "lr-SGD")
    assert logged == [(s, pytest.approx(0.1 * 0.5 ** s)) for s in range(1, 6)]


def test_lr_monitor_writes_the_lr_at_each_epoch_start_with_an_epoch_scheduler(make_trainer):
    logger = JSONLinesLogger()
    trainer = make_trainer(max_epochs=3, logger=logger, callbacks=[LearningRateMonitor()])
    trainer.fit(_StepLR("epoch"), make_loader(16))
    assert metric_steps(read_jsonl(logger.path), "lr-SGD") == [(0, 0.1), (2, 0.05), (4, 0.025)]


def test_lr_monitor_step_interval_follows_log_every_n_steps(make_trainer):
    logger = JSONLinesLogger()
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = make_trainer(max_steps=6, log_every_n_steps=3, logger=logger, callbacks=[monitor])
    trainer.fit(_StepLR("epoch"), make_loader(48))
    assert metric_steps(read_jsonl(logger.path), "lr-SGD") == [(3, 0.1), (6, 0.1)]


def test_lr_monitor_names_param_groups_and_logs_momentum(make_trainer):
    logger = JSONLinesLogger()
    monitor = LearningRateMonitor(log_momentum=True)
    trainer = make_trainer(max_epochs=1, logger=logger, callbacks=[monitor])
    trainer.fit(_StepLR("epoch", groups=2), make_loader(16))
    first = read_jsonl(logger.path)[0]["metrics"]
    assert first == {"lr-SGD/pg1": 0.1, "lr-SGD/pg2": 0.01, "lr-SGD-momentum/pg1": 0.9, "lr-SGD-momentum/pg2": 0.9}


def test_lr_monitor_values_reach_tensorboard(make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(max_epochs=2, logger=True, callbacks=[LearningRateMonitor()])
    trainer.fit(_StepLR("epoch"), make_loader(16))
    events = EventAccumulator(str(trainer.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lr-SGD")] == [(0, pytest.approx(0.1)), (2, pytest.approx(0.05))]


def test_lr_monitor_without_a_logger_is_a_config_error(make_trainer):
    with pytest.raises(ConfigError, match="needs a logger"):
        make_trainer(max_epochs=1, callbacks=[LearningRateMonitor()]).fit(TinyClassifier(), make_loader(8))


def test_lr_monitor_rejects_an_unknown_interval():
    with pytest.raises(ConfigError, match="logging_interval='batch'"):
        LearningRateMonitor(logging_interval="batch")


# -- ProgressBar ----------------------------------------------------------------------------


class _ProgBar(TinyClassifier):
    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("loss", loss, prog_bar=True)
        return loss


def _progress_lines(make_trainer, **bar_kwargs) -> list[str]:
    stream = io.StringIO()
    make_trainer(max_epochs=2, callbacks=[ProgressBar(stream=stream, **bar_kwargs)]).fit(
        _ProgBar(), make_loader(32))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    return text.splitlines()


def test_progress_on_a_non_tty_prints_one_plain_line_per_epoch_end(make_trainer):
    lines = _progress_lines(make_trainer)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 0/2  batch 4/4  step 4  ")
    assert lines[1].startswith("epoch 1/2  batch 4/4  step 8  ")


def test_progress_lines_show_rate_eta_and_prog_bar_metrics(make_trainer):
    line = _progress_lines(make_trainer)[0]
    assert re.search(r"  \d+\.\d it/s  ETA (\?|\d+:\d\d)  loss \d", line)


def test_progress_on_a_non_tty_prints_periodic_plain_lines(make_trainer):
    lines = _progress_lines(make_trainer, plain_interval_s=0.0)
    assert len(lines) == 10
    assert [line.split("  ")[2] for line in lines[:5]] == ["step 1", "step 2", "step 3", "step 4", "step 4"]


def test_progress_bar_is_added_by_default_and_writes_to_stderr(tmp_path, capsys):
    from engine import Trainer

    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    trainer.fit(TinyClassifier(), make_loader(16))
    assert any(isinstance(cb, ProgressBar) for cb in trainer.callbacks)
    assert "epoch 0/1  batch 2/2  step 2" in capsys.readouterr().err
