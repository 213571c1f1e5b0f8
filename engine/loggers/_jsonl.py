"""A logger appending one JSON object per ``log_metrics`` call to a ``.jsonl`` file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any, Mapping

from .._errors import ConfigError
from ._base import Logger

__all__ = ["JSONLinesLogger"]


def encode_float(value: float) -> float | str:
    """Return ``value``, or "nan"/"inf"/"-inf" for non-finite values, which JSON cannot hold."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON types: mappings, lists, numbers, strings, None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return to_jsonable(value.item())
    return str(value)


class JSONLinesLogger(Logger):
    """Append ``{"step": int, "time": unix_seconds, "metrics": {name: value}}`` lines.

    The file is opened in append mode and line-buffered, so a resumed run continues the
    same file and a reader tailing it only ever sees whole lines; after a resume, steps
    logged past the checkpoint appear twice and the later line wins. Metric values are
    JSON numbers, except NaN and infinities, which are written as the strings "nan",
    "inf" and "-inf" (strict JSON has no literal for them); ``float(value)`` reads
    either form back.
    """

    name = "jsonl"

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._file: IO[str] | None = None

    def bind(self, run_dir: Path) -> None:
        """Default the output file to ``run_dir / "metrics.jsonl"``."""
        if self._path is None:
            self._path = Path(run_dir) / "metrics.jsonl"

    @property
    def path(self) -> Path | None:
        """The ``.jsonl`` file this logger appends to, once known."""
        return self._path

    @property
    def log_dir(self) -> Path | None:
        return self._path.parent if self._path is not None else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        record = {
            "step": int(step),
            "time": time.time(),
            "metrics": {str(k): encode_float(float(v)) for k, v in metrics.items()},
        }
        self._open().write(json.dumps(record, allow_nan=False) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def finalize(self, status: str, final_metrics: Mapping[str, float]) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> IO[str]:
        if self._file is None:
            if self._path is None:
                raise ConfigError(
                    "JSONLinesLogger has no output file: pass path=... or let the "
                    "Trainer call bind(run_dir) before logging."
                )
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a", buffering=1, encoding="utf-8")
        return self._file
