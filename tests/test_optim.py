"""configure_optimizers: the accepted return forms and when the Trainer steps each scheduler."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyClassifier, make_loader
from engine import ModuleError
from engine._optim import parse_optimizers
from engine.callbacks import Callback


def _opt(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _step_lr(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


# -- the return forms -----------------------------------------------------------------


def test_a_single_optimizer():
    opt = _opt()
    assert parse_optimizers(opt) == ([opt], [])


def test_a_list_of_optimizers():
    a, b = _opt(), _opt()
    assert parse_optimizers([a, b]) == ([a, b], [])


def test_optimizers_and_schedulers_tuple_defaults_to_epoch_interval():
    opt = _opt()
    sched = _step_lr(opt)
    opts, configs = parse_optimizers(([opt], [sched]))
    assert opts == [opt]
    assert [(c.scheduler, c.interval, c.frequency, c.monitor) for c in configs] == [(sched, "epoch", 1, None)]


def test_a_dict_with_a_scheduler_config():
    opt = _opt()
    sched = _step_lr(opt)
    opts, configs = parse_optimizers(
        {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 3, "name": "s"}})
    assert opts == [opt]
    assert (configs[0].scheduler, configs[0].interval, configs[0].frequency, configs[0].name) == (sched, "step", 3, "s")


def test_a_dict_with_a_bare_scheduler_and_top_level_monitor():
    opt = _opt()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    _, configs = parse_optimizers({"optimizer": opt, "lr_scheduler": sched, "monitor": "val_loss"})
    assert configs[0].monitor == "val_loss"
    assert configs[0].reduce_on_plateau


def test_a_dict_without_a_scheduler():
    opt = _opt()
    assert parse_optimizers({"optimizer": opt}) == ([opt], [])


def test_a_list_of_dicts():
    a, b = _opt(), _opt()
    sched = _step_lr(b)
    opts, configs = parse_optimizers([{"optimizer": a}, {"optimizer": b, "lr_scheduler": sched}])
    assert opts == [a, b]
    assert [c.scheduler for c in configs] == [sched]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (None, "returned None"),
        ("adam", "returned str"),
        ([torch.nn.Linear(2, 2)], "where an optimizer was expected"),
        ({"lr_scheduler": None}, "needs 'optimizer'"),
        ({"optimizer": "x", "scheduler": None}, "unknown keys"),
    ],
    ids=["none", "string", "not-an-optimizer", "dict-without-optimizer", "dict-unknown-key"],
)
def test_unusable_returns_are_module_errors(result, message):
    with pytest.raises(ModuleError, match=message):
        parse_optimizers(result)


def test_an_unknown_scheduler_interval_is_a_module_error():
    opt = _opt()
    with pytest.raises(ModuleError, match="interval='batch'"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "interval": "batch"}})


def test_an_unknown_scheduler_key_is_a_module_error():
    opt = _opt()
    with pytest.raises(ModuleError, match="it needs 'scheduler'"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "every": 2}})


def test_reduce_lr_on_plateau_without_monitor_is_a_module_error():
    opt = _opt()
    with pytest.raises(ModuleError, match="'monitor'"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)})


# -- what the Trainer does with them --------------------------------------------------


class _Scheduled(TinyClassifier):
    """Returns ``config(optimizer)`` from configure_optimizers; logs a constant ``plateau`` in validation."""

    def __init__(self, config) -> None:
        super().__init__(lr=0.1)
        self.config = config

    def validation_step(self, batch, batch_idx):
        self.log("plateau", 1.0)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return self.config(opt)


class _Lrs(Callback):
    """The learning rate seen at each batch start and each epoch start."""

    def __init__(self) -> None:
        self.per_batch: list[float] = []
        self.per_epoch: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self.per_epoch.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.per_batch.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_a_step_interval_scheduler_steps_after_every_optimizer_step(make_trainer):
    lrs = _Lrs()
    model = _Scheduled(lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "interval": "step"}})
    make_trainer(max_steps=4, callbacks=[lrs]).fit(model, make_loader(32))
    assert lrs.per_batch == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_a_step_interval_scheduler_with_frequency_steps_every_nth_step(make_trainer):
    lrs = _Lrs()
    model = _Scheduled(lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "interval": "step",
                                                                       "frequency": 2}})
    make_trainer(max_steps=6, callbacks=[lrs]).fit(model, make_loader(48))
    assert lrs.per_batch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_a_step_interval_scheduler_counts_accumulated_steps(make_trainer):
    lrs = _Lrs()
    model = _Scheduled(lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "interval": "step"}})
    make_trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[lrs]).fit(model, make_loader(32))
    assert lrs.per_batch == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_an_epoch_interval_scheduler_steps_after_every_epoch(make_trainer):
    lrs = _Lrs()
    trainer = make_trainer(max_epochs=3, callbacks=[lrs])
    trainer.fit(_Scheduled(lambda opt: ([opt], [_step_lr(opt)])), make_loader(16))
    assert lrs.per_epoch == pytest.approx([0.1, 0.05, 0.025])
    assert lrs.per_batch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert trainer.lr_schedulers[0].last_epoch == 3


def test_an_epoch_interval_scheduler_with_frequency_steps_every_nth_epoch(make_trainer):
    lrs = _Lrs()
    model = _Scheduled(lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": _step_lr(opt), "frequency": 2}})
    make_trainer(max_epochs=4, callbacks=[lrs]).fit(model, make_loader(16))
    assert lrs.per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_reduce_lr_on_plateau_reduces_the_lr_when_the_monitored_metric_stalls(make_trainer):
    lrs = _Lrs()

    def config(opt):
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "plateau"}}

    trainer = make_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[lrs])
    trainer.fit(_Scheduled(config), make_loader(16), make_loader(8))
    assert lrs.per_epoch == pytest.approx([0.1, 0.1, 0.05])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)


def test_reduce_lr_on_plateau_with_an_unlogged_monitor_is_a_module_error(make_trainer):
    def config(opt):
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": plateau, "monitor": "val_acc"}

    with pytest.raises(ModuleError, match=r"monitors 'val_acc', which was not logged; logged metrics: .*'plateau'"):
        make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(_Scheduled(config), make_loader(16), make_loader(8))


def test_reduce_lr_on_plateau_without_monitor_fails_before_training(make_trainer):
    model = _Scheduled(lambda opt: {"optimizer": opt,
                                    "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)})
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(ModuleError, match="ReduceLROnPlateau needs a metric"):
        trainer.fit(model, make_loader(16))
    assert trainer.global_step == 0


def test_several_optimizers_with_automatic_optimization_is_a_module_error(make_trainer):
    class Two(TinyClassifier):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(ModuleError, match="automatic_optimization = False"):
        make_trainer(max_steps=1).fit(Two(), make_loader(8))


def test_trainer_exposes_the_optimizers_and_schedulers(make_trainer):
    trainer = make_trainer(max_steps=1)
    trainer.fit(_Scheduled(lambda opt: ([opt], [_step_lr(opt)])), make_loader(8))
    assert [type(o) for o in trainer.optimizers] == [torch.optim.SGD]
    assert [type(s) for s in trainer.lr_schedulers] == [torch.optim.lr_scheduler.StepLR]
