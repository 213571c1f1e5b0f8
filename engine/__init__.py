"""traindeck's training engine: ``from engine import Module, DataModule, Trainer``."""

from engine._datamodule import DataModule
from engine._errors import (
    CheckpointError,
    ConfigError,
    MetricError,
    ModuleError,
    NonFiniteLossError,
    TraindeckError,
)
from engine._module import Module
from engine._seed import seed_everything
from engine._trainer import Trainer

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataModule",
    "MetricError",
    "Module",
    "ModuleError",
    "NonFiniteLossError",
    "TraindeckError",
    "Trainer",
    "seed_everything",
]
