"""ModelCheckpoint: save checkpoints on a schedule, keep the best k and the last one."""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from engine._announce import log
from engine._errors import ConfigError
from engine.callbacks._base import Callback

__all__ = ["ModelCheckpoint"]

_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Callback):
    """Saves to ``dirpath`` (default ``<run dir>/checkpoints``).

    Without ``monitor`` the newest ``save_top_k`` checkpoints are kept; with it, the best
    ``save_top_k`` by ``mode``. ``save_last`` also points ``last.ckpt`` at every save (a
    hard link, no second write). Saves run in the background; an older file is deleted
    only after the file replacing it is safely on disk, so a valid checkpoint always stays.
    Triggers: ``every_n_train_steps``, ``train_time_interval`` (seconds or timedelta), and
    ``every_n_epochs`` (the default: once per epoch, after validation when there is one).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        train_time_interval: Any = None,
        save_weights_only: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if save_top_k < -1:
            raise ConfigError(f"ModelCheckpoint(save_top_k={save_top_k}): use -1 (all), 0 (none) or k > 0")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"ModelCheckpoint({name}={value!r}): use a non-negative integer")
        from engine._config import parse_duration

        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename or "{epoch}-{step}"
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps or None
        self.train_time_interval = parse_duration(train_time_interval)
        if every_n_epochs is None and self.every_n_train_steps is None and self.train_time_interval is None:
            every_n_epochs = 1
        self.every_n_epochs = every_n_epochs or None
        self.save_weights_only = save_weights_only
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._saved_paths: list[str] = []
        self._failed: list[tuple[str, dict[str, float | None]]] = []
        self._last_saved_step = -1
        self._last_time_save = time.monotonic()

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint[monitor={self.monitor}]"

    # -- hooks ---------------------------------------------------------------------------

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        if self.dirpath is None and trainer.run_dir is not None:
            self.dirpath = trainer.run_dir / "checkpoints"

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._last_time_save = time.monotonic()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step and step % self.every_n_train_steps == 0:
            self._save(trainer)
        elif self.train_time_interval and self._time_due(trainer):
            self._save(trainer)

    def _time_due(self, trainer: Any) -> bool:
        due = time.monotonic() - self._last_time_save >= self.train_time_interval
        return trainer.broadcast(due) if trainer.world_size > 1 else due

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.stage == "fit" and not trainer.sanity_checking and self._epoch_due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not trainer._validation_enabled and self._epoch_due(trainer):
            self._save(trainer)

    def _epoch_due(self, trainer: Any) -> bool:
        return self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- saving and retention ------------------------------------------------------------

    def _save(self, trainer: Any) -> None:
        """Rank 0 decides what to write; every rank joins the save (it gathers per-rank state)."""
        if trainer.global_step == self._last_saved_step or self.dirpath is None or trainer.config.fast_dev_run:
            return
        self._last_saved_step = trainer.global_step
        self._last_time_save = time.monotonic()
        plan = trainer.broadcast(self._plan(trainer) if trainer.is_global_zero else None)
        if plan is None:
            return
        kind, path, score = plan
        if not trainer.is_global_zero:
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        elif kind == "last":
            trainer.save_checkpoint(path, weights_only=self.save_weights_only, background=True,
                                    on_done=self._written_last)
        else:
            dropped = self._record(path, score)
            trainer.save_checkpoint(path, weights_only=self.save_weights_only, background=True,
                                    on_done=functools.partial(self._written, dropped))

    def _plan(self, trainer: Any) -> tuple[str, str, float | None] | None:
        """("ranked" or "last", path, score) of the file to write now, or None."""
        self._forget_failed()
        metrics = trainer._metrics.latest()
        score = self._score(metrics)
        if self.save_top_k != 0 and self._qualifies(score):
            return "ranked", str(self.dirpath / (self._format(trainer, metrics) + ".ckpt")), score
        if self.save_last:
            return "last", str(self.dirpath / "last.ckpt"), None
        return None

    def _written(self, dropped: dict[str, float | None], path: Path, error: BaseException | None) -> None:
        """After a write (on the writer thread): drop superseded files only once the new one is safe."""
        if error is not None:
            self._failed.append((str(path), dropped))
            log.error(f"{error}; training continues and the save is retried at the next trigger")
            return
        for old in dropped:
            Path(old).unlink(missing_ok=True)
        if self.save_last:
            self._link_last(path)

    def _written_last(self, path: Path, error: BaseException | None) -> None:
        if error is not None:
            log.error(f"{error}; training continues")
        else:
            self.last_model_path = str(path)

    def _link_last(self, path: Path) -> None:
        """Point last.ckpt at ``path`` atomically: a hard link, or a copy where links are not allowed."""
        last = path.parent / "last.ckpt"
        tmp = path.parent / f".last.ckpt.{os.getpid()}.link"
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, last)
            self.last_model_path = str(last)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.error(f"could not update {last}: {exc.strerror or exc}; training continues")

    def _forget_failed(self) -> None:
        """Undo the bookkeeping of writes that failed, so the next trigger saves again.

        The files a failed write would have superseded are still on disk: they are booked
        again (newest failure undone first), so retention deletes them in turn later.
        """
        while self._failed:
            path, kept = self._failed.pop()
            self.best_k_models.pop(path, None)
            if path in self._saved_paths:
                self._saved_paths.remove(path)
            if self.monitor is None:
                self._saved_paths[:0] = [p for p in kept if p not in self._saved_paths]
            else:
                for old, score in kept.items():
                    self.best_k_models.setdefault(old, score)  # type: ignore[arg-type]
        if self.monitor is not None and self.best_k_models and self.best_model_path not in self.best_k_models:
            self._pick_best()
        elif self.monitor is None:
            self.best_model_path = self._saved_paths[-1] if self._saved_paths else ""

    def _score(self, metrics: dict[str, float]) -> float | None:
        if self.monitor is None:
            return None
        if self.monitor not in metrics:
            raise ConfigError(
                f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged metrics are "
                f"{sorted(metrics)}. Log it with self.log, or change monitor"
            )
        value = metrics[self.monitor]
        return value if math.isfinite(value) else (math.inf if self.mode == "min" else -math.inf)

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _worst_path(self) -> str:
        pick = max if self.mode == "min" else min
        return pick(self.best_k_models, key=self.best_k_models.__getitem__)

    def _qualifies(self, score: float | None) -> bool:
        if score is None or self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        return self._better(score, self.best_k_models[self._worst_path()])

    def _record(self, path: str, score: float | None) -> dict[str, float | None]:
        """Book ``path`` as saved; returns the files it supersedes with their scores (deleted once it is on disk)."""
        if self.monitor is None:
            if path in self._saved_paths:
                self._saved_paths.remove(path)
            self._saved_paths.append(path)
            dropped: dict[str, float | None] = {}
            while self.save_top_k != -1 and len(self._saved_paths) > self.save_top_k:
                dropped[self._saved_paths.pop(0)] = None
            self.best_model_path = path
            if not self.save_last:
                self.last_model_path = path
            return dropped
        self.best_k_models[path] = score  # type: ignore[assignment]
        dropped = {}
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            worst = self._worst_path()
            dropped[worst] = self.best_k_models.pop(worst)
        self._pick_best()
        if not self.save_last:
            self.last_model_path = path
        return {d: s for d, s in dropped.items() if d != path}

    def _pick_best(self) -> None:
        pick = min if self.mode == "min" else max
        self.best_model_path = pick(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = self.best_k_models[self.best_model_path]

    def _format(self, trainer: Any, metrics: dict[str, float]) -> str:
        values = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}

        def field(match: re.Match[str]) -> str:
            key, fmt = match.group(1), match.group(2)
            if key not in values:
                raise ConfigError(f"ModelCheckpoint(filename={self.filename!r}) uses {{{key}}}, which is "
                                  f"not a logged metric; known: {sorted(values)}")
            text = format(values[key], fmt or ("d" if key in ("epoch", "step") else ".4g"))
            after_equals = match.start() > 0 and self.filename[match.start() - 1] == "="
            return text if after_equals else f"{key.replace('/', '_')}={text}"

        return _FIELD.sub(field, self.filename)

    def candidates(self) -> list[Path]:
        """Checkpoint files to resume from, newest first: last.ckpt, then by modification time."""
        if self.dirpath is None or not self.dirpath.is_dir():
            return []
        files = sorted(self.dirpath.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        last = [p for p in files if p.name == "last.ckpt"]
        return last + [p for p in files if p.name != "last.ckpt"]

    # -- resumable state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "best_k_models": dict(self.best_k_models),
            "last_model_path": self.last_model_path,
            "saved_paths": list(self._saved_paths),
            "dirpath": str(self.dirpath) if self.dirpath else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dirpath") == (str(self.dirpath) if self.dirpath else None):
            self.best_k_models = dict(state["best_k_models"])
            self.best_model_path = state["best_model_path"]
            self._saved_paths = list(state.get("saved_paths", []))
            self.last_model_path = state["last_model_path"]
        self.best_model_score = state["best_model_score"]
