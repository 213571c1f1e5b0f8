"""torch.distributed for the Trainer: the launcher's environment, relaunching under torchrun, the group.

Rendezvous, restarts and multi-node come from torchrun (``python -m torch.distributed.run``);
this module only reads the environment it sets, starts it when a script asked for more
than one process, and ties every process's life to its parent's.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, Sequence

import torch
import torch.distributed as dist

from engine._announce import log
from engine._errors import ConfigError
from engine._failures import report_failures
from engine._launcher import (group_exit_status, relaunch_command, run_launcher, set_parent_death_signal,
                              skip_shutdown_collections)
from engine._run_dir import RUN_DIR_ENV, TORCHRUN_ARGS_ENV, choose_run_dir

__all__ = [
    "LaunchEnv",
    "read_launch_env",
    "check_launch_matches",
    "needs_launch",
    "launch_group",
    "set_parent_death_signal",
    "init_group",
    "all_gather_object",
    "broadcast_object",
    "control_group",
    "control_store",
    "ControlPoint",
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


def check_launch_matches(config: Any, launch: LaunchEnv) -> None:
    """Under a launcher the environment decides the world size; a disagreeing argument is an error."""
    if not launch.launched:
        return
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", launch.world_size))
    nodes = max(1, launch.world_size // per_node)
    asked = config.devices_per_node
    if asked is not None and asked != per_node:
        raise ConfigError(f"devices={config.devices!r} but {launch.source} started {per_node} processes per "
                          f"node; pass devices='auto' or launch {asked} per node")
    if config.num_nodes != 1 and config.num_nodes != nodes:
        raise ConfigError(f"num_nodes={config.num_nodes} but {launch.source} started {nodes} "
                          f"node{'s' if nodes > 1 else ''}; pass the same number to both")


def needs_launch(config: Any, launch: LaunchEnv) -> bool:
    """Whether the settings ask for a group that no launcher has started."""
    return not launch.launched and (config.devices_per_node or 1) * config.num_nodes > 1


def launch_group(config: Any) -> NoReturn:
    """Re-run this script under torchrun as the group asked for, then exit with its status."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script or not sys.argv or Path(script).resolve() != Path(sys.argv[0]).resolve():
        raise ConfigError(
            f"devices={config.devices!r} starts one process per device by re-running your script under "
            "torchrun, which needs a script file (python train.py); from a notebook or an embedded "
            "interpreter, start the job with torchrun yourself"
        )
    per_node = config.devices_per_node or 1
    run_dir = choose_run_dir(config.default_root_dir, config.name)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    extra = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, ""))
    if config.max_restarts:
        extra = ["--max-restarts", str(config.max_restarts), *extra]
    command = relaunch_command(per_node, config.num_nodes, sys.argv, extra)
    log.info(f"launching {per_node * config.num_nodes} processes under torchrun: {shlex.join(command)}")
    started = time.time()
    status = run_launcher(command)
    if status != 0:
        report_failures(run_dir, since=started)
    skip_shutdown_collections()  # the group's status is known: do not keep the caller waiting on our exit
    raise SystemExit(group_exit_status(status, run_dir, started))


