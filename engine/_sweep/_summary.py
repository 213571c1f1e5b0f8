"""``<sweep dir>/sweep.json``: what a sweep is and how each trial went, for ``sweep show`` and the cockpit.

Written by the sweep driver (temp file + rename) on every change; read without Optuna or
torch. Format in docs/sweeps.md.
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.runs import write_json_file

__all__ = ["SUMMARY_FILE", "TRIAL_STATES", "best_trial", "find_sweep", "list_sweeps", "pid_alive", "read_summary",
           "ranked_trials", "write_summary"]

SUMMARY_FILE = "sweep.json"
# complete/pruned/failed count toward n_trials; interrupted trials are run again on --resume.
TRIAL_STATES = ("waiting", "running", "complete", "pruned", "failed", "interrupted")


def read_summary(sweep_dir: str | Path) -> dict[str, Any] | None:
    """``sweep.json`` as a dict; None when absent or unreadable.

    A sweep that says ``running`` while its driver on this host is gone reads as ``interrupted``.
    """
    try:
        record = json.loads((Path(sweep_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    driver = record.get("driver") if isinstance(record.get("driver"), dict) else {}
    if record.get("state") == "running" and driver.get("host") == socket.gethostname() \
            and not pid_alive(driver.get("pid")):
        record["state"] = "interrupted"
    return record


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists (a driver's liveness; pids may be reused, so a hint only)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_summary(sweep_dir: str | Path, summary: dict[str, Any]) -> None:
    """Replace ``sweep.json`` atomically, stamping ``updated``."""
    summary["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_file(Path(sweep_dir) / SUMMARY_FILE, summary)


def ranked_trials(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials with an objective first, best first; then the rest by trial number."""
    maximize = summary.get("direction") == "maximize"
    trials = [t for t in summary.get("trials", []) if isinstance(t, dict)]

    def key(trial: dict[str, Any]) -> tuple[int, float, int]:
        value = trial.get("value")
        if trial.get("state") == "complete" and isinstance(value, (int, float)) and math.isfinite(value):
            return (0, -value if maximize else value, trial.get("number", 0))
        return (1, 0.0, trial.get("number", 0))

    return sorted(trials, key=key)


def best_trial(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The complete trial with the best objective, or None."""
    ranked = ranked_trials(summary)
    return ranked[0] if ranked and ranked[0].get("state") == "complete" and ranked[0].get("value") is not None \
        else None


def list_sweeps(root: str | Path) -> list[Path]:
    """Sweep directories directly under ``root``, by name."""
    try:
        return sorted(p for p in Path(root).iterdir() if (p / SUMMARY_FILE).is_file())
    except OSError:
        return []


def find_sweep(name: str, root: str | Path) -> Path | None:
    """The sweep directory ``name`` (a name under ``root``, or a path), or None."""
    for candidate in (Path(root) / name, Path(name)):
        if (candidate / SUMMARY_FILE).is_file():
            return candidate
    return None
