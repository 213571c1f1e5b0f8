"""The interface every experiment logger implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

__all__ = ["Logger"]


class Logger:
    """Receives materialised metrics (plain floats) from rank 0 of the Trainer.

    The Trainer calls, in order: ``bind(run_dir)`` once before anything is written,
    ``log_hyperparams`` once at fit start, ``log_metrics`` many times (batched, never on
    the training step's hot path), optionally ``log_graph``, then ``finalize(status,
    final_metrics)`` exactly once. A logger given no directory writes under ``run_dir``.
    """

    name: str = "logger"

    def bind(self, run_dir: Path) -> None:
        """Choose the output directory (``run_dir / <subdir>`` unless the user gave one)."""

    @property
    def log_dir(self) -> Path | None:
        """Where this logger writes, once bound."""
        return None

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar values for one global step."""
        raise NotImplementedError

    def log_graph(self, model: Any, example_input: Any) -> None:
        """Record the model graph, where the logger supports it."""

    def flush(self) -> None:
        """Push buffered records to disk."""

    def finalize(self, status: str, final_metrics: Mapping[str, float]) -> None:
        """Close files; ``status`` is "success", "failed" or "interrupted"."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
