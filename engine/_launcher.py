"""Starting a job's processes: torchrun as a child that dies with its parent. Imports no torch.

The CLI uses this to launch without paying for ``import torch``; the Trainer uses it to
re-run a script under torchrun when ``devices``/``num_nodes`` ask for a group.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["relaunch_command", "run_launcher", "set_parent_death_signal", "group_exit_status", "STARTUP_PARENT",
           "skip_shutdown_collections", "MONITOR_INTERVAL_S", "TORCHRUN"]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", distinct from a crash (1) or a kill (137)

_PR_SET_PDEATHSIG = 1
STARTUP_PARENT = os.getppid()  # a rank's launcher as it was when traindeck was imported
# How often torchrun checks its ranks: how soon it sees them exit (or fail) and ends the group.
# A check is a few waitpid calls and a store read: at 0.1 s torchrun uses ~0.3% of a core (0.5 s: ~0.15%),
# and a job's end waits 0.05 s on average for it instead of 0.25 s.
MONITOR_INTERVAL_S = 0.1
TORCHRUN = str(Path(__file__).with_name("_torchrun.py"))  # torchrun that exits promptly; see there


def relaunch_command(nproc_per_node: int, num_nodes: int, script_argv: Sequence[str],
                     launcher_args: Sequence[str] = ()) -> list[str]:
    """The torchrun command that runs this same script as ``nproc_per_node × num_nodes`` processes."""
    command = [sys.executable, TORCHRUN, "--nproc-per-node", str(nproc_per_node),
               "--nnodes", str(num_nodes), "--monitor-interval", str(MONITOR_INTERVAL_S)]
    if num_nodes == 1 and not any(a.startswith("--rdzv") or a.startswith("--master") for a in launcher_args):
        command.append("--standalone")
    return command + list(launcher_args) + list(script_argv)


_skipping_collections = False


def skip_shutdown_collections() -> None:
    """At exit, keep the interpreter's shutdown garbage collections off the heap this process built.

    While it tears modules down CPython runs several full collections; with torch (and the
    sympy/dynamo stack DDP pulls in) a process holds ~300k tracked objects, so that costs
    1-2 s per process on a busy 2-core machine -- paid by every rank, then torchrun, then
    the launcher, one after the other, after the last step. At exit this runs one full
    collection (garbage that exists now is finalized as usual), then
    ``gc.freeze()``: what is still alive goes to the permanent generation, which the
    shutdown collections skip. Modules are still torn down and refcounts still free
    objects; only cycles that become unreachable during that teardown are left to the OS,
    as CPython allows for objects alive at exit. Registered once per process with atexit.
    """
    global _skipping_collections
    if _skipping_collections:
        return
    _skipping_collections = True

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    atexit.register(freeze)


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
