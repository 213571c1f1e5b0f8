"""Numeric precision: autocast around the forward pass and loss scaling for float16."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from engine._errors import ConfigError

__all__ = ["Precision", "normalize_precision"]

_ALIASES = {
    "32": "32-true", "32-true": "32-true", 32: "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16": "16-mixed", "16-mixed": "16-mixed", 16: "16-mixed",
}


def normalize_precision(value: str | int) -> str:
    try:
        return _ALIASES[value]
    except (KeyError, TypeError):
        raise ConfigError(
            f"precision={value!r} is not supported; use 32 ('32-true'), 'bf16-mixed' or '16-mixed'"
        ) from None


class Precision:
    """Owns autocast and, for '16-mixed', the GradScaler; the loop calls it around each step."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = precision
        self.device = device
        self.autocasts = precision != "32-true"
        self.scaler: torch.amp.GradScaler | None = None
        if precision == "16-mixed":
            if device.type != "cuda":
                raise ConfigError(
                    f"precision='16-mixed' needs a CUDA device (got {device.type}); on CPU use 'bf16-mixed'"
                )
            self.scaler = torch.amp.GradScaler("cuda")
        if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision='bf16-mixed': this GPU has no bfloat16 support; use '16-mixed'")

    def describe(self) -> str:
        return {
            "32-true": "32-bit float",
            "bf16-mixed": f"bfloat16 autocast on {self.device.type}, float32 weights",
            "16-mixed": "float16 autocast with a dynamic loss scaler, float32 weights",
        }[self.name]

    def autocast(self) -> ContextManager[Any]:
        if not self.autocasts:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping or inspecting them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
