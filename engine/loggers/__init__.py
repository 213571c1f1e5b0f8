"""Experiment loggers: TensorBoard event files, a wide CSV and a JSON-lines metrics stream."""

from ._base import Logger
from ._csv import CSVLogger
from ._jsonl import JSONLinesLogger
from ._tensorboard import TensorBoardLogger

__all__ = ["Logger", "TensorBoardLogger", "CSVLogger", "JSONLinesLogger"]
