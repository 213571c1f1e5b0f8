"""torch.distributed for the Trainer: the launcher's environment, relaunching under torchrun, the group.

Rendezvous, restarts and multi-node come from torchrun (``python -m torch.distributed.run``);
this module only reads the environment it sets, starts it when a script asked for more
than one process, and ties every process's life to its parent's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from engine._errors import ConfigError
from engine._launcher import relaunch_command, run_launcher, set_parent_death_signal

__all__ = [
    "LaunchEnv",
    "read_launch_env",
    "relaunch_command",
    "run_launcher",
    "set_parent_death_signal",
    "init_group",
    "all_gather_object",
    "broadcast_object",
]


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process stands in its group, as the launcher (or its absence) says."""

    world_size: int
    rank: int
    local_rank: int
    node_rank: int
    launched: bool
    restart_count: int = 0
    source: str = "none"


def read_launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """torchrun's variables, else SLURM's, else a single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            world_size=int(env["WORLD_SIZE"]),
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", 0))),
            launched=True,
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
            source="torchrun" if "TORCHELASTIC_RUN_ID" in env else "environment",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        return LaunchEnv(
            world_size=int(env["SLURM_NTASKS"]),
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            node_rank=int(env.get("SLURM_NODEID", 0)),
            launched=True,
            source="SLURM",
        )
    return LaunchEnv(world_size=1, rank=0, local_rank=0, node_rank=0, launched=False)


def init_group(device: torch.device, timeout_s: float) -> None:
    """Join the default process group (NCCL on CUDA, gloo otherwise) unless already joined."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"could not join the process group ({backend}): {exc}; check MASTER_ADDR/"
                          "MASTER_PORT or the rendezvous endpoint") from exc


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a one-element list without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def control_group() -> Any:
    """A gloo group for tiny CPU agreements, so they never sync a CUDA stream (None without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo")


class ControlPoint:
    """Where every rank agrees on the same decision at the same batch.

    Each agreement is one all-reduce (MAX) of a few integers on the gloo ``group``: the
    local flags of every rank, plus rank 0's choice of the next control batch, spaced so
    agreements happen about every ``interval_s`` seconds whatever the step time.
    """

    def __init__(self, group: Any, rank: int, interval_s: float = 0.1) -> None:
        self.group = group
        self.rank = rank
        self.interval_s = interval_s
        self.next_batch = 1
        self._last_time = 0.0
        self._last_batch = 0

    def due(self, total_batches: int) -> bool:
        return total_batches >= self.next_batch

    def agree(self, total_batches: int, flags: Sequence[int]) -> list[int]:
        """The element-wise max of every rank's ``flags``; also schedules the next agreement."""
        import time

        now = time.monotonic()
        proposal = 0
        if self.rank == 0:
            elapsed = now - self._last_time if self._last_time else 0.0
            done = total_batches - self._last_batch
            per_batch = elapsed / done if elapsed > 0 and done > 0 else self.interval_s
            proposal = total_batches + max(1, int(self.interval_s / max(per_batch, 1e-6)))
        values = torch.tensor([*flags, proposal], dtype=torch.int64)
        if self.group is not None:
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        self._last_time, self._last_batch = now, total_batches
        self.next_batch = int(values[-1]) or total_batches + 1
        return [int(v) for v in values[:-1]]
