"""How long fit trains and how often it validates: epochs, steps, time, limits, intervals."""

from __future__ import annotations

import time

import torch

from conftest import Counter, SanityCounter, TinyClassifier, make_loader, params_of
from engine import Trainer, seed_everything
from engine.callbacks import Callback, LearningRateMonitor, ModelCheckpoint


def test_fit_lowers_the_loss_on_the_training_data(make_trainer):
    model = TinyClassifier(lr=0.5)
    data = make_loader(64, batch_size=16)
    before = make_trainer().validate(model, data)[0]["val_loss"]
    make_trainer(max_epochs=20).fit(model, data)
    after = make_trainer().validate(model, data)[0]["val_loss"]
    assert after < 0.5 * before


def test_max_epochs_runs_that_many_epochs_of_every_batch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=3, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert counter.epochs_started == [0, 1, 2]
    assert counter.train_batches == 12
    assert counter.optimizer_steps == 12
    assert trainer.global_step == 12
    assert trainer.current_epoch == 3


def test_max_steps_stops_after_that_many_optimizer_steps(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_steps=6, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert trainer.global_step == 6
    assert counter.optimizer_steps == 6
    assert counter.epochs_started == [0, 1]


def test_max_steps_wins_over_a_larger_max_epochs(make_trainer):
    trainer = make_trainer(max_epochs=10, max_steps=3)
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert trainer.global_step == 3


def test_max_epochs_wins_over_a_larger_max_steps(make_trainer):
    trainer = make_trainer(max_epochs=2, max_steps=100)
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert trainer.global_step == 8


class _Slow(TinyClassifier):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


def test_max_time_stops_training_soon_after_the_limit(make_trainer):
    trainer = make_trainer(max_time=0.3)
    start = time.monotonic()
    trainer.fit(_Slow(), make_loader(32, batch_size=8))
    elapsed = time.monotonic() - start
    assert trainer.global_step >= 5
    assert 0.3 <= elapsed < 2.0


def test_max_time_accepts_dd_hh_mm_ss(make_trainer):
    trainer = make_trainer(max_time="00:00:00:01", max_steps=2)
    assert trainer.config.max_time_s == 1.0
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert trainer.global_step == 2


def test_without_any_limit_training_defaults_to_1000_epochs(make_trainer):
    trainer = make_trainer()
    assert trainer.config.max_epochs == 1000
    assert trainer.config.defaulted_max_epochs


def test_limit_train_batches_int_counts_batches_per_epoch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_train_batches=3, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(80, batch_size=8))
    assert counter.train_batches == 6
    assert trainer.global_step == 6
    assert trainer.num_training_batches == 3


def test_limit_train_batches_fraction_is_a_share_of_the_epoch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_train_batches=0.5, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(80, batch_size=8))
    assert counter.train_batches == 10
    assert trainer.global_step == 10


def test_validation_runs_once_per_epoch_by_default(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8), make_loader(16, batch_size=8))
    assert counter.val_runs == 3
    assert counter.val_batches == 6


def test_val_check_interval_fraction_validates_within_the_epoch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, val_check_interval=0.25, num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(64, batch_size=8), make_loader(8, batch_size=8))
    assert counter.val_runs == 8


def test_val_check_interval_int_counts_batches_within_each_epoch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, val_check_interval=3, num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(56, batch_size=8), make_loader(8, batch_size=8))
    assert counter.val_runs == 4


def test_val_check_interval_int_without_epoch_check_counts_batches_across_epochs(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, val_check_interval=3, check_val_every_n_epoch=None,
                           num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8), make_loader(8, batch_size=8))
    assert counter.val_runs == 2


def test_check_val_every_n_epoch_skips_epochs_in_between(make_trainer):
    seen = []

    class Epochs(Callback):
        def on_validation_end(self, trainer, module):
            seen.append(trainer.current_epoch)

    trainer = make_trainer(max_epochs=5, check_val_every_n_epoch=2, num_sanity_val_steps=0, callbacks=[Epochs()])
    trainer.fit(TinyClassifier(), make_loader(16, batch_size=8), make_loader(8, batch_size=8))
    assert seen == [1, 3]


def test_limit_val_batches_zero_disables_validation(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_val_batches=0, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(16, batch_size=8), make_loader(16, batch_size=8))
    assert counter.val_runs == 0
    assert counter.val_batches == 0


def test_sanity_check_runs_num_sanity_val_steps_batches_before_training(make_trainer):
    model = SanityCounter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(model, make_loader(16, batch_size=8), make_loader(40, batch_size=8))
    assert model.sanity_steps == 2


def test_sanity_check_can_be_disabled(make_trainer):
    model = SanityCounter()
    make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(
        model, make_loader(16, batch_size=8), make_loader(40, batch_size=8))
    assert model.sanity_steps == 0


