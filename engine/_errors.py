"""The one exception tree of traindeck.

    TraindeckError                  anything traindeck raises on purpose
    ├── ConfigError                 a Trainer/callback/logger argument is invalid
    ├── ModuleError                 the user's Module broke a contract (bad step output, no optimizer)
    ├── MetricError                 self.log misuse (conflicting reductions, non-scalar values)
    ├── NonFiniteLossError          the loss became NaN/Inf and on_nonfinite_loss="raise"
    ├── CheckpointError             a checkpoint cannot be written or read
    └── SweepError                  a sweep's space, metric or storage is unusable

Every message says what was wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "TraindeckError",
    "ConfigError",
    "ModuleError",
    "MetricError",
    "NonFiniteLossError",
    "CheckpointError",
    "SweepError",
]


class TraindeckError(Exception):
    """Base class of every error traindeck raises on purpose."""


class ConfigError(TraindeckError, ValueError):
    """An argument to the Trainer, a callback or a logger is invalid."""


class ModuleError(TraindeckError):
    """The user's Module does not follow the contract the Trainer relies on."""


class MetricError(TraindeckError, ValueError):
    """A value passed to ``self.log`` cannot be logged as asked."""


class NonFiniteLossError(TraindeckError, FloatingPointError):
    """The training loss was NaN or infinite."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class CheckpointError(TraindeckError):
    """A checkpoint could not be written, or a file is not a valid checkpoint."""


class SweepError(TraindeckError, ValueError):
    """A sweep cannot run as asked: a bad search space, a metric never logged, an unreachable storage."""
