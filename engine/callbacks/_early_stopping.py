"""EarlyStopping: stop fitting when a monitored metric stops improving."""

from __future__ import annotations

import math
from typing import Any

from engine._announce import log
from engine._errors import ConfigError
from engine.callbacks._base import Callback

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Sets ``trainer.should_stop`` after ``patience`` checks without an improvement of ``min_delta``.

    Checks after each validation (or each training epoch when there is no validation).
    With ``check_finite`` a NaN/Inf value stops at once. In a group each rank checks its
    own value; the ranks agree right after the check, so if any rank stops, all stop
    there together.
    """

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, mode: str = "min",
                 check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'")
        if patience < 0:
            raise ConfigError(f"EarlyStopping(patience={patience}) must be >= 0")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.mode = mode
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.wait_count = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopped_epoch = -1
        self.stop_reason = ""

    @property
    def state_key(self) -> str:
        return f"EarlyStopping[monitor={self.monitor}]"

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.stage == "fit" and not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not trainer._validation_enabled:
            self._check(trainer)

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best_score - self.min_delta
        return value > self.best_score + self.min_delta

    def _check(self, trainer: Any) -> None:
        metrics = trainer._metrics.latest()
        if self.monitor not in metrics:
            raise ConfigError(f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged metrics "
                              f"are {sorted(metrics)}")
        value = metrics[self.monitor]
        reason = ""
        sign = 1 if self.mode == "min" else -1
        if self.check_finite and not math.isfinite(value):
            reason = f"{self.monitor} = {value} is not finite"
        elif self.stopping_threshold is not None and sign * (value - self.stopping_threshold) <= 0:
            reason = f"{self.monitor} = {value:.6g} reached the stopping threshold {self.stopping_threshold}"
        elif self.divergence_threshold is not None and sign * (value - self.divergence_threshold) >= 0:
            reason = f"{self.monitor} = {value:.6g} crossed the divergence threshold {self.divergence_threshold}"
        elif self._improved(value):
            self.best_score = value
            self.wait_count = 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                reason = (f"{self.monitor} did not improve for {self.wait_count} checks "
                          f"(best {self.best_score:.6g})")
        if reason:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stop_reason = reason
            log.info(f"early stopping at epoch {trainer.current_epoch}, step {trainer.global_step}: {reason}")

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "best_score": self.best_score,
                "stopped_epoch": self.stopped_epoch, "patience": self.patience}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = state["wait_count"]
        self.best_score = state["best_score"]
        self.stopped_epoch = state["stopped_epoch"]
