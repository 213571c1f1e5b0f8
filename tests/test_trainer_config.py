"""Trainer arguments: each invalid one is a ConfigError that names the field."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import TinyClassifier, make_loader
from engine import ConfigError, Trainer, TraindeckError
from engine.loggers import JSONLinesLogger


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_epochs": -1}, "max_epochs=-1"),
        ({"max_epochs": 0}, "max_epochs=0"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"max_epochs": 1.5}, "max_epochs=1.5"),
        ({"max_time": -5}, "max_time=-5"),
        ({"max_time": "soon"}, "max_time='soon'"),
        ({"val_check_interval": 1.5}, "val_check_interval=1.5"),
        ({"val_check_interval": 0}, "val_check_interval=0"),
        ({"check_val_every_n_epoch": 0}, "check_val_every_n_epoch=0"),
        ({"limit_train_batches": 1.5}, "limit_train_batches=1.5"),
        ({"limit_val_batches": -1}, "limit_val_batches=-1"),
        ({"limit_test_batches": "all"}, "limit_test_batches='all'"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches=0"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val=-1.0"),
        ({"gradient_clip_algorithm": "l2"}, "gradient_clip_algorithm='l2'"),
        ({"num_sanity_val_steps": -2}, "num_sanity_val_steps=-2"),
        ({"log_every_n_steps": 0}, "log_every_n_steps=0"),
        ({"log_every_n_steps": "10"}, "log_every_n_steps='10'"),
        ({"gradient_clip_val": "1.0"}, "gradient_clip_val='1.0'"),
        ({"on_nonfinite_loss": "ignore"}, "on_nonfinite_loss='ignore'"),
        ({"fast_dev_run": -1}, "fast_dev_run=-1"),
        ({"devices": 0}, "devices=0"),
        ({"devices": "two"}, "devices='two'"),
        ({"strategy": "fsdp"}, "strategy='fsdp'"),
        ({"num_nodes": 0}, "num_nodes=0"),
        ({"precision": "64-true"}, "precision='64-true'"),
    ],
)
def test_an_invalid_argument_is_a_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Trainer(**kwargs)


def test_an_unknown_argument_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="unknown argument.*'max_epoch'"):
        Trainer(max_epoch=3)


def test_devices_that_disagree_with_the_launcher_name_both_values(monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="devices=4.*2 processes per node"):
        Trainer(devices=4)


def test_num_nodes_that_disagree_with_the_launcher_name_both_values(monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="num_nodes=2.*1 node"):
        Trainer(devices=2, num_nodes=2)


def test_config_errors_are_value_errors_and_traindeck_errors():
    with pytest.raises(ValueError):
        Trainer(max_epochs=-1)
    with pytest.raises(TraindeckError):
        Trainer(max_epochs=-1)


@pytest.mark.parametrize("devices", ["auto", 1, [0]])
def test_a_single_device_is_accepted(devices):
    assert Trainer(devices=devices).config.devices == devices


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), (1.5, 1.5), (timedelta(minutes=2), 120.0),
                                                ("00:01:00:30", 3630.0), ({"minutes": 1}, 60.0)])
def test_max_time_accepts_the_lightning_forms(value, seconds):
    assert Trainer(max_time=value).config.max_time_s == seconds


def test_an_unknown_accelerator_is_a_config_error_at_fit(make_trainer):
    with pytest.raises(ConfigError, match="accelerator='tpu'"):
        make_trainer(max_steps=1, accelerator="tpu").fit(TinyClassifier(), make_loader(8))


def test_logger_and_loggers_together_are_a_config_error():
    with pytest.raises(ConfigError, match="logger= or loggers="):
        Trainer(logger=JSONLinesLogger(), loggers=[JSONLinesLogger()])


def test_a_logger_that_is_not_a_logger_is_a_config_error(make_trainer):
    with pytest.raises(ConfigError, match="Logger instances"):
        make_trainer(max_steps=1, logger="tensorboard").fit(TinyClassifier(), make_loader(8))


def test_fast_dev_run_overrides_the_loop_limits():
    config = Trainer(fast_dev_run=2, max_epochs=7, num_sanity_val_steps=5).config
    assert (config.max_epochs, config.max_steps, config.num_sanity_val_steps) == (1, 2, 0)
    assert config.limit_train_batches == config.limit_val_batches == 2
