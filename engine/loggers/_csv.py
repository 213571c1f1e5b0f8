"""A logger writing metrics to a wide ``metrics.csv`` and hyperparameters to ``hparams.json``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .._errors import ConfigError, MetricError
from ._base import Logger
from ._jsonl import to_jsonable

__all__ = ["CSVLogger"]

_STEP = "step"


class CSVLogger(Logger):
    """Write one ``metrics.csv`` row per ``log_metrics`` call, with columns ``step`` then metric names.

    Rows are buffered and written every ``flush_every`` calls, on ``flush()`` and on
    ``finalize()``. A metric name not yet in the header widens it: the file is rewritten
    (streamed, then atomically replaced) and earlier rows get empty cells in the new
    columns. An existing ``metrics.csv`` is continued, not overwritten; after
    ``load_state_dict`` the rows logged past the restored step are dropped first.
    """

    name = "csv"

    def __init__(self, save_dir: str | Path | None = None, flush_every: int = 100) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ConfigError(
                f"CSVLogger(flush_every={flush_every!r}) must be a positive int: the number "
                "of log_metrics calls buffered before rows are written."
            )
        self._save_dir = Path(save_dir) if save_dir is not None else None
        self._dir = self._save_dir
        self._flush_every = flush_every
        self._pending: list[dict[str, Any]] = []
        self._header: list[str] | None = None
        self._hparams: dict[str, Any] = {}
        self._last_step: int | None = None
        self._resume_step: int | None = None

    def bind(self, run_dir: Path) -> None:
        """Default the output directory to ``run_dir / "csv"``."""
        if self._save_dir is None and self._dir != Path(run_dir) / "csv":
            self._dir = Path(run_dir) / "csv"
            self._header = None

    @property
    def log_dir(self) -> Path | None:
        return self._dir

    @property
    def metrics_path(self) -> Path:
        """The ``metrics.csv`` file; raises ConfigError before a directory is known."""
        return self._require_dir() / "metrics.csv"

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self._hparams.update(to_jsonable(params))
        path = self._require_dir() / "hparams.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self._hparams, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._require_dir()
        if _STEP in metrics:
            raise MetricError(
                f"CSVLogger cannot log a metric named {_STEP!r}: it is the step column. "
                "Rename the metric."
            )
        row: dict[str, Any] = {_STEP: int(step)}
        row.update((str(name), float(value)) for name, value in metrics.items())
        self._pending.append(row)
        self._last_step = row[_STEP]
        if len(self._pending) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.metrics_path
        if self._header is None:
            self._header = _read_header(path)
        header = _widen(self._header or [_STEP], self._pending)
        if header != self._header or self._resume_step is not None:
            _rewrite(path, header, self._pending, self._resume_step)
        else:
            _append(path, header, self._pending)
        self._header = header
        self._resume_step = None
        self._pending.clear()

    def finalize(self, status: str, final_metrics: Mapping[str, float]) -> None:
        self.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Remember the checkpoint's step so rows logged after it are dropped on the next write."""
        self._last_step = self._resume_step = state.get("step")

    def _require_dir(self) -> Path:
        if self._dir is None:
            raise ConfigError(
                "CSVLogger has no directory: pass save_dir=... or let the Trainer call "
                "bind(run_dir) before logging."
            )
        return self._dir


def _read_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


def _widen(header: list[str], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen = dict.fromkeys(header)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _append(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=header).writerows(rows)


def _rewrite(path: Path, header: list[str], rows: list[dict[str, Any]], max_step: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        if path.exists():
            with open(path, newline="", encoding="utf-8") as old:
                for old_row in csv.DictReader(old):
                    if max_step is None or _step_of(old_row) <= max_step:
                        writer.writerow(old_row)
        writer.writerows(rows)
    os.replace(tmp, path)


def _step_of(row: Mapping[str, str]) -> float:
    try:
        return float(row.get(_STEP) or "nan")
    except ValueError:
        return float("nan")
