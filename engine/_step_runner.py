"""The module DDP wraps: its forward runs a named Module step, so DDP sees every step as a forward."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["StepRunner"]


class StepRunner(nn.Module):
    """``runner("training_step", batch, idx)`` calls ``module.training_step(batch, idx)``.

    DDP arms its gradient hooks in ``forward``; routing steps through it keeps the user's
    ``training_step`` unchanged while gradients are still all-reduced.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: str, *args: Any) -> Any:
        return getattr(self.module, step)(*args)
