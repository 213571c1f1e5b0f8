"""The Trainer's checkpoint path in one place: save, restore, find what to resume from, preemption.

A mixin of ``Trainer`` (it uses the Trainer's loop, module, callbacks and run directory);
what a checkpoint holds is ``engine/_checkpointing.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine._announce import log
from engine._checkpoint_async import OnDone
from engine._checkpoint_format import verify
from engine._checkpoint_io import load_checkpoint
from engine._checkpointing import Resumables, apply_state, collect_state, load_weights
from engine._errors import CheckpointError
from engine._events import append_event
from engine._preemption import PREEMPTED_EXIT_CODE
from engine._run_dir import RESUME_ENV

__all__ = ["TrainerCheckpoints"]


class TrainerCheckpoints:
    """``save_checkpoint``, ``ckpt_path`` resolution and resume, and the exit on preemption."""

    def save_checkpoint(self, path: str | Path, weights_only: bool = False, *, background: bool = False,
                        on_done: OnDone | None = None) -> Path:
        """Write a checkpoint atomically; the previous file at ``path`` survives a crash.

        With ``background=True`` (and ``async_checkpointing`` on) the call blocks only to
        copy the state off the compute path; the write happens on a background thread and
        ``on_done(path, error)`` is called there when it ends. Pending losses are checked
        first, so with on_nonfinite_loss="raise" weights from a NaN/Inf step are never written.
        Every rank must call it (each contributes its RNG state); only rank 0 writes.
        """
        path = Path(path)
        self._publisher.check_losses()
        state = collect_state(self._resumables(), weights_only, self._hooks)
        if not self.is_global_zero:
            return path
        summary = {"step": self.global_step, "epoch": self.current_epoch, "batches_done": self.loop.batches_done,
                   "world_size": self.world_size, "metrics": self._metrics.latest()}
        self._saver.run_dir = self.run_dir
        return self._saver.save(state, path, summary, background=background and self.config.async_checkpointing,
                                on_done=on_done)

    def wait_for_checkpoints(self) -> None:
        """Block until the background checkpoint write in flight (if any) is on disk."""
        self._saver.wait()

    def _resumables(self) -> Resumables:
        return Resumables(self.module, self.optimizers, self.lr_scheduler_configs, self._precision, self.callbacks,
                          self.loggers, self.datamodule, self.loop, self._metrics, self._data_seed,
                          self.world_size, self.global_rank)

    def _restore(self, ckpt_path: str | Path, weights_only: bool = False) -> dict[str, Any] | None:
        """Load a checkpoint into the module (and, for fit, everything else); returns its RNG state."""
        self.wait_for_checkpoints()
        path = self._resolve_ckpt_path(ckpt_path)
        state = load_checkpoint(path)
        if weights_only:
            load_weights(self.module, state, path)
            if self.is_global_zero:
                log.info(f"loaded weights from {path}")
            return None
        parts = self._resumables()
        rng = apply_state(parts, state, path, self._hooks)
        self._data_seed = parts.data_seed
        self._metrics.step = self.loop.global_step
        if self.is_global_zero:
            log.info(f"resuming from {path} at epoch {self.loop.epoch}, step {self.loop.global_step}, "
                     f"batch {self.loop.batches_done} of the epoch")
            append_event(self.run_dir, "resumed", path=str(path), step=self.loop.global_step)
        return rng

    def _resolve_ckpt_path(self, ckpt_path: str | Path) -> Path:
        """A file path for ``ckpt_path``; "last" falls back to the newest valid checkpoint."""
        if ckpt_path not in ("last", "best"):
            return Path(ckpt_path)
        callback = self.checkpoint_callback
        if ckpt_path == "best":
            best = callback.best_model_path if callback is not None else ""
            if not best:
                raise CheckpointError("ckpt_path='best': no best checkpoint is known for this run "
                                      "(it needs a ModelCheckpoint with monitor=...); pass a file path instead")
            return Path(best)
        candidates = self._resume_candidates()
        for i, candidate in enumerate(candidates):
            valid, reason = verify(candidate)
            if valid:
                if i and self.is_global_zero:
                    log.warning(f"ckpt_path='last': using {candidate}, the newest valid checkpoint")
                return candidate
            if self.is_global_zero:
                log.warning(f"ckpt_path='last': skipping {candidate}: {reason}")
        raise CheckpointError("ckpt_path='last': no valid checkpoint was found in "
                              f"{callback.dirpath if callback is not None else 'this run'}; pass a file path")

    def _resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first (last.ckpt first), from ModelCheckpoint or the run's directory."""
        callback = self.checkpoint_callback
        if callback is not None:
            return callback.candidates()
        directory = self._checkpoint_dir()
        files = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p for p in files if p.name == "last.ckpt"] + [p for p in files if p.name != "last.ckpt"]

    def _restart_checkpoint(self) -> str | None:
        """After a group restart (--max-restarts) or `traindeck resume`, continue from the newest valid checkpoint."""
        restart = self._launch.restart_count
        has_one = any(verify(p)[0] for p in self._resume_candidates())
        if restart == 0:
            if os.environ.get(RESUME_ENV) and self.is_global_zero:
                log.info("resuming this run from its last valid checkpoint" if has_one
                         else "resume asked for, but this run has no valid checkpoint: starting over")
            return "last" if os.environ.get(RESUME_ENV) and has_one else None
        if self.is_global_zero:
            log.warning(f"group restart {restart}: " + ("resuming from the last valid checkpoint" if has_one
                                                        else "no valid checkpoint yet, starting over"))
            append_event(self.run_dir, "restarted", restart=restart, resumed=has_one)
        return "last" if has_one else None

    def _exit_preempted(self) -> None:
        """Save on a preemption signal, record it, and exit with PREEMPTED_EXIT_CODE."""
        signal_name = self._preemption.received
        path = self.save_checkpoint(self._checkpoint_dir() / "last.ckpt")
        if self.is_global_zero:
            message = f"preempted by {signal_name}, checkpoint at step {self.global_step}: {path}"
            log.warning(message + f"; exiting with status {PREEMPTED_EXIT_CODE}")
            append_event(self.run_dir, "preempted", signal=signal_name, step=self.global_step, path=str(path))
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def save_command_checkpoint(self, on_done: OnDone) -> Path:
        """Checkpoint now, on a user's command: ``step=S-command.ckpt`` beside the other checkpoints."""
        return self.save_checkpoint(self._checkpoint_dir() / f"step={self.global_step}-command.ckpt",
                                    background=True, on_done=on_done)

    def _checkpoint_dir(self) -> Path:
        directory = self.checkpoint_callback.dirpath if self.checkpoint_callback is not None else None
        return Path(directory or (self.run_dir or Path(self.config.default_root_dir)) / "checkpoints")