def init_group(device: torch.device, timeout_s: float) -> None:
    """Join the default process group (NCCL on CUDA, gloo otherwise) unless already joined."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if device.type == "cuda":
        kwargs["device_id"] = device
    store = _attempt_store(timeout)
    if store is not None:
        kwargs.update(store=store, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"could not join the process group ({backend}): {exc}; check MASTER_ADDR/"
                          "MASTER_PORT or the rendezvous endpoint") from exc
    skip_shutdown_collections()  # torchrun, and so the whole job, waits on every rank's exit


def _attempt_store(timeout: timedelta) -> Any:
    """After a torchrun restart, the rendezvous store under a prefix of its own.

    Without it a restarted rank can read a dead peer's address left in the store by the
    previous attempt and fail to connect.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restart == 0 or "MASTER_ADDR" not in os.environ:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, timeout=timeout, multi_tenant=not agent_store)
    return dist.PrefixStore(f"traindeck/attempt{restart}/", store)


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
    """A gloo group for tiny CPU agreements, so they never sync a CUDA stream (None without a group).

    When the default group is gloo already (training on CPU) it is that group: a second one
    would add a gloo event loop per rank, which wakes every 10 ms and competes with training.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


class ControlPoint:
    """Where every rank agrees on the same decision at the same batch.

    Each agreement is one all-gather of a few integers on the gloo ``group`` (the local flags
    of every rank, plus rank 0's choice of the next control batch), reduced to their max on
    every rank, spaced so agreements happen about every ``interval_s`` seconds whatever the
    step time. An all-gather, not an all-reduce: gloo's all-reduce of a few integers costs
    ~1 ms of CPU in its threads between two ranks, its all-gather ~0.2 ms.

    In the training loop an agreement is *started* at a control batch and *finished* at the
    next one (``due`` is then true again): the all-gather runs in gloo's threads while the
    batch in between computes, instead of stalling every rank until the slowest arrives.
    """

    def __init__(self, group: Any, rank: int, interval_s: float = 0.1) -> None:
        self.group = group
        self.rank = rank
        self.interval_s = interval_s
        self.next_batch = 1
        self._last_time = 0.0
        self._last_batch = 0
        self._world = dist.get_world_size(group) if group is not None else 1
        self._pending: tuple[Any, list[Any]] | None = None  # (work, every rank's values) of a started agreement

    @property
    def pending(self) -> bool:
        """Whether an agreement was started and not yet finished."""
        return self._pending is not None

    def due(self, total_batches: int) -> bool:
        return total_batches >= self.next_batch

    def start(self, total_batches: int, flags: Sequence[int]) -> None:
        """Send this rank's ``flags`` (and rank 0's proposal for the next agreement) without waiting."""
        import time

        now = time.monotonic()
        proposal = 0
        if self.rank == 0:
            elapsed = now - self._last_time if self._last_time else 0.0
            done = total_batches - self._last_batch
            per_batch = elapsed / done if elapsed > 0 and done > 0 else self.interval_s
            proposal = total_batches + max(1, int(self.interval_s / max(per_batch, 1e-6)))
        values = torch.tensor([*flags, proposal], dtype=torch.int64)
        work, gathered = None, [values]
        if self.group is not None:
            gathered = [torch.empty_like(values) for _ in range(self._world)]
            work = dist.all_gather(gathered, values, group=self.group, async_op=True)
        self._pending = (work, gathered)
        self._last_time, self._last_batch = now, total_batches
        self.next_batch = total_batches + 1

    def finish(self, total_batches: int) -> list[int]:
        """The element-wise max of every rank's flags sent by ``start``; schedules the next agreement."""
        if self._pending is None:
            raise RuntimeError("no agreement was started")
        work, gathered = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        *flags, proposal = torch.stack(gathered).amax(dim=0).tolist()
        self.next_batch = max(proposal, total_batches + 1)
        return flags

    def agree_min(self, value: float) -> float:
        """The smallest ``value`` of any rank (``inf`` stays ``inf``), here."""
        if self.group is None:
            return value
        box = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(box, op=dist.ReduceOp.MIN, group=self.group)
        return float(box[0])

    def fresh(self) -> "ControlPoint":
        """A new schedule over the same group (a validation counts its own batches)."""
        return ControlPoint(self.group, self.rank, self.interval_s)

    def abandon(self) -> None:
        """Forget a started agreement (a fit that ended by an exception left it behind)."""
        self._pending = None

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank, over the same gloo group (used for the rare command payload)."""
        if self.group is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def control_store() -> Any:
    """The rendezvous store under a prefix of ours: paused ranks poll it instead of waiting in a collective."""
    from torch.distributed.distributed_c10d import _get_default_store

    return dist.PrefixStore("traindeck/control/", _get_default_store())
