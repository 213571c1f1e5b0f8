"""ProgressBar: a live one-line bar on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

from engine.callbacks._base import Callback

__all__ = ["ProgressBar"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


class ProgressBar(Callback):
    """Shows epoch, step/total, it/s, ETA and the metrics logged with ``prog_bar=True``.

    On a terminal the line is redrawn in place at most ``refresh_hz`` times a second;
    when the stream is not a terminal (CI, nohup, a log file) a plain line is written
    every ``plain_interval_s`` seconds and at each epoch end, with no control characters.
    """

    def __init__(self, stream: TextIO | None = None, refresh_hz: float = 4.0,
                 plain_interval_s: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_gap = 1.0 / refresh_hz if self.interactive else plain_interval_s
        self._last_draw = 0.0
        self._rate_t0 = 0.0
        self._rate_batches0 = 0
        self._rate = 0.0
        self._drawn = False

    # -- hooks ---------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._rate_t0 = time.monotonic()
        self._rate_batches0 = trainer.loop.total_batches
        self._last_draw = time.monotonic()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last_draw >= self.min_gap:
            self._draw(trainer, now)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self._draw(trainer, time.monotonic(), final=True)

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        if self._drawn and self.interactive:
            self.stream.write("\n")
            self._drawn = False

    # -- drawing -------------------------------------------------------------------------

    def _update_rate(self, trainer: Any, now: float) -> None:
        elapsed = now - self._rate_t0
        if elapsed <= 0:
            return
        rate = (trainer.loop.total_batches - self._rate_batches0) / elapsed
        self._rate = rate if self._rate == 0 else 0.7 * self._rate + 0.3 * rate
        self._rate_t0, self._rate_batches0 = now, trainer.loop.total_batches

    def _remaining_batches(self, trainer: Any) -> float:
        c = trainer.config
        per_epoch = trainer.num_training_batches
        left: float = math.inf
        if c.max_epochs is not None and math.isfinite(per_epoch):
            left = (c.max_epochs - trainer.current_epoch) * per_epoch - trainer.loop.batches_done
        if c.max_steps is not None:
            left = min(left, (c.max_steps - trainer.global_step) * c.accumulate_grad_batches)
        return max(left, 0.0)

    def _metric_text(self, trainer: Any, metrics: dict[str, float]) -> str:
        return "  ".join(f"{k} {_number(v)}" for k, v in metrics.items())

    def _line(self, trainer: Any) -> str:
        c = trainer.config
        epochs = f"/{c.max_epochs}" if c.max_epochs is not None and not c.defaulted_max_epochs else ""
        per_epoch = trainer.num_training_batches
        total = f"/{int(per_epoch)}" if math.isfinite(per_epoch) else ""
        eta = self._remaining_batches(trainer) / self._rate if self._rate > 0 else math.inf
        parts = [
            f"epoch {trainer.current_epoch}{epochs}",
            f"batch {trainer.loop.batches_done}{total}",
            f"step {trainer.global_step}",
            f"{self._rate:.1f} it/s",
            f"ETA {_duration(eta)}",
        ]
        metrics = self._metric_text(trainer, trainer.progress_bar_metrics)
        return "  ".join(parts) + ("  " + metrics if metrics else "")

    def _draw(self, trainer: Any, now: float, final: bool = False) -> None:
        self._last_draw = now
        self._update_rate(trainer, now)
        self._write(self._line(trainer), final)

    def _write(self, line: str, final: bool) -> None:
        if self.interactive:
            width = shutil.get_terminal_size((120, 24)).columns
            self.stream.write("\r" + line[: width - 1].ljust(width - 1))
            if final:
                self.stream.write("\n")
            self._drawn = not final
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
