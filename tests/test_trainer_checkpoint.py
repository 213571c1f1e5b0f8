"""ModelCheckpoint schedules and retention, and resuming fit from a checkpoint."""

from __future__ import annotations

import types

import pytest
import torch

from conftest import TinyClassifier, make_loader, params_of
from engine import CheckpointError, ConfigError
from engine._checkpoint_io import load_checkpoint
from engine.callbacks import Callback, EarlyStopping, ModelCheckpoint


class _Scored(TinyClassifier):
    """Logs ``score = scores[current_epoch]`` in validation, so the best epoch is known in advance."""

    def __init__(self, scores, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scores = list(scores)

    def validation_step(self, batch, batch_idx):
        self.log("score", self.scores[self.current_epoch])


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_top_k_keeps_exactly_the_k_best_files(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="min", save_top_k=2)
    trainer = make_trainer(max_epochs=5, num_sanity_val_steps=0, callbacks=[ckpt])
    trainer.fit(_Scored([5, 3, 4, 1, 2]), make_loader(16), make_loader(8))
    assert _names(tmp_path / "ckpt") == ["epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt"]
    assert ckpt.best_model_path == str(tmp_path / "ckpt" / "epoch=3-step=8.ckpt")
    assert ckpt.best_model_score == 1.0
    assert sorted(ckpt.best_k_models.values()) == [1.0, 2.0]


def test_mode_max_keeps_the_highest_scores(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="max", save_top_k=1)
    trainer = make_trainer(max_epochs=4, num_sanity_val_steps=0, callbacks=[ckpt])
    trainer.fit(_Scored([1, 4, 2, 3]), make_loader(16), make_loader(8))
    assert _names(tmp_path / "ckpt") == ["epoch=1-step=4.ckpt"]


def test_filename_template_formats_metrics(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best-{epoch:02d}-{score:.1f}", monitor="score")
    make_trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[ckpt]).fit(
        _Scored([2.0, 1.5]), make_loader(16), make_loader(8))
    assert _names(tmp_path / "ckpt") == ["best-epoch=01-score=1.5.ckpt"]


def test_without_monitor_only_the_newest_checkpoint_is_kept(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(max_epochs=3, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    assert _names(tmp_path / "ckpt") == ["epoch=2-step=6.ckpt"]


def test_save_top_k_minus_one_keeps_every_checkpoint(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    make_trainer(max_epochs=3, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]


def test_save_last_writes_last_ckpt_with_the_final_state(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", save_last=True)
    model = _Scored([1, 2, 3])
    make_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[ckpt]).fit(model, make_loader(16), make_loader(8))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "last.ckpt"]
    last = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert last["loop"]["global_step"] == 6
    assert all(torch.equal(last["state_dict"][k], v) for k, v in model.state_dict().items())
    assert ckpt.last_model_path == str(tmp_path / "ckpt" / "last.ckpt")


def test_every_n_train_steps_saves_on_those_steps(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    make_trainer(max_epochs=1, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(48))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"]


def test_every_n_epochs_saves_at_the_end_of_those_epochs(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=2, save_top_k=-1)
    make_trainer(max_epochs=5, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    assert _names(tmp_path / "ckpt") == ["epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"]


def test_train_time_interval_saves_when_the_interval_has_passed(make_trainer, tmp_path, monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    import engine.callbacks._model_checkpoint as mc

    monkeypatch.setattr(mc, "time", types.SimpleNamespace(monotonic=lambda: clock.now))

    class Tick(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock.now += 1.0

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", train_time_interval=2, save_top_k=-1)
    make_trainer(max_epochs=1, callbacks=[Tick(), ckpt]).fit(TinyClassifier(), make_loader(48))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"]


def test_a_missing_monitor_is_a_config_error_listing_logged_metrics(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc")
    with pytest.raises(ConfigError, match=r"monitor='val_acc'.*\['train_loss', 'val_loss'\]"):
        make_trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[ckpt]).fit(
            TinyClassifier(), make_loader(16), make_loader(8))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "mid"}, "mode='mid'"),
    ({"save_top_k": -2}, "save_top_k=-2"),
    ({"every_n_train_steps": -1}, "every_n_train_steps=-1"),
])
def test_bad_checkpoint_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelCheckpoint(**kwargs)


def test_default_checkpoint_goes_to_the_run_directory(make_trainer, tmp_path):
    trainer = make_trainer(max_epochs=1, enable_checkpointing=True)
    trainer.fit(TinyClassifier(), make_loader(16))
    assert _names(tmp_path / "run" / "checkpoints") == ["epoch=0-step=2.ckpt"]
    assert trainer.checkpoint_callback.best_model_path == str(tmp_path / "run" / "checkpoints" / "epoch=0-step=2.ckpt")


def test_with_validation_disabled_checkpoints_are_saved_at_train_epoch_end(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    make_trainer(max_epochs=2, limit_val_batches=0, callbacks=[ckpt]).fit(
        TinyClassifier(), make_loader(16), make_loader(8))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]


def test_enable_checkpointing_false_writes_no_checkpoint(make_trainer, tmp_path):
    make_trainer(max_epochs=1, enable_checkpointing=False).fit(TinyClassifier(), make_loader(16))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_files_hold_the_whole_training_state(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(max_epochs=1, callbacks=[ckpt]).fit(TinyClassifier(lr=0.05, optimizer="adam"), make_loader(16))
    state = load_checkpoint(tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    assert set(state) >= {"state_dict", "hyper_parameters", "loop", "optimizers", "lr_schedulers", "callbacks"}
    assert state["hyper_parameters"] == {"lr": 0.05, "optimizer": "adam"}
    assert state["loop"]["epoch"] == 0 and state["loop"]["global_step"] == 2


def test_save_weights_only_leaves_out_the_optimizer(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_weights_only=True)
    make_trainer(max_epochs=1, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    assert "optimizers" not in load_checkpoint(tmp_path / "ckpt" / "epoch=0-step=2.ckpt")


# -- resuming ---------------------------------------------------------------------------


class _Progress(Callback):
    """Where each fit starts: (epoch, global_step) at on_train_start and each epoch's first step."""

    def __init__(self) -> None:
        self.start: tuple[int, int] | None = None
        self.epochs: list[int] = []

    def on_train_start(self, trainer, module):
        self.start = (trainer.current_epoch, trainer.global_step)

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append(trainer.current_epoch)


def _adam_steps(trainer) -> list[int]:
    return [int(s["step"]) for s in trainer.optimizers[0].state.values()]


def test_fit_from_a_checkpoint_continues_epochs_steps_and_optimizer_state(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    make_trainer(max_epochs=2, callbacks=[ckpt]).fit(TinyClassifier(optimizer="adam"), make_loader(32))

    progress = _Progress()
    trainer = make_trainer(max_epochs=4, callbacks=[progress])
    model = TinyClassifier(optimizer="adam")
    trainer.fit(model, make_loader(32), ckpt_path=tmp_path / "ckpt" / "epoch=1-step=8.ckpt")
    assert progress.start == (2, 8)
    assert progress.epochs == [2, 3]
    assert trainer.global_step == 16
    assert trainer.current_epoch == 4
    assert _adam_steps(trainer) == [16, 16]


def test_resumed_training_matches_uninterrupted_training(make_trainer, tmp_path):
    torch.manual_seed(0)
    straight = TinyClassifier(optimizer="adam")
    resumed = TinyClassifier(optimizer="adam")
    resumed.load_state_dict(straight.state_dict())
    make_trainer(max_epochs=4).fit(straight, make_loader(32))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    make_trainer(max_epochs=2, callbacks=[ckpt]).fit(resumed, make_loader(32))
    fresh = TinyClassifier(optimizer="adam")
    make_trainer(max_epochs=4).fit(fresh, make_loader(32), ckpt_path=tmp_path / "ckpt" / "epoch=1-step=8.ckpt")
    for a, b in zip(params_of(straight), params_of(fresh)):
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_from_a_mid_epoch_checkpoint_skips_the_batches_already_done(make_trainer, tmp_path):
    seen = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(batch_idx)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    make_trainer(max_steps=3, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(40))
    trainer = make_trainer(max_epochs=1, callbacks=[Batches()])
    trainer.fit(TinyClassifier(), make_loader(40), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt")
    assert seen == [3, 4]
    assert trainer.global_step == 5


def test_fit_ckpt_path_last_resumes_from_the_newest_checkpoint(make_trainer):
    make_trainer(max_epochs=2, enable_checkpointing=True).fit(TinyClassifier(), make_loader(16))
    progress = _Progress()
    trainer = make_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[progress])
    trainer.fit(TinyClassifier(), make_loader(16), ckpt_path="last")
    assert progress.start == (2, 4)
    assert trainer.global_step == 6


def test_fit_ckpt_path_best_resumes_from_the_best_checkpoint(make_trainer, tmp_path):
    steps = []

    class Steps(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            steps.append((trainer.current_epoch, trainer.global_step))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", save_top_k=1)
    trainer = make_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[ckpt, Steps()])
    model = _Scored([1, 2, 3])
    trainer.fit(model, make_loader(16), make_loader(8))
    assert trainer.global_step == 6
    steps.clear()
    trainer.fit(model, make_loader(16), make_loader(8), ckpt_path="best")
    assert steps == [(1, 2), (1, 3), (2, 4), (2, 5)]
    assert trainer.global_step == 6


def test_ckpt_path_best_without_a_checkpoint_callback_is_a_checkpoint_error(make_trainer):
    with pytest.raises(CheckpointError, match="ckpt_path='best'"):
        make_trainer(max_epochs=1).fit(TinyClassifier(), make_loader(16), ckpt_path="best")


def test_test_with_ckpt_path_best_after_fit_uses_the_default_checkpoint(make_trainer):
    model = TinyClassifier()
    trainer = make_trainer(max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader(16), make_loader(8))
    best = trainer.checkpoint_callback.best_model_path
    assert best.endswith("epoch=1-step=4.ckpt")
    weights = load_checkpoint(best)["state_dict"]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    trainer.test(model, make_loader(8), ckpt_path="best")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_validate_with_a_checkpoint_loads_its_weights(make_trainer, tmp_path):
    trained = TinyClassifier(lr=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(max_epochs=5, callbacks=[ckpt]).fit(trained, make_loader(32))
    expected = make_trainer().validate(trained, make_loader(32))[0]["val_loss"]
    got = make_trainer().validate(TinyClassifier(), make_loader(32), ckpt_path=ckpt.best_model_path)[0]["val_loss"]
    assert got == pytest.approx(expected)


def test_a_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(make_trainer, tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        make_trainer(max_epochs=1).fit(TinyClassifier(), make_loader(16), ckpt_path=path)


def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(max_epochs=1, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    path = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"epoch=0-step=2\.ckpt"):
        make_trainer(max_epochs=2).fit(TinyClassifier(), make_loader(16), ckpt_path=path)


def test_a_missing_checkpoint_is_a_checkpoint_error(make_trainer, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.ckpt does not exist"):
        make_trainer(max_epochs=1).fit(TinyClassifier(), make_loader(16), ckpt_path=tmp_path / "nowhere.ckpt")


def test_a_checkpoint_of_another_model_is_a_checkpoint_error(make_trainer, tmp_path):
    class Wider(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 7)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(max_epochs=1, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(16))
    with pytest.raises(CheckpointError, match="does not match Wider"):
        make_trainer(max_epochs=2).fit(Wider(), make_loader(16), ckpt_path=ckpt.best_model_path)


def test_early_stopping_state_is_resumed(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    stopper = EarlyStopping(monitor="score", patience=2)
    make_trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[stopper, ckpt]).fit(
        _Scored([1, 2, 3, 4, 5]), make_loader(16), make_loader(8))
    assert stopper.wait_count == 1
    resumed = EarlyStopping(monitor="score", patience=2)
    trainer = make_trainer(max_epochs=5, num_sanity_val_steps=0, callbacks=[resumed])
    trainer.fit(_Scored([1, 2, 3, 4, 5]), make_loader(16), make_loader(8),
                ckpt_path=tmp_path / "ckpt" / "epoch=1-step=4.ckpt")
    assert resumed.stopped_epoch == 2
    assert trainer.current_epoch == 3
