"""Following one trial through its run directory: the objective as it is logged, and how the run ended."""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.runs import TERMINAL_STATES, RunInfo, load_run
from engine.supervisor._tail import FileTail, last_lines

__all__ = ["TrialWatch"]

MAX_ERROR_CHARS = 4000


class TrialWatch:
    """New objective values from ``metrics.jsonl``, every metric name seen, whether a validation has ended."""

    def __init__(self, run_dir: Path, metric: str) -> None:
        self.run_dir = run_dir
        self.metric = metric
        self.values: list[tuple[int, float]] = []
        self.names: set[str] = set()
        self.validated = False
        self._tail = FileTail(run_dir / "metrics.jsonl")

    def poll(self) -> list[tuple[int, float]]:
        """The (step, value) pairs of the objective logged since the last call (finite values only)."""
        new = []
        for line in self._tail.read():
            try:
                record = json.loads(line)
                metrics = record["metrics"]
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(metrics, dict):
                continue
            self.names.update(metrics)
            value = metrics.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                new.append((step, float(value)))
            if record.get("stage") == "validate":
                self.validated = True
        self.values.extend(new)
        return new

    @property
    def metric_missing(self) -> bool:
        """A validation ended and the objective was never logged: the sweep's metric name is wrong."""
        return self.validated and not self.values and self.metric not in self.names

    def run(self) -> RunInfo:
        return load_run(self.run_dir)

    @staticmethod
    def ended(run: RunInfo) -> bool:
        return run.state in TERMINAL_STATES or run.state == "lost"

    def stop_reason(self) -> tuple[str | None, str | None]:
        """The applied stop command's reason and client, from the run's event log (None, None if none)."""
        reason = client = None
        try:
            lines = (self.run_dir / "events.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None, None
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "command" and event.get("action") == "stop" and event.get("ok"):
                args = event.get("args") if isinstance(event.get("args"), dict) else {}
                reason, client = args.get("reason"), event.get("client")
        return reason, client

    def error(self, run: RunInfo) -> str:
        """What went wrong, with the failing rank's traceback when there is one."""
        failure = run.failure or {}
        rank = failure.get("rank")
        text = ""
        if rank is not None:
            try:
                text = (self.run_dir / "failures" / f"rank{rank}.txt").read_text(errors="replace").strip()
            except OSError:
                pass
        text = text or self._traceback_in_log(rank or 0) or str(failure.get("message") or run.reason
                                                                 or f"the run ended {run.state}")
        return text[-MAX_ERROR_CHARS:]

    def _traceback_in_log(self, rank: int) -> str:
        """The last traceback in the rank's log: a script that fails before the Trainer writes none of its own."""
        lines = last_lines(self.run_dir / "logs" / f"rank{rank}.log", 200)
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
        return "\n".join(lines[starts[-1]:]).strip() if starts else ""
