"""The checkpoint path: what a checkpoint holds, how it is written, how a run is put back from it.

``collect_state`` and ``apply_state`` are the whole answer to "what is in a checkpoint";
``docs/checkpoints.md`` describes each part. The Trainer hands the parts in as a
``Resumables``; nothing here holds the Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine._checkpoint_async import AsyncCheckpointWriter, OnDone
from engine._checkpoint_io import check_compatible, save_checkpoint
from engine._distributed import all_gather_object
from engine._errors import CheckpointError
from engine._events import append_event
from engine._rng import capture_rng

__all__ = ["Resumables", "collect_state", "apply_state", "load_weights", "CheckpointSaver"]


@dataclass
class Resumables:
    """Every stateful part of a run that a checkpoint saves and restores."""

    module: Any
    optimizers: list[Any]
    scheduler_configs: list[Any]
    precision: Any
    callbacks: list[Any]
    loggers: list[Any]
    datamodule: Any
    loop: Any
    metrics: Any
    data_seed: int | None
    world_size: int
    rank: int


def collect_state(parts: Resumables, weights_only: bool, hooks: Any) -> dict[str, Any]:
    """Everything needed to continue bit-for-bit; per-rank parts (RNG, pending gradients) from every rank."""
    module = parts.module
    state: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "tunables": dict(module.tunables),
        "loop": parts.loop.state_dict(),
        "world_size": parts.world_size,
    }
    if not weights_only:
        state["optimizers"] = [opt.state_dict() for opt in parts.optimizers]
        state["lr_schedulers"] = [c.scheduler.state_dict() for c in parts.scheduler_configs]
        state["precision"] = parts.precision.state_dict()
        state["callbacks"] = {cb.state_key: cb.state_dict() for cb in parts.callbacks}
        state["loggers"] = [logger.state_dict() for logger in parts.loggers]
        state["metrics"] = parts.metrics.state_dict()
        state["data"] = {"seed": parts.data_seed}
        state["rng"] = all_gather_object(capture_rng())
        if parts.loop.accumulated:
            state["grads"] = all_gather_object([p.grad for p in module.parameters()])
        if parts.datamodule is not None:
            state["datamodule"] = parts.datamodule.state_dict()
    module.on_save_checkpoint(state)
    hooks.callbacks("on_save_checkpoint", state)
    return state


def load_weights(module: Any, state: dict[str, Any], path: Path) -> None:
    """The module's weights only; an incompatible file is refused before the module is touched."""
    check_compatible(module, state["state_dict"], path)
    module.load_state_dict(state["state_dict"])
    module.on_load_checkpoint(state)


def apply_state(parts: Resumables, state: dict[str, Any], path: Path, hooks: Any) -> dict[str, Any]:
    """Put every part back as ``collect_state`` saw it; returns this rank's RNG state to restore last."""
    saved_world = state.get("world_size", 1)
    if saved_world != parts.world_size:
        raise CheckpointError(f"checkpoint {path} was saved by {saved_world} processes but this run has "
                              f"{parts.world_size}; resume with the same number of devices")
    saved = state.get("optimizers", [])
    if len(saved) != len(parts.optimizers):
        raise CheckpointError(f"checkpoint {path} holds {len(saved)} optimizer states but the module "
                              f"configures {len(parts.optimizers)}")
    load_weights(parts.module, state, path)
    parts.module.tunables.update(state.get("tunables", {}))
    for opt, opt_state in zip(parts.optimizers, saved):
        opt.load_state_dict(opt_state)
    for config, sched_state in zip(parts.scheduler_configs, state.get("lr_schedulers", [])):
        config.scheduler.load_state_dict(sched_state)
    parts.precision.load_state_dict(state.get("precision", {}))
    for cb in parts.callbacks:
        if cb.state_key in state.get("callbacks", {}):
            cb.load_state_dict(state["callbacks"][cb.state_key])
    hooks.callbacks("on_load_checkpoint", state)
    for logger, logger_state in zip(parts.loggers, state.get("loggers", [])):
        logger.load_state_dict(logger_state)
    if parts.datamodule is not None and "datamodule" in state:
        parts.datamodule.load_state_dict(state["datamodule"])
    grads = state["grads"][parts.rank] if "grads" in state else []
    for param, grad in zip(parts.module.parameters(), grads):
        param.grad = grad.to(param.device) if grad is not None else None
    parts.loop.load_state_dict(state["loop"])
    parts.metrics.load_state_dict(state.get("metrics", {}))
    parts.data_seed = state.get("data", {}).get("seed")
    return state["rng"][parts.rank]


class CheckpointSaver:
    """Writes checkpoints (in the background when asked) and records each outcome in the event log."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self._writer: AsyncCheckpointWriter | None = None

    def save(self, state: dict[str, Any], path: Path, summary: dict[str, Any], *, background: bool,
             on_done: OnDone | None) -> Path:
        done = self._recorded(on_done, summary)
        if background:
            if self._writer is None:
                self._writer = AsyncCheckpointWriter()
            self._writer.save(state, path, summary, done)
            return path
        self.wait()
        error: BaseException | None = None
        try:
            save_checkpoint(state, path, summary)
        except CheckpointError as exc:
            error = exc
        done(path, error)
        if error is not None and on_done is None:
            raise error
        return path

    def wait(self) -> None:
        """Block until the background write in flight (if any) is on disk."""
        if self._writer is not None:
            self._writer.wait()

    def _recorded(self, on_done: OnDone | None, summary: dict[str, Any]) -> OnDone:
        run_dir, step, epoch = self.run_dir, summary["step"], summary["epoch"]

        def done(path: Path, error: BaseException | None) -> None:
            if error is None:
                append_event(run_dir, "checkpoint", path=str(path), step=step, epoch=epoch)
            else:
                append_event(run_dir, "checkpoint_failed", path=str(path), step=step, error=str(error))
            if on_done is not None:
                on_done(path, error)

        return done
