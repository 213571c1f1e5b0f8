"""Starting a job's processes: torchrun as a child that dies with its parent. Imports no torch.

The CLI uses this to launch without paying for ``import torch``; the Trainer uses it to
re-run a script under torchrun when ``devices``/``num_nodes`` ask for a group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any, Sequence

__all__ = ["relaunch_command", "run_launcher", "set_parent_death_signal", "group_exit_status", "STARTUP_PARENT"]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", distinct from a crash (1) or a kill (137)

_PR_SET_PDEATHSIG = 1
STARTUP_PARENT = os.getppid()  # a rank's launcher as it was when traindeck was imported


def relaunch_command(nproc_per_node: int, num_nodes: int, script_argv: Sequence[str],
                     launcher_args: Sequence[str] = ()) -> list[str]:
    """The torchrun command that runs this same script as ``nproc_per_node × num_nodes`` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node),
               "--nnodes", str(num_nodes), "--monitor-interval", "0.5"]
    if num_nodes == 1 and not any(a.startswith("--rdzv") or a.startswith("--master") for a in launcher_args):
        command.append("--standalone")
    return command + list(launcher_args) + list(script_argv)


def set_parent_death_signal(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no orphans); no-op elsewhere.

    ``parent`` is the pid the parent had before the fork: if it is already gone (we were
    re-parented in between), the signal is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def run_launcher(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run torchrun as a child that dies with us; forward SIGINT/SIGTERM; return its exit status."""
    parent = os.getpid()
    child = subprocess.Popen(command, preexec_fn=lambda: set_parent_death_signal(parent=parent),
                             env=env)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def group_exit_status(status: int, run_dir: str | os.PathLike[str], started: float) -> int:
    """torchrun's status, except a group that stopped on a signal and saved reports PREEMPTED_EXIT_CODE."""
    from engine._events import find_event

    if status != 0 and find_event(run_dir, "preempted", since=started) is not None:
        return PREEMPTED_EXIT_CODE
    return status
