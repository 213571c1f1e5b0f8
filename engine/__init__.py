"""traindeck's training engine: ``from engine import Module, DataModule, Trainer``.

The torch-backed names are imported on first access (PEP 562), so that torch-free
modules such as ``engine._checkpoint_format`` can be used by the CLI without paying
for ``import torch``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from engine._errors import (
    CheckpointError,
    ConfigError,
    MetricError,
    ModuleError,
    NonFiniteLossError,
    SweepError,
    TraindeckError,
)

if TYPE_CHECKING:
    from engine._datamodule import DataModule
    from engine._module import Module
    from engine._seed import seed_everything
    from engine._sweep import sweep, trial_params
    from engine._trainer import Trainer

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataModule",
    "MetricError",
    "Module",
    "ModuleError",
    "NonFiniteLossError",
    "SweepError",
    "TraindeckError",
    "Trainer",
    "seed_everything",
    "sweep",
    "trial_params",
]

_LAZY = {
    "DataModule": "engine._datamodule",
    "Module": "engine._module",
    "Trainer": "engine._trainer",
    "seed_everything": "engine._seed",
    "sweep": "engine._sweep",
    "trial_params": "engine._sweep",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, the dunders and the submodules imported so far; not the helpers used here."""
    own = {n for n, v in globals().items()
           if n.startswith("__") or (isinstance(v, ModuleType) and v.__name__.startswith("engine."))}
    return sorted(own | set(__all__))
