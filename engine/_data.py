"""Finding a stage's dataloaders and how many batches of each the Trainer will use."""

from __future__ import annotations

import math
from typing import Any

from engine._errors import ConfigError, ModuleError

__all__ = ["resolve_loaders", "batch_limit"]

_METHOD = {"fit": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
           "predict": "predict_dataloader"}


def resolve_loaders(stage: str, explicit: Any, datamodule: Any, module: Any) -> list[Any]:
    """Loaders for ``stage`` from, in order: the argument, the DataModule, the Module."""
    if explicit is not None and datamodule is not None:
        raise ConfigError("pass dataloaders or a datamodule, not both")
    source = explicit
    if source is None:
        for owner in (datamodule, module):
            method = getattr(owner, _METHOD[stage], None) if owner is not None else None
            if callable(method):
                source = method()
                if source is not None:
                    break
    if source is None:
        return []
    loaders = list(source) if isinstance(source, (list, tuple)) else [source]
    for loader in loaders:
        if not hasattr(loader, "__iter__"):
            raise ModuleError(f"{_METHOD[stage]} gave a {type(loader).__name__}, which is not iterable")
    return loaders


def _length(loader: Any) -> float:
    try:
        return float(len(loader))
    except TypeError:
        return math.inf


def batch_limit(loader: Any, limit: int | float, name: str) -> float:
    """Batches to draw from ``loader`` given a ``limit_*_batches`` value (inf: until exhausted)."""
    n = _length(loader)
    if isinstance(limit, float):
        if limit == 1.0:
            return n
        if math.isinf(n):
            raise ConfigError(f"{name}={limit} is a fraction, but the dataloader has no length; use an int")
        return float(int(n * limit))
    return min(n, float(limit))
