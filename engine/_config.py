"""Trainer settings as one validated dataclass; each error names the field and the fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine._errors import ConfigError
from engine._precision import normalize_precision

__all__ = ["TrainerConfig", "parse_duration"]

_NONFINITE = ("raise", "warn", "skip")
_STRATEGIES = ("auto", "single_device", "ddp", "ddp_find_unused_parameters_true")


def parse_duration(value: Any) -> float | None:
    """Seconds from a timedelta, a number of seconds, "DD:HH:MM:SS" or a dict of timedelta kwargs."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, dict):
        seconds = timedelta(**value).total_seconds()
    elif isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value):
        d, h, m, s = (int(x) for x in value.split(":"))
        seconds = timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    else:
        raise ConfigError(f"max_time={value!r}: use seconds, a timedelta, or 'DD:HH:MM:SS'")
    if seconds <= 0:
        raise ConfigError(f"max_time={value!r} must be positive")
    return seconds


def _limit(name: str, value: int | float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r}: use a number of batches (int) or a fraction (float in [0, 1])")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value!r}: a fraction must be within [0.0, 1.0]; an int counts batches")
    if value < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
    return value


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}={value!r}: use a positive integer or None")


@dataclass
class TrainerConfig:
    max_epochs: int | None = None
    max_steps: int | None = None
    max_time: Any = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    precision: str | int = "32-true"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    process_group_timeout_s: float = 1800.0
    max_restarts: int = 0
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    limit_predict_batches: int | float = 1.0
    fast_dev_run: bool | int = False
    num_sanity_val_steps: int = 2
    seed: int | None = None
    deterministic: bool = False
    default_root_dir: str | Path = "runs"
    name: str | None = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    on_nonfinite_loss: str = "raise"
    async_checkpointing: bool = True
    preemption_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")

    def __post_init__(self) -> None:
        _positive_or_none("max_epochs", self.max_epochs)
        _positive_or_none("max_steps", self.max_steps)
        _positive_or_none("check_val_every_n_epoch", self.check_val_every_n_epoch)
        self.max_time_s = parse_duration(self.max_time)
        self.precision = normalize_precision(self.precision)
        if isinstance(self.accumulate_grad_batches, bool) or not isinstance(self.accumulate_grad_batches, int) \
                or self.accumulate_grad_batches < 1:
            raise ConfigError(f"accumulate_grad_batches={self.accumulate_grad_batches!r}: use an integer >= 1")
        clip = self.gradient_clip_val
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
            raise ConfigError(f"gradient_clip_val={clip!r} must be a positive number (or None for no clipping)")
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise ConfigError(f"gradient_clip_algorithm={self.gradient_clip_algorithm!r}: use 'norm' or 'value'")
        vci = self.val_check_interval
        if isinstance(vci, bool) or not isinstance(vci, (int, float)) or vci <= 0 \
                or (isinstance(vci, float) and vci > 1.0):
            raise ConfigError(
                f"val_check_interval={vci!r}: a float in (0, 1] is a fraction of the epoch, an int counts batches"
            )
        for stage in ("train", "val", "test", "predict"):
            _limit(f"limit_{stage}_batches", getattr(self, f"limit_{stage}_batches"))
        if isinstance(self.fast_dev_run, bool):
            self.fast_dev_run = int(self.fast_dev_run)
        elif not isinstance(self.fast_dev_run, int) or self.fast_dev_run < 0:
            raise ConfigError(f"fast_dev_run={self.fast_dev_run!r}: use True/False or a number of batches")
        if not isinstance(self.num_sanity_val_steps, int) or self.num_sanity_val_steps < -1:
            raise ConfigError(f"num_sanity_val_steps={self.num_sanity_val_steps!r}: use an int >= 0, or -1 for all")
        if isinstance(self.log_every_n_steps, bool) or not isinstance(self.log_every_n_steps, int) \
                or self.log_every_n_steps < 1:
            raise ConfigError(f"log_every_n_steps={self.log_every_n_steps!r} must be an integer >= 1")
        if self.on_nonfinite_loss not in _NONFINITE:
            raise ConfigError(f"on_nonfinite_loss={self.on_nonfinite_loss!r}: use one of {list(_NONFINITE)}")
        devices = self.devices
        if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
                or (isinstance(devices, list) and devices and all(isinstance(d, int) for d in devices))):
            raise ConfigError(f"devices={devices!r}: use 'auto', a number of devices (>= 1) or a list of indices")
        if self.strategy not in _STRATEGIES:
            raise ConfigError(f"strategy={self.strategy!r}: use one of {list(_STRATEGIES)}")
        if isinstance(self.num_nodes, bool) or not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ConfigError(f"num_nodes={self.num_nodes!r}: use a positive integer")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"max_restarts={self.max_restarts!r}: use an integer >= 0")
        if not isinstance(self.process_group_timeout_s, (int, float)) or self.process_group_timeout_s <= 0:
            raise ConfigError(f"process_group_timeout_s={self.process_group_timeout_s!r} must be positive")
        if self.fast_dev_run:
            n = self.fast_dev_run
            self.max_epochs, self.max_steps, self.num_sanity_val_steps = 1, n, 0
            self.val_check_interval = 1.0
            self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
        if self.max_epochs is None and self.max_steps is None and self.max_time_s is None:
            self.max_epochs = 1000
            self.defaulted_max_epochs = True
        else:
            self.defaulted_max_epochs = False

    @property
    def devices_per_node(self) -> int | None:
        """How many processes per node the user asked for (None: follow the launcher)."""
        if self.devices == "auto":
            return None
        return len(self.devices) if isinstance(self.devices, list) else int(self.devices)
