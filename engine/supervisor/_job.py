"""The job's processes as the supervisor sees them: torchrun (or one rank) and everything under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil

from engine._launcher import relaunch_command, set_parent_death_signal

__all__ = ["Job", "job_command"]

RANK_ENTRY = ["-m", "engine.supervisor._rank_entry"]


def job_command(script_argv: Sequence[str], devices: int, nnodes: int, torchrun_args: Sequence[str]) -> list[str]:
    """One rank run directly, or torchrun starting every rank through the log-redirecting entry."""
    if devices * nnodes > 1 or torchrun_args:
        return relaunch_command(devices, nnodes, [*RANK_ENTRY, *script_argv], torchrun_args)
    return [sys.executable, *RANK_ENTRY, *script_argv]


class Job:
    """Started with a parent-death signal, so the job cannot outlive the supervisor."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: str, launcher_log: Path) -> None:
        parent = os.getpid()
        with open(launcher_log, "ab") as out:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            preexec_fn=lambda: set_parent_death_signal(parent=parent))
        self.pid = self.process.pid
        self.started = time.time()

    def poll(self) -> int | None:
        return self.process.poll()

    def processes(self) -> list[psutil.Process]:
        """The launcher and all its descendants still alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_ranks(self, sig: int, rank_pids: Sequence[int]) -> None:
        """Send ``sig`` to the rank processes (torchrun would otherwise treat SIGTERM as its own death)."""
        for pid in rank_pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole tree, children first found while the root is still there to list them."""
        for process in reversed(self.processes()):
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