def test_sanity_check_minus_one_runs_the_whole_validation_set(make_trainer):
    model = SanityCounter()
    make_trainer(max_epochs=1, num_sanity_val_steps=-1).fit(
        model, make_loader(16, batch_size=8), make_loader(40, batch_size=8))
    assert model.sanity_steps == 5


def test_sanity_check_never_runs_more_batches_than_limit_val_batches(make_trainer):
    model = SanityCounter()
    make_trainer(max_epochs=1, num_sanity_val_steps=3, limit_val_batches=1).fit(
        model, make_loader(16, batch_size=8), make_loader(40, batch_size=8))
    assert model.sanity_steps == 1


def test_sanity_check_values_are_not_logged(make_trainer):
    trainer = make_trainer(max_steps=1, num_sanity_val_steps=2, limit_val_batches=0)
    trainer.fit(TinyClassifier(), make_loader(16, batch_size=8), make_loader(16, batch_size=8))
    assert "val_loss" not in trainer.callback_metrics


def test_fast_dev_run_runs_one_batch_of_train_and_val(make_trainer):
    counter = Counter()
    model = SanityCounter()
    trainer = make_trainer(fast_dev_run=True, max_epochs=5, callbacks=[counter])
    trainer.fit(model, make_loader(32, batch_size=8), make_loader(32, batch_size=8))
    assert counter.train_batches == 1
    assert counter.val_batches == 1
    assert model.sanity_steps == 0
    assert trainer.global_step == 1


def test_fast_dev_run_n_runs_n_batches(make_trainer):
    counter = Counter()
    trainer = make_trainer(fast_dev_run=3, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(64, batch_size=8), make_loader(64, batch_size=8))
    assert counter.train_batches == 3
    assert counter.val_batches == 3


def test_fast_dev_run_writes_no_files(make_trainer, tmp_path):
    trainer = make_trainer(fast_dev_run=True, logger=True, enable_checkpointing=True,
                           callbacks=[ModelCheckpoint(save_last=True)])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8), make_loader(32, batch_size=8))
    trainer.validate(TinyClassifier(), make_loader(16, batch_size=8))
    assert list(tmp_path.rglob("*")) == []


def test_fast_dev_run_accepts_a_learning_rate_monitor(make_trainer):
    trainer = make_trainer(fast_dev_run=True, logger=True, callbacks=[LearningRateMonitor()])
    trainer.fit(TinyClassifier(), make_loader(16, batch_size=8))
    assert trainer.global_step == 1


def test_on_train_batch_start_returning_minus_one_ends_the_epoch(make_trainer):
    class StopAtTwo(TinyClassifier):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 2 else None

    counter = Counter()
    trainer = make_trainer(max_epochs=2, callbacks=[counter])
    trainer.fit(StopAtTwo(), make_loader(48, batch_size=8))
    assert counter.train_batches == 4
    assert trainer.global_step == 4
    assert trainer.current_epoch == 2


def test_should_stop_from_a_callback_ends_fit_after_that_batch(make_trainer):
    class StopAtStep(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 5:
                trainer.should_stop = True

    trainer = make_trainer(max_epochs=10, callbacks=[StopAtStep()])
    trainer.fit(TinyClassifier(), make_loader(32, batch_size=8))
    assert trainer.global_step == 5


def test_trainer_seed_makes_two_fits_identical(make_trainer):
    def run() -> tuple[list[float], list[torch.Tensor]]:
        losses: list[float] = []

        class Losses(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                losses.append(float(outputs.detach()))

        seed_everything(123)
        model = TinyClassifier()
        loader = make_loader(48, batch_size=8, shuffle=True)
        make_trainer(max_epochs=3, seed=123, callbacks=[Losses()]).fit(model, loader)
        return losses, params_of(model)

    losses_a, params_a = run()
    losses_b, params_b = run()
    assert len(losses_a) == 18
    assert losses_a == losses_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_seed_everything_makes_model_init_repeatable():
    seed_everything(5)
    a = params_of(TinyClassifier())
    seed_everything(5)
    b = params_of(TinyClassifier())
    seed_everything(6)
    c = params_of(TinyClassifier())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_fit_can_be_called_again_and_continues_the_counters(make_trainer):
    model = TinyClassifier()
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, make_loader(32, batch_size=8))
    assert trainer.global_step == 4
    trainer.config.max_epochs = 2
    trainer.fit(model, make_loader(32, batch_size=8))
    assert trainer.global_step == 8
    assert trainer.current_epoch == 2


def test_trainer_works_with_a_fresh_default_trainer(tmp_path):
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(TinyClassifier(), make_loader(16, batch_size=8), make_loader(16, batch_size=8))
    assert trainer.run_dir is not None and trainer.run_dir.parent == tmp_path
    assert (trainer.run_dir / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt"]
