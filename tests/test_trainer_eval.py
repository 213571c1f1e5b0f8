"""validate / test / predict, and where each entry point gets its data (DataModule stages)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_dataset, make_loader
from engine import ConfigError, DataModule, ModuleError


class _Data(DataModule):
    """Records every call the Trainer makes, with the stage it was given."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        self.train_set, self.val_set = make_dataset(32, seed=0), make_dataset(16, seed=1)

    def teardown(self, stage):
        self.calls.append(f"teardown:{stage}")

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_datamodule_setup_and_teardown_get_the_entry_points_stage(make_trainer, entry):
    data = _Data()
    trainer = make_trainer(max_epochs=1)
    getattr(trainer, entry)(TinyClassifier(), datamodule=data)
    assert data.calls == ["prepare_data", f"setup:{entry}", f"teardown:{entry}"]


def test_module_setup_gets_the_stage_too(make_trainer):
    stages = []

    class Recording(TinyClassifier):
        def setup(self, stage):
            stages.append(stage)

    trainer = make_trainer(max_epochs=1)
    model = Recording()
    trainer.fit(model, make_loader(8))
    trainer.validate(model, make_loader(8))
    trainer.test(model, make_loader(8))
    trainer.predict(model, make_loader(8))
    assert stages == ["fit", "validate", "test", "predict"]


def test_fit_with_a_datamodule_uses_its_train_and_val_loaders(make_trainer):
    data = _Data(batch_size=8)
    trainer = make_trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(), datamodule=data)
    assert trainer.global_step == 8
    assert "val_loss" in trainer.callback_metrics
    assert trainer.datamodule is data


def test_dataloaders_and_a_datamodule_together_are_a_config_error(make_trainer):
    with pytest.raises(ConfigError, match="not both"):
        make_trainer(max_epochs=1).fit(TinyClassifier(), make_loader(8), datamodule=_Data())


def test_predict_returns_the_predict_step_outputs_of_every_batch(make_trainer):
    model = TinyClassifier()
    loader = make_loader(20, batch_size=8)
    outputs = make_trainer().predict(model, loader)
    assert [o.shape for o in outputs] == [torch.Size([8]), torch.Size([8]), torch.Size([4])]
    with torch.no_grad():
        expected = model(make_dataset(20).tensors[0]).argmax(dim=1)
    assert torch.equal(torch.cat(outputs), expected)


def test_predict_with_several_dataloaders_returns_a_list_per_dataloader(make_trainer):
    class TwoSets(TinyClassifier):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return dataloader_idx

    outputs = make_trainer().predict(TwoSets(), [make_loader(16), make_loader(8)])
    assert outputs == [[0, 0], [1]]


def test_predict_runs_without_gradients_in_eval_mode(make_trainer):
    seen = []

    class Probe(TinyClassifier):
        def predict_step(self, batch, batch_idx):
            seen.append((torch.is_grad_enabled(), self.training))
            return None

    make_trainer().predict(Probe(), make_loader(8))
    assert seen == [(False, False)]


def test_limit_predict_batches_limits_predict(make_trainer):
    outputs = make_trainer(limit_predict_batches=2).predict(TinyClassifier(), make_loader(40))
    assert len(outputs) == 2


def test_validate_returns_the_epoch_metrics(make_trainer):
    model = TinyClassifier()
    loader = make_loader(16, batch_size=16)
    result = make_trainer().validate(model, loader)
    with torch.no_grad():
        expected = float(model.loss(next(iter(loader))))
    assert result == [{"val_loss": pytest.approx(expected)}]


def test_test_returns_the_epoch_metrics(make_trainer):
    result = make_trainer().test(TinyClassifier(), make_loader(16))
    assert list(result[0]) == ["test_loss"]


def test_validate_runs_the_model_in_eval_mode_without_gradients(make_trainer):
    seen = []

    class Probe(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            seen.append((torch.is_grad_enabled(), self.training))

    make_trainer().validate(Probe(), make_loader(16))
    assert seen == [(False, False), (False, False)]


def test_limit_val_and_test_batches_apply_to_validate_and_test(make_trainer):
    calls = []

    class Count(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            calls.append("val")

        def test_step(self, batch, batch_idx):
            calls.append("test")

    trainer = make_trainer(limit_val_batches=2, limit_test_batches=0.5)
    trainer.validate(Count(), make_loader(48))
    trainer.test(Count(), make_loader(48))
    assert calls == ["val", "val", "test", "test", "test"]


@pytest.mark.parametrize(("entry", "method"), [("validate", "val_dataloader"), ("test", "test_dataloader"),
                                               ("predict", "predict_dataloader")])
def test_an_entry_point_without_data_is_a_module_error_naming_the_method(make_trainer, entry, method):
    with pytest.raises(ModuleError, match=method):
        getattr(make_trainer(), entry)(TinyClassifier())
