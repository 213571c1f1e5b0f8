"""Plain-words messages to the console: start-up summary, warnings, automatic actions."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["log", "start_summary", "fit_summary"]

log = logging.getLogger("traindeck")


def _install_console_handler() -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[traindeck] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


_install_console_handler()


def start_summary(config: Any, device: Any, device_reason: str, precision: str, module: Any,
                  run_dir: Path | None) -> list[str]:
    """What every entry point chose on its own: device, precision, seeding, the model's size, where files go."""
    n_params = sum(p.numel() for p in module.parameters())
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    lines = [f"device: {device} ({device_reason})", f"precision: {precision}"]
    if config.seed is not None:
        lines.append(f"seed: {config.seed} (python, numpy and torch seeded)")
    if config.deterministic:
        lines.append("deterministic algorithms: on (torch.use_deterministic_algorithms)")
    lines.append(f"model: {type(module).__name__}, {n_params:,} parameters ({n_train:,} trainable)")
    if run_dir is not None:
        lines.append(f"run directory: {run_dir}")
    return lines


def fit_summary(config: Any, world_size: int, device: Any, loggers: list[Any]) -> list[str]:
    """What fit does on its own: the process group, stopping rule, accumulation, where metrics go."""
    lines = []
    if world_size > 1:
        backend = "NCCL" if device.type == "cuda" else "gloo"
        lines.append(f"distributed: {world_size} processes, DDP over {backend}; each rank trains on its own "
                     "shard of every epoch")
    if config.fast_dev_run:
        lines.append(f"fast_dev_run: {config.fast_dev_run} batch(es) per stage; loggers and checkpoints are off")
    elif config.defaulted_max_epochs:
        lines.append("no max_epochs, max_steps or max_time given: training stops after 1000 epochs")
    if config.accumulate_grad_batches > 1:
        lines.append(f"gradients accumulated over {config.accumulate_grad_batches} batches per optimizer step")
    if loggers:
        lines.append("logging to: " + ", ".join(str(lg.log_dir) for lg in loggers))
    return lines
