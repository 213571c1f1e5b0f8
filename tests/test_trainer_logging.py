"""What a real fit leaves in its run directory (TensorBoard, metrics.jsonl) and says at start-up."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import TinyClassifier, make_loader, metric_steps, read_jsonl


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture
def logged_fit(make_trainer):
    """2 epochs × 2 batches with validation, default loggers, every step logged."""
    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, logger=True, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(lr=0.05), make_loader(16), make_loader(8))
    return trainer


def test_default_loggers_write_metrics_jsonl_and_tensorboard_in_the_run_dir(logged_fit, tmp_path):
    assert logged_fit.run_dir == tmp_path / "run"
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_holds_train_scalars_at_each_step(logged_fit):
    events = _events(logged_fit.run_dir / "tensorboard")
    jsonl = metric_steps(read_jsonl(logged_fit.run_dir / "metrics.jsonl"), "train_loss")
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(s, pytest.approx(v)) for s, v in jsonl]
    assert [e.step for e in events.Scalars("train_loss")] == [0, 1, 2, 3]


def test_tensorboard_holds_val_scalars_at_the_step_of_each_validation(logged_fit):
    events = _events(logged_fit.run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4]
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == [(2, 0.0), (4, 1.0)]
    final = float(logged_fit.callback_metrics["val_loss"])
    assert events.Scalars("val_loss")[-1].value == pytest.approx(final)


def test_tensorboard_holds_the_hparams_and_final_metrics(logged_fit):
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = _events(logged_fit.run_dir / "tensorboard")
    content = events.PluginTagToContent("hparams")
    data = [plugin_data_pb2.HParamsPluginData.FromString(raw) for raw in content.values()]
    start = next(d.session_start_info for d in data if d.HasField("session_start_info"))
    assert {k: v.string_value or v.number_value for k, v in start.hparams.items()} == {"lr": 0.05,
                                                                                       "optimizer": "sgd"}
    assert events.Scalars("final/val_loss")[0].value == pytest.approx(float(logged_fit.callback_metrics["val_loss"]))


def test_metrics_jsonl_records_step_time_and_metrics(logged_fit):
    records = read_jsonl(logged_fit.run_dir / "metrics.jsonl")
    assert all(set(r) == {"step", "time", "metrics"} for r in records)
    assert [s for s, _ in metric_steps(records, "val_loss")] == [2, 4]
    times = [r["time"] for r in records]
    assert times == sorted(times)


def test_validate_alone_writes_only_metrics_jsonl(make_trainer, tmp_path):
    make_trainer(logger=True).validate(TinyClassifier(), make_loader(8))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]


def test_logger_false_writes_no_metrics(make_trainer, tmp_path):
    make_trainer(max_epochs=1, logger=False).fit(TinyClassifier(), make_loader(8))
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("events.out.*"))


# -- start-up summary ------------------------------------------------------------------------


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "traindeck" and r.levelno == logging.INFO]


def test_start_up_summary_states_the_device_and_precision(make_trainer, traindeck_log):
    make_trainer(max_steps=1, accelerator="cpu").fit(TinyClassifier(), make_loader(8))
    messages = _messages(traindeck_log)
    assert "device: cpu (accelerator='cpu' was asked for)" in messages
    assert "precision: 32-bit float" in messages
    assert "model: TinyClassifier, 15 parameters (15 trainable)" in messages


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="auto picks an accelerator on this machine")
def test_start_up_summary_explains_an_automatic_cpu_choice(make_trainer, traindeck_log):
    make_trainer(max_steps=1, accelerator="auto").fit(TinyClassifier(), make_loader(8))
    assert "device: cpu (no CUDA or MPS device was found)" in _messages(traindeck_log)


def test_start_up_summary_states_bf16_mixed(make_trainer, traindeck_log):
    make_trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed").fit(TinyClassifier(), make_loader(8))
    assert "precision: bfloat16 autocast on cpu, float32 weights" in _messages(traindeck_log)


def test_start_up_summary_states_seed_and_accumulation(make_trainer, traindeck_log):
    make_trainer(seed=7, accumulate_grad_batches=2, max_steps=1).fit(TinyClassifier(), make_loader(16))
    messages = _messages(traindeck_log)
    assert "seed: 7 (python, numpy and torch seeded)" in messages
    assert "gradients accumulated over 2 batches per optimizer step" in messages


def test_start_up_summary_warns_about_the_default_epoch_limit(make_trainer, traindeck_log):
    trainer = make_trainer(limit_train_batches=1)
    trainer.config.max_epochs = 1
    trainer.fit(TinyClassifier(), make_loader(8))
    assert "no max_epochs, max_steps or max_time given: training stops after 1000 epochs" in _messages(traindeck_log)


def test_start_up_summary_is_printed_once_per_trainer(make_trainer, traindeck_log):
    trainer = make_trainer(max_steps=1)
    trainer.fit(TinyClassifier(), make_loader(8))
    trainer.validate(TinyClassifier(), make_loader(8))
    assert sum(m.startswith("device: ") for m in _messages(traindeck_log)) == 1


def test_validate_reports_its_results(make_trainer, traindeck_log):
    make_trainer().validate(TinyClassifier(), make_loader(8))
    assert any(m.startswith("validate results: val_loss ") for m in _messages(traindeck_log))


def test_a_flush_comes_before_its_interval_once_4096_values_are_waiting(make_trainer, monkeypatch):
    import engine._publish
    import engine._trainer
    from engine.callbacks import Callback
    from engine.loggers import Logger

    for module in (engine._publish, engine._trainer):
        monkeypatch.setattr(module, "FLUSH_INTERVAL_S", 60.0)

    class Steps(Logger):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def log_metrics(self, metrics, step):
            self.steps.append(step)

    class Seen(Callback):
        def __init__(self, logger: Steps) -> None:
            self.logger, self.seen = logger, []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seen.append(len(self.logger.steps))

    class Wide(TinyClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log_dict({f"m{i:04d}": loss for i in range(1500)})
            return loss

    logger = Steps()
    seen = Seen(logger)
    make_trainer(max_steps=4, logger=logger, log_every_n_steps=1, callbacks=[seen]).fit(Wide(), make_loader())
    # 4,503 values after the third step: flushed at once (seen at the next batch's end), not at the interval
    assert seen.seen == [0, 0, 0, 3]
