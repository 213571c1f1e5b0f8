"""Real multi-process jobs for the distributed tests: start, watch, find and kill them.

A job runs ``tests/scripts/ddp_train.py`` (through the Trainer's own relaunch, or under
torchrun directly) with a root directory no other job uses; that path is an argument of
every process of the job (launcher, torchrun, ranks), which is how ``processes`` finds
them with psutil. ``Job.stop`` kills them all, whatever state the test left them in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from engine._launcher import TORCHRUN as TORCHRUN_WRAPPER

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "ddp_train.py"
RUN_TIMEOUT_S = 180.0
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--monitor-interval", "0.5"]
TORCHRUN_NAMES = {"torch.distributed.run", TORCHRUN_WRAPPER}  # torchrun as users start it, as the Trainer does

__all__ = ["Job", "launch", "torchrun", "results", "progress", "wait_for_steps", "processes", "describe",
           "free_port", "SCRIPT", "TORCHRUN"]


def _env() -> dict[str, str]:
    """This environment without anything that would make a child join a group or a given run."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                "MASTER_PORT")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAINDECK_", "SLURM_", "TORCHELASTIC_")) and k not in launcher}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def processes(tag: str | Path) -> list[psutil.Process]:
    """Live (not zombie) processes with ``tag`` as one of their arguments, this one excluded."""
    tag, found = str(tag), []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if tag in (proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"  pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            continue
    return "\n".join(lines)


class Job:
    """One process tree started from here, tagged by ``tag``; its output goes to ``log``."""

    def __init__(self, argv: list[str], tag: str | Path, log: Path) -> None:
        self.tag = str(tag)
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """The exit status; the job is killed and the test fails if it runs past ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the job did not finish in {timeout:.0f} s; its output:\n{self.output[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        return processes(self.tag)

    def find(self, role: str) -> psutil.Process:
        """The live process playing ``role``: "launcher", "torchrun", "rank0", "rank1", ..."""
        if role == "launcher":
            return psutil.Process(self.proc.pid)
        for proc in self.processes():
            try:
                is_torchrun = bool(TORCHRUN_NAMES.intersection(proc.cmdline()))
                if role == "torchrun" and is_torchrun:
                    return proc
                if role.startswith("rank") and proc.environ().get("RANK") == role.removeprefix("rank") \
                        and not is_torchrun:
                    return proc
            except psutil.Error:
                continue
        raise AssertionError(f"no {role} process in the job; it has:\n{describe(self.processes())}")

    def gone_within(self, seconds: float) -> tuple[bool, float]:
        """Wait until the job's launcher exited and no process of the job is left; (done, when)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.proc.poll() is not None and not self.processes():
                return True, time.time()
            if time.monotonic() > deadline:
                return False, time.time()
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill every process of the job (launcher's group, then anything with the tag) and reap."""
        if self.proc.poll() is None:  # not reaped yet, so the pid (and group id) is still ours
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(3):
            left = self.processes()
            if not left:
                break
            for proc in left:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()


def launch(root: Path, name: str, *args: str, log: Path | None = None) -> Job:
    """``python ddp_train.py ROOT NAME ARGS``: the Trainer relaunches itself under torchrun."""
    return Job([sys.executable, str(SCRIPT), str(root), name, *args], root,
               log or root.parent / f"{root.name}-{name}.log")


def torchrun(root: Path, name: str, *args: str, launcher_args: tuple[str, ...] = ("--standalone",
             "--nproc-per-node", "2"), log: Path | None = None) -> Job:
    """``python -m torch.distributed.run LAUNCHER_ARGS ddp_train.py ROOT NAME ARGS``."""
    return Job([*TORCHRUN, *launcher_args, str(SCRIPT), str(root), name, *args], root,
               log or root.parent / f"{root.name}-{name}.log")


def results(run_dir: Path, world_size: int = 2) -> list[dict[str, Any]]:
    """What each rank of a finished run wrote to ``result-rank<N>.pt``, in rank order."""
    return [torch.load(run_dir / f"result-rank{rank}.pt") for rank in range(world_size)]


def progress(run_dir: Path, rank: int) -> list[int]:
    """The global step after each training batch rank ``rank`` finished so far."""
    path = run_dir / f"progress-rank{rank}.txt"
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split("\n")[:-1]]


def wait_for_steps(job: Job, run_dir: Path, step: int, ranks: int = 2, timeout: float = RUN_TIMEOUT_S) -> None:
    """Until every rank finished the batch that reached ``step``; fails if the job ends first."""
    deadline = time.monotonic() + timeout
    while not all(progress(run_dir, r) and progress(run_dir, r)[-1] >= step for r in range(ranks)):
        if job.proc.poll() is not None:
            pytest.fail(f"the job ended (status {job.proc.returncode}) before step {step}:\n{job.output[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the job did not reach step {step} in {timeout:.0f} s:\n{job.output[-4000:]}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
