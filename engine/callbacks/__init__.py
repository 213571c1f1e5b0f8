"""Callbacks: hooks into the Trainer's loops (order in docs/hooks.md)."""

from engine.callbacks._base import Callback
from engine.callbacks._early_stopping import EarlyStopping
from engine.callbacks._lr_monitor import LearningRateMonitor
from engine.callbacks._model_checkpoint import ModelCheckpoint
from engine.callbacks._progress import ProgressBar

__all__ = ["Callback", "EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ProgressBar"]
