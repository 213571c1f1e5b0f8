"""The Module contract: what training_step may return, hyperparameters, manual optimization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import N_CLASSES, N_FEATURES, TinyClassifier, make_loader, params_of
from engine import Module, ModuleError, Trainer


class _Returns(TinyClassifier):
    def __init__(self, make_output) -> None:
        super().__init__()
        self.make_output = make_output

    def training_step(self, batch, batch_idx):
        return self.make_output(self.loss(batch))


@pytest.mark.parametrize(
    ("make_output", "message"),
    [
        (lambda loss: None, "training_step returned None; return the loss tensor"),
        (lambda loss: float(loss.detach()), "training_step returned float; return the loss tensor"),
        (lambda loss: {"logits": loss}, "a dict with a 'loss' tensor"),
        (lambda loss: loss.detach(), "does not require grad; was it computed under torch.no_grad"),
        (lambda loss: loss.expand(3), r"loss of shape \(3,\); reduce it to a scalar"),
    ],
    ids=["none", "float", "dict-without-loss", "detached", "non-scalar"],
)
def test_a_bad_training_step_output_is_a_module_error_saying_what_to_return(make_trainer, make_output, message):
    with pytest.raises(ModuleError, match=message):
        make_trainer(max_steps=1).fit(_Returns(make_output), make_loader(8))


def test_training_step_may_return_a_dict_with_the_loss(make_trainer):
    model = _Returns(lambda loss: {"loss": loss, "extra": 1})
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, make_loader(16))
    assert trainer.global_step == 2


def test_a_one_element_loss_tensor_is_accepted(make_trainer):
    trainer = make_trainer(max_steps=1)
    trainer.fit(_Returns(lambda loss: loss.reshape(1)), make_loader(8))
    assert trainer.global_step == 1


def test_missing_configure_optimizers_is_a_module_error(make_trainer):
    class NoOptimizer(Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(N_FEATURES, N_CLASSES)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.layer(x), y)

    with pytest.raises(ModuleError, match="must define configure_optimizers"):
        make_trainer(max_steps=1).fit(NoOptimizer(), make_loader(8))


def test_missing_training_step_is_a_module_error(make_trainer):
    class NoStep(Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(N_FEATURES, N_CLASSES)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ModuleError, match=r"must define training_step\(self, batch, batch_idx\)"):
        make_trainer(max_steps=1).fit(NoStep(), make_loader(8))


def test_a_plain_nn_module_is_refused_with_a_hint(make_trainer):
    with pytest.raises(ModuleError, match="subclass engine.Module"):
        make_trainer(max_steps=1).fit(torch.nn.Linear(4, 3), make_loader(8))


def test_fit_without_training_data_is_a_module_error(make_trainer):
    with pytest.raises(ModuleError, match="fit needs training data"):
        make_trainer(max_steps=1).fit(TinyClassifier())


def test_the_module_can_provide_its_own_dataloaders(make_trainer):
    class WithData(TinyClassifier):
        def train_dataloader(self):
            return make_loader(24, batch_size=8)

    trainer = make_trainer(max_epochs=1)
    trainer.fit(WithData())
    assert trainer.global_step == 3


def test_trainer_property_before_fit_is_a_module_error():
    with pytest.raises(ModuleError, match="not attached to a Trainer"):
        TinyClassifier().trainer


def test_log_outside_a_trainer_is_ignored():
    model = TinyClassifier()
    model.log("x", 1.0)
    assert model.global_step == 0 and model.current_epoch == 0


def test_module_exposes_the_trainer_counters_during_fit(make_trainer):
    seen = []

    class Watch(TinyClassifier):
        def training_step(self, batch, batch_idx):
            seen.append((self.current_epoch, self.global_step, self.trainer.global_step))
            return super().training_step(batch, batch_idx)

    make_trainer(max_epochs=2).fit(Watch(), make_loader(16))
    assert seen == [(0, 0, 0), (0, 1, 1), (1, 2, 2), (1, 3, 3)]


def test_save_hyperparameters_records_init_arguments():
    class WithArgs(Module):
        def __init__(self, width: int, lr: float = 0.01, *, tag: str = "a", secret: object = None):
            super().__init__()
            self.save_hyperparameters(ignore="secret")

    model = WithArgs(8, tag="b", secret=object())
    assert dict(model.hparams) == {"width": 8, "lr": 0.01, "tag": "b"}
    assert model.hparams.width == 8


def test_save_hyperparameters_with_names_keeps_only_those():
    class WithArgs(Module):
        def __init__(self, width: int, lr: float = 0.01):
            super().__init__()
            self.save_hyperparameters("lr")

    assert dict(WithArgs(8).hparams) == {"lr": 0.01}


def test_save_hyperparameters_with_an_unknown_name_is_a_module_error():
    class WithArgs(Module):
        def __init__(self, width: int):
            super().__init__()
            self.save_hyperparameters("depth")

    with pytest.raises(ModuleError, match="depth"):
        WithArgs(8)


def test_hparams_attribute_error_lists_known_names():
    with pytest.raises(AttributeError, match="known"):
        TinyClassifier().hparams.momentum


class _TwoOptimizers(Module):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a = torch.nn.Linear(N_FEATURES, N_CLASSES)
        self.b = torch.nn.Linear(N_FEATURES, N_CLASSES)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss_a = F.cross_entropy(self.a(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        if batch_idx % 2 == 0:
            loss_b = F.cross_entropy(self.b(x), y)
            opt_b.zero_grad()
            self.manual_backward(loss_b)
            opt_b.step()
            self.steps += 1
        self.log("loss_a", loss_a)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def test_manual_optimization_steps_two_optimizers_from_training_step(make_trainer):
    model = _TwoOptimizers()
    a_before, b_before = params_of(model.a), params_of(model.b)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, make_loader(32))
    assert model.steps == 2
    assert not torch.equal(params_of(model.a)[0], a_before[0])
    assert not torch.equal(params_of(model.b)[0], b_before[0])
    assert "loss_a" in trainer.callback_metrics


def test_manual_optimization_with_one_optimizer_gets_it_unwrapped(make_trainer):
    seen = []

    class One(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            seen.append(type(opt))
            opt.zero_grad()
            self.manual_backward(self.loss(batch))
            opt.step()

    model = One()
    before = params_of(model)
    make_trainer(max_steps=2).fit(model, make_loader(32))
    assert seen == [torch.optim.SGD, torch.optim.SGD]
    assert not torch.equal(params_of(model)[0], before[0])


def test_lr_schedulers_returns_the_configured_scheduler(make_trainer):
    seen = []

    class WithScheduler(TinyClassifier):
        def training_step(self, batch, batch_idx):
            seen.append(self.lr_schedulers())
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]

    make_trainer(max_steps=1).fit(WithScheduler(), make_loader(8))
    assert isinstance(seen[0], torch.optim.lr_scheduler.StepLR)


def test_configure_callbacks_adds_the_modules_callbacks(make_trainer):
    from engine.callbacks import Callback

    calls = []

    class Mark(Callback):
        def on_train_end(self, trainer, module):
            calls.append("end")

    class WithCallbacks(TinyClassifier):
        def configure_callbacks(self):
            return [Mark()]

    make_trainer(max_steps=1).fit(WithCallbacks(), make_loader(8))
    assert calls == ["end"]


def test_module_is_left_on_the_chosen_device_in_train_mode_after_fit(tmp_path):
    model = TinyClassifier()
    trainer = Trainer(max_steps=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                      logger=False, enable_checkpointing=False)
    trainer.fit(model, make_loader(8))
    assert model.device == torch.device("cpu") == trainer.device
    assert model.training
