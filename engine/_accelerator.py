"""Choose the device a single process trains on, and move batches there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine._errors import ConfigError

__all__ = ["DeviceChoice", "choose_device", "move_to_device"]

_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def choose_device(accelerator: str, devices: int | str | list[int], local_rank: int = 0) -> DeviceChoice:
    """The device for this process; explains the choice in words for the start-up summary."""
    if accelerator not in _ACCELERATORS:
        raise ConfigError(f"accelerator={accelerator!r} is not one of {list(_ACCELERATORS)}")
    index = local_rank
    if isinstance(devices, list):
        if not devices or not all(isinstance(d, int) and d >= 0 for d in devices):
            raise ConfigError(f"devices={devices!r}: a list must hold device indices like [0] or [0, 1]")
        index = devices[local_rank]
    if accelerator == "auto":
        if torch.cuda.is_available():
            accelerator, reason = "cuda", "CUDA is available"
        elif _mps_available():
            accelerator, reason = "mps", "Apple MPS is available"
        else:
            accelerator, reason = "cpu", "no CUDA or MPS device was found"
    else:
        reason = f"accelerator={accelerator!r} was asked for"
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator={accelerator!r} but CUDA is not available here; use 'cpu' or 'auto'")
        if index >= torch.cuda.device_count():
            raise ConfigError(f"CUDA device {index} requested but only {torch.cuda.device_count()} visible")
        return DeviceChoice(torch.device("cuda", index), reason)
    if accelerator == "mps":
        if not _mps_available():
            raise ConfigError("accelerator='mps' but MPS is not available here; use 'cpu' or 'auto'")
        return DeviceChoice(torch.device("mps"), reason)
    return DeviceChoice(torch.device("cpu"), reason)


_CPU = torch.device("cpu")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Copy every tensor inside ``batch`` (nested lists/tuples/dicts) to ``device``.

    It runs on every batch: a list or tuple's tensors are checked in place rather than
    through a call each, and on CPU with ``is_cpu`` (``tensor.device`` builds an object).
    """
    cpu = device == _CPU
    if isinstance(batch, torch.Tensor):
        there = batch.is_cpu if cpu else batch.device == device
        return batch if there else batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)((k, move_to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        moved = [v if isinstance(v, torch.Tensor) and (v.is_cpu if cpu else v.device == device)
                 else move_to_device(v, device) for v in batch]
        return moved if type(batch) is list else type(batch)(moved)
    return batch
