"""LearningRateMonitor: log each optimizer's learning rate (and optionally momentum, weight decay)."""

from __future__ import annotations

from typing import Any

from engine._errors import ConfigError
from engine.callbacks._base import Callback

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Logs ``lr-<Optimizer>`` (``/pg<i>`` per extra param group) to the loggers.

    ``logging_interval``: "step" (every ``log_every_n_steps`` optimizer steps), "epoch"
    (each epoch start), or None (follow each scheduler's interval; "epoch" without one).
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ConfigError(f"LearningRateMonitor(logging_interval={logging_interval!r}): use 'step', 'epoch' or None")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self._last_step = -1

    def _interval(self, trainer: Any) -> str:
        if self.logging_interval is not None:
            return self.logging_interval
        configs = trainer.lr_scheduler_configs
        return "step" if any(c.interval == "step" for c in configs) else "epoch"

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if not trainer.loggers and not trainer.config.fast_dev_run:
            raise ConfigError("LearningRateMonitor needs a logger; the Trainer has loggers=False")

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self._interval(trainer) == "step" and step != self._last_step \
                and step % trainer.config.log_every_n_steps == 0:
            self._last_step = step
            trainer.log_to_loggers(self.values(trainer), step)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self._interval(trainer) == "epoch":
            trainer.log_to_loggers(self.values(trainer), trainer.global_step)

    def values(self, trainer: Any) -> dict[str, float]:
        """Current values per optimizer and param group, keyed by the names written to loggers."""
        out: dict[str, float] = {}
        names: dict[str, int] = {}
        for opt in trainer.optimizers:
            base = f"lr-{type(opt).__name__}"
            names[base] = names.get(base, 0) + 1
            if names[base] > 1:
                base = f"{base}-{names[base] - 1}"
            for i, group in enumerate(opt.param_groups):
                suffix = f"/pg{i + 1}" if len(opt.param_groups) > 1 else ""
                out[base + suffix] = float(group["lr"])
                if self.log_momentum:
                    momentum = group.get("momentum", group.get("betas", (None,))[0])
                    if momentum is not None:
                        out[f"{base}-momentum{suffix}"] = float(momentum)
                if self.log_weight_decay and "weight_decay" in group:
                    out[f"{base}-weight_decay{suffix}"] = float(group["weight_decay"])
        return out
