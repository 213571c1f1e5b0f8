"""Naming and creating a run's directory: ``<root>/<name>``, unique and human-readable."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["choose_run_dir"]

RUN_DIR_ENV = "TRAINDECK_RUN_DIR"
RUN_NAME_ENV = "TRAINDECK_RUN_NAME"
TORCHRUN_ARGS_ENV = "TRAINDECK_TORCHRUN_ARGS"
RESUME_ENV = "TRAINDECK_RESUME"  # set by `traindeck resume`: fit continues from the run's last valid checkpoint


def _default_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "run"
    return f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"


def choose_run_dir(root: str | Path, name: str | None) -> Path:
    """The run directory, created; ``$TRAINDECK_RUN_DIR`` (set by the supervisor) wins.

    A ``name`` (or ``$TRAINDECK_RUN_NAME``) is used as given, so a rerun reuses its
    directory; without one a fresh ``<script>-<date>-<time>`` directory is made.
    """
    name = name or os.environ.get(RUN_NAME_ENV) or None
    forced = os.environ.get(RUN_DIR_ENV)
    if forced:
        path = Path(forced)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root) / (name or _default_name())
    if name is not None:
        base.mkdir(parents=True, exist_ok=True)
        return base
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
