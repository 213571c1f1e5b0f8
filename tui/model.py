"""What the cockpit knows of one run: a snapshot from the supervisor, then live messages.

Kept apart from the widgets so it can be tested without a terminal, and so a finished run
(no supervisor) fills the same model from its files.
"""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from engine.history import MetricHistory
from engine.runs import read_run_file

__all__ = ["RunModel", "chart_groups", "json_lines", "TERMINAL_STATES"]

TERMINAL_STATES = ("finished", "failed", "stopped", "killed", "lost")
LOG_LINES_KEPT = 500
EVENTS_KEPT = 500
_STAGE_PREFIX = re.compile(r"^(train|val|validate|valid|validation|test)[/_]")


class RunModel:
    """One run's state, metric history, recent log lines, events and telemetry."""

    def __init__(self, run_dir: Path, name: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.state: dict[str, Any] = {"state": "starting", "run": self.name}
        self.history = MetricHistory()
        self.logs: dict[int, collections.deque[str]] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.telemetry: dict[str, Any] = {}
        self.dropped = 0
        self.connected = False
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=40)

    # -- feeding ---------------------------------------------------------------------------

    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.history = MetricHistory()
        self.history.load(snapshot.get("history") or {})
        self.state = dict(snapshot.get("state") or self.state)
        self.logs = {int(rank): collections.deque(lines, maxlen=LOG_LINES_KEPT)
                     for rank, lines in (snapshot.get("logs") or {}).items()}
        self.events.clear()
        self.events.extend(snapshot.get("events") or [])
        self.telemetry = snapshot.get("telemetry") or {}
        self.connected = True
        self._note_step()

    def apply(self, message: dict[str, Any]) -> str | None:
        """Fold one live message in; returns which part changed (a topic name) or None."""
        kind = message.get("type")
        if kind == "metrics":
            for point in message.get("points", []):
                for name, value in point.get("values", {}).items():
                    self.history.add(name, point["step"], point.get("time", time.time()), _float(value))
            return "metrics"
        if kind == "state":
            self.state = message["state"]
            self._note_step()
            return "state"
        if kind == "log":
            self.logs.setdefault(message["rank"], collections.deque(maxlen=LOG_LINES_KEPT)).extend(message["lines"])
            return "logs"
        if kind == "event":
            self.events.append(message["event"])
            return "events"
        if kind == "telemetry":
            self.telemetry = message["sample"]
            return "telemetry"
        if kind == "dropped":
            self.dropped += message.get("count", 0)
            return None
        if kind == "bye":
            self.connected = False
            return "state"
        return None

    @classmethod
    def from_files(cls, run_dir: Path) -> RunModel:
        """A run with no live supervisor, read from its directory (run.json, metrics.jsonl, events.jsonl)."""
        model = cls(run_dir)
        record = read_run_file(model.run_dir) or {}
        model.state = {"run": model.name, "state": record.get("state", "unknown"), "step": record.get("step"),
                       "epoch": record.get("epoch"), "attempt": record.get("attempt"),
                       "exit_status": record.get("exit_status"), "failure": record.get("failure"),
                       "devices": record.get("devices"), "nnodes": record.get("nnodes")}
        for record_line in json_lines(model.run_dir / "metrics.jsonl"):
            step, metrics = record_line.get("step"), record_line.get("metrics")
            if isinstance(step, int) and isinstance(metrics, dict):
                for name, value in metrics.items():
                    model.history.add(name, step, record_line.get("time", 0.0), _float(value))
        model.events.extend(json_lines(model.run_dir / "events.jsonl"))
        return model

    # -- derived views ---------------------------------------------------------------------

    @property
    def status(self) -> str:
        return str(self.state.get("state") or "unknown")

    @property
    def live(self) -> bool:
        return self.connected and self.status not in TERMINAL_STATES

    def ranks(self) -> list[int]:
        return sorted(set(self.logs) | {int(r) for r in (self.state.get("ranks") or {})})

    def progress(self) -> dict[str, Any]:
        """Step, epoch, fraction done (of max_steps, else of the epoch), it/s, elapsed and ETA in seconds."""
        state = self.state
        step, max_steps = state.get("step"), state.get("max_steps")
        batch, batches = state.get("batch"), state.get("batches")
        fraction = None
        if isinstance(step, int) and isinstance(max_steps, int) and max_steps > 0:
            fraction = min(1.0, step / max_steps)
        elif isinstance(batch, int) and isinstance(batches, int) and batches > 0:
            fraction = min(1.0, batch / batches)
        rate = self._steps_per_second()
        eta = None
        if rate and isinstance(step, int) and isinstance(max_steps, int) and max_steps > step:
            eta = (max_steps - step) / rate
        started = state.get("started")
        elapsed = time.time() - started if isinstance(started, (int, float)) else None
        return {"step": step, "epoch": state.get("epoch"), "max_steps": max_steps, "fraction": fraction,
                "rate": rate, "elapsed": elapsed, "eta": eta}

    def metric_rows(self) -> list[dict[str, Any]]:
        """Per metric: last, min, max and best (min for losses/errors, else max)."""
        rows = []
        for name, info in self.history.summary().items():
            lower_is_better = any(word in name.lower() for word in ("loss", "err", "perplexity", "mse", "mae"))
            rows.append({"name": name, "step": info.get("step"), "last": info.get("last"), "min": info.get("min"),
                         "max": info.get("max"), "best": info.get("min") if lower_is_better else info.get("max")})
        return rows

    def _note_step(self) -> None:
        step = self.state.get("step")
        if isinstance(step, int) and (not self._rate or self._rate[-1][1] != step):
            self._rate.append((time.monotonic(), step))

    def _steps_per_second(self) -> float | None:
        if len(self._rate) < 2:
            step_time = self.state.get("step_time")
            return 1.0 / step_time if isinstance(step_time, (int, float)) and step_time > 0 else None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def chart_groups(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Metrics grouped for charts: ``train/loss`` and ``val/loss`` (or ``train_loss``/``val_loss``) share one."""
    groups: dict[str, list[str]] = {}
    for name in names:
        base = _STAGE_PREFIX.sub("", name)
        groups.setdefault(base, []).append(name)
    return [(base, members) for base, members in groups.items() if base not in ("epoch",)]


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a .jsonl file, streamed; torn or foreign lines are skipped, a missing file is empty."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError:
        return
