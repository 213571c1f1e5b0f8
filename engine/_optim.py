"""Turn whatever ``configure_optimizers`` returned into optimizers and scheduler configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from engine._errors import ModuleError

__all__ = ["LRSchedulerConfig", "parse_optimizers", "clip_gradients", "step_schedulers"]

_SCHEDULER_KEYS = {"scheduler", "interval", "frequency", "monitor", "name", "strict"}


@dataclass
class LRSchedulerConfig:
    """How and when the Trainer steps one scheduler."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    name: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if self.interval not in ("step", "epoch"):
            raise ModuleError(f"lr_scheduler interval={self.interval!r}: use 'step' or 'epoch'")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ModuleError(f"lr_scheduler frequency={self.frequency!r}: use a positive integer")
        if self.reduce_on_plateau and self.monitor is None:
            raise ModuleError(
                "ReduceLROnPlateau needs a metric to watch: return "
                "{'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val/loss'}}"
            )

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _scheduler_config(item: Any) -> LRSchedulerConfig:
    if isinstance(item, Mapping):
        unknown = set(item) - _SCHEDULER_KEYS
        if unknown or "scheduler" not in item:
            raise ModuleError(
                f"lr_scheduler dict has keys {sorted(item)}; it needs 'scheduler' and may have "
                f"{sorted(_SCHEDULER_KEYS - {'scheduler'})}"
            )
        return LRSchedulerConfig(**item)
    if not hasattr(item, "step"):
        raise ModuleError(f"{type(item).__name__} is not an LR scheduler (it has no step())")
    return LRSchedulerConfig(scheduler=item)


def _check_optimizer(opt: Any) -> torch.optim.Optimizer:
    if not isinstance(opt, torch.optim.Optimizer):
        raise ModuleError(
            f"configure_optimizers returned a {type(opt).__name__} where an optimizer was expected; "
            "return torch.optim.Optimizer instances"
        )
    return opt


def _from_dict(d: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, list[LRSchedulerConfig]]:
    if "optimizer" not in d:
        raise ModuleError(f"configure_optimizers returned a dict with keys {sorted(d)}; it needs 'optimizer'")
    unknown = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if unknown:
        raise ModuleError(f"configure_optimizers dict has unknown keys {sorted(unknown)}")
    opt = _check_optimizer(d["optimizer"])
    sched = d.get("lr_scheduler")
    if sched is None:
        return opt, []
    if isinstance(sched, Mapping):
        sched = dict(sched)
        if d.get("monitor") is not None:
            sched.setdefault("monitor", d["monitor"])
        config = _scheduler_config(sched)
    else:
        config = _scheduler_config({"scheduler": sched, "monitor": d.get("monitor")})
    return opt, [config]


def parse_optimizers(result: Any) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Accepts an optimizer, a list, ``(optimizers, schedulers)``, a dict, or a list of dicts."""
    if result is None:
        raise ModuleError(
            "configure_optimizers returned None; return an optimizer, e.g. "
            "torch.optim.AdamW(self.parameters(), lr=1e-3)"
        )
    if isinstance(result, torch.optim.Optimizer):
        return [result], []
    if isinstance(result, Mapping):
        opt, scheds = _from_dict(result)
        return [opt], scheds
    if isinstance(result, Sequence) and not isinstance(result, str):
        items = list(result)
        if len(items) == 2 and all(isinstance(x, Sequence) and not isinstance(x, str) for x in items):
            opts = [_check_optimizer(o) for o in items[0]]
            return opts, [_scheduler_config(s) for s in items[1]]
        if items and all(isinstance(x, Mapping) for x in items):
            pairs = [_from_dict(x) for x in items]
            return [o for o, _ in pairs], [c for _, cs in pairs for c in cs]
        return [_check_optimizer(o) for o in items], []
    raise ModuleError(f"configure_optimizers returned {type(result).__name__}, which the Trainer cannot use")


def clip_gradients(optimizer: torch.optim.Optimizer, value: float, algorithm: str) -> None:
    """Clip the gradients of ``optimizer``'s parameters by total norm or by value."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    else:
        torch.nn.utils.clip_grad_value_(params, value)


def step_schedulers(configs: list[LRSchedulerConfig], interval: str, counter: int,
                    metrics: Callable[[], dict[str, float]]) -> None:
    """Step the schedulers of ``interval`` due at ``counter`` (a step or an epoch count)."""
    for config in configs:
        if config.interval != interval or counter % config.frequency:
            continue
        if not config.reduce_on_plateau:
            config.scheduler.step()
            continue
        values = metrics()
        if config.monitor in values:
            config.scheduler.step(values[config.monitor])
        elif config.strict:
            raise ModuleError(f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; "
                              f"logged metrics: {sorted(values)}")
