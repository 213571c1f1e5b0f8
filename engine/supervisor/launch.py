"""Starting a supervised run: write its ``run.json``, start its supervisor in its own session, wait for the socket.

Torch-free: used by ``traindeck run``/``resume`` and by the sweep driver for each trial.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from engine._errors import TraindeckError
from engine._events import append_event
from engine.runs import read_run_file, supervisor_alive, update_run_file, write_run_file

__all__ = ["SUPERVISOR_START_S", "ResumeError", "SupervisorStartError", "create_run", "prepare_resume",
           "start_supervisor"]

SUPERVISOR_START_S = 15.0


class SupervisorStartError(TraindeckError, RuntimeError):
    """The supervisor exited or did not open its socket in time; the message holds its log's last lines."""


class ResumeError(TraindeckError, RuntimeError):
    """A run cannot start a new attempt: it was not started by a supervisor, or has no valid checkpoint."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def create_run(run_dir: Path, command: Sequence[str], devices: int = 1, nnodes: int = 1,
               torchrun_args: Sequence[str] = (), name: str | None = None, env: dict[str, str] | None = None,
               **extra: Any) -> dict[str, Any]:
    """Write a new run's ``run.json`` (state ``starting``) and its ``created`` event.

    ``env`` is added to the ranks' environment by the supervisor (on every attempt, so a
    resumed run sees it too); ``extra`` fields are kept in run.json as they are.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": name or run_dir.name, "run_dir": str(run_dir), "created": now_iso(),
              "host": socket.gethostname(), "command": [str(a) for a in command], "cwd": os.getcwd(),
              "devices": devices, "nnodes": nnodes, "torchrun_args": list(torchrun_args), "attempt": 1,
              "state": "starting", "supervisor_pid": None, "socket": None, "step": None, "epoch": None,
              "exit_status": None, "failure": None, "env": dict(env or {}), **extra}
    written = write_run_file(run_dir, record)
    append_event(run_dir, "created", source="cli", command=record["command"], devices=devices, nnodes=nnodes)
    return written


def start_supervisor(run_dir: Path, timeout: float = SUPERVISOR_START_S) -> dict[str, Any]:
    """Start ``python -m engine.supervisor RUN_DIR`` in a new session; returns run.json once its socket exists."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "supervisor.log", "ab") as out:
        supervisor = subprocess.Popen([sys.executable, "-m", "engine.supervisor", str(run_dir)],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        record = read_run_file(run_dir) or {}
        if record.get("socket") and Path(record["socket"]).exists() and record.get("supervisor_pid") == supervisor.pid:
            return record
        if supervisor.poll() is not None or time.monotonic() > deadline:
            tail = (logs / "supervisor.log").read_text(errors="replace").strip().splitlines()[-10:]
            raise SupervisorStartError(f"the supervisor did not start (see {logs / 'supervisor.log'}):\n"
                                       + "\n".join(tail))
        time.sleep(0.05)


def prepare_resume(run_dir: Path, source: str = "cli", wait_s: float = 15.0) -> tuple[int, Path]:
    """Make a stopped or failed run ready for a new attempt from its newest valid checkpoint.

    Waits for the previous supervisor's linger (both would serve one socket), bumps ``attempt``
    and records ``resume_requested``; returns the attempt and the checkpoint. Start it with
    ``start_supervisor``.
    """
    from engine._checkpoint_format import verify

    record = read_run_file(run_dir)
    name = (record or {}).get("name", run_dir.name)
    if not record or "command" not in record:
        raise ResumeError(f"run {name!r} was not started by `traindeck run` (no command in run.json); "
                          "resume it by running its script with ckpt_path='last'")
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    valid = next((p for p in checkpoints if verify(p)[0]), None)
    if valid is None:
        raise ResumeError(f"run {name!r} has no valid checkpoint in {run_dir / 'checkpoints'} to resume from")
    deadline = time.monotonic() + wait_s
    while supervisor_alive(record.get("supervisor_pid")):
        if time.monotonic() > deadline:
            raise ResumeError(f"the supervisor of run {name!r} (pid {record.get('supervisor_pid')}) is still "
                              "shutting down; try again shortly")
        time.sleep(0.05)
    attempt = int(record.get("attempt") or 1) + 1
    update_run_file(run_dir, attempt=attempt, state="starting", exit_status=None, failure=None)
    append_event(run_dir, "resume_requested", source=source, attempt=attempt, checkpoint=str(valid))
    return attempt, valid
