"""The Trainer's own progress counters: the loop part of every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LoopState"]


@dataclass
class LoopState:
    """Where training stands: epoch, optimizer steps, batches consumed.

    ``global_step`` counts optimizer steps (not batches). ``batches_done`` counts the
    batches consumed in the current epoch and ``accumulated`` those whose gradients wait
    for the next optimizer step; ``epoch_finished`` is set once an epoch ran to its end,
    so a checkpoint saved at epoch end resumes at the next epoch.
    """

    epoch: int = 0
    global_step: int = 0
    batches_done: int = 0
    total_batches: int = 0
    accumulated: int = 0
    epoch_finished: bool = False

    def batch_done(self, batch_idx: int) -> None:
        self.batches_done = batch_idx + 1
        self.total_batches += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = 0
        self.epoch_finished = False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        if self.epoch_finished:
            self.next_epoch()
