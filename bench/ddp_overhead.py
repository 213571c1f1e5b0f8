"""DDP overhead per training step and start-up time: a raw torchrun + DDP loop vs traindeck.

Two ranks on gloo, one thread each, the tiny MLP of ``bench/overhead.py`` (32→128→2),
batch 64 per rank, Adam, the same number of steps per rank. Contenders:

* raw  — a hand-written loop: ``init_process_group("gloo")``, ``DistributedDataParallel``,
  ``DistributedSampler``;
* ours — ``Trainer(devices=2, strategy="ddp", accelerator="cpu")`` at its defaults (loggers on,
  ``self.log`` of the loss every step).

For the step time both run under the same torchrun command (the one ``Trainer(devices=N)``
builds for its self-launch), launched from here as subprocesses, rounds alternating. Each
rank times its own loop from the end of the warm-up steps to the end of its last step and
writes it, and the CPU time of its process (all threads, gloo's included), to a file; the
bench reads them back and reports wall time per step (max over ranks) and CPU time per
step (sum over ranks), median and best over rounds, each with the ratio ours/raw (waiting
for a peer rank costs no CPU: gloo blocks). It also prints the slowest single step of each
run, which shows one-off stalls: traindeck's first logger flush imports
``torch.utils.tensorboard`` on rank 0 (a few hundred ms, the other rank waits at the next
all-reduce) around step 50-100, which the default 200 warm-up steps keep out of the
per-step figures.

Start-up is command to first training step: the bench records a wall-clock timestamp just
before starting the command and passes it in ``$BENCH_LAUNCH_TIME``; rank 0 subtracts it
from the time it starts its first step. Measured for 1 and 2 ranks, raw and ours under the
same torchrun command, and for 2 ranks ours as a user runs it (``python script.py``, which
re-runs itself under torchrun: one more interpreter start in front).

    python bench/ddp_overhead.py [--steps 1200] [--rounds 3] [--warmup 200] [--wait-idle 120]

``--wait-idle S`` waits (up to S seconds) before each launch until other work has left the
CPUs, for machines shared with other jobs.

Internally the same file is the worker: ``--worker raw|ours --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from overhead import make_net, traindeck_net  # same directory: the same model as bench/overhead.py

BATCH = 64
LAUNCH_ENV = "BENCH_LAUNCH_TIME"
SCRIPT = Path(__file__).resolve()


# -- the job (shared by both contenders) ------------------------------------------------

def make_dataset(steps: int, world: int) -> TensorDataset:
    """``steps`` batches of BATCH for each of ``world`` ranks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH * world, 32, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def launch_time() -> float:
    return float(os.environ.get(LAUNCH_ENV, "nan"))


def write_result(out: Path, rank: int, loop_s: float, cpu_s: float, timed_steps: int,
                 startup_s: float | None, slowest: tuple[float, int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "loop_s": loop_s, "cpu_s": cpu_s, "timed_steps": timed_steps, "startup_s": startup_s,
              "slowest_s": slowest[0], "slowest_at": slowest[1]}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


# -- worker: raw torch.distributed + DDP -------------------------------------------------

def worker_raw(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    dataset = make_dataset(args.steps, world)
    net = make_net()
    model = DistributedDataParallel(net) if launched else net
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if launched:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    startup = None
    t0 = c0 = 0.0
    steps = 0
    slowest, last = (0.0, 0), 0.0
    for i, (x, y) in enumerate(loader):
        if i == 0 and rank == 0:
            startup = time.time() - launch_time()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps = i + 1
        now = time.perf_counter()
        if i and now - last > slowest[0]:
            slowest = (now - last, i)
        last = now
        if steps == args.warmup:
            t0, c0 = now, time.process_time()
    t1, c1 = time.perf_counter(), time.process_time()
    write_result(Path(args.out), rank, t1 - t0, c1 - c0, steps - args.warmup, startup, slowest)
    if launched:
        dist.destroy_process_group()


# -- worker: traindeck Trainer -----------------------------------------------------------

def worker_ours(args: argparse.Namespace) -> None:
    from engine import Trainer
    from engine.callbacks import Callback

    class Timer(Callback):
        """Same window as the raw loop: end of step ``warmup`` to end of the last step."""

        def __init__(self) -> None:
            self.startup: float | None = None
            self.t0 = self.t1 = self.c0 = self.c1 = 0.0
            self.slowest = (0.0, 0)
            self.steps = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0 and trainer.global_rank == 0:
                self.startup = time.time() - launch_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps = batch_idx + 1
            now = time.perf_counter()
            if batch_idx and now - self.t1 > self.slowest[0]:
                self.slowest = (now - self.t1, batch_idx)
            if self.steps == args.warmup:
                self.t0, self.c0 = now, time.process_time()
            if self.steps == args.steps:
                self.c1 = time.process_time()
            self.t1 = now

    world = args.devices
    dataset = make_dataset(args.steps, world)
    timer = Timer()
    trainer = Trainer(max_epochs=1, default_root_dir=args.root, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu", devices=world,
                      strategy="ddp" if world > 1 else "auto", callbacks=[timer])
    # fit() re-runs this script under torchrun when devices > 1 and no launcher is around.
    trainer.fit(traindeck_net(), DataLoader(dataset, batch_size=BATCH, shuffle=True))
    write_result(Path(args.out), trainer.global_rank, timer.t1 - timer.t0, timer.c1 - timer.c0,
                 timer.steps - args.warmup, timer.startup, timer.slowest)


# -- the bench: launch contenders as subprocesses, read results back ----------------------

def torchrun_command(nproc: int, script_args: list[str]) -> list[str]:
    """The torchrun command ``Trainer(devices=nproc)`` uses for its self-launch, for both contenders."""
    from engine._distributed import relaunch_command

    return relaunch_command(nproc, 1, [str(SCRIPT), *script_args])


def launch(contender: str, ranks: int, how: str, steps: int, warmup: int, scratch: Path) -> dict:
    """Run one contender once: loop time (max over ranks), CPU time (sum), rank 0's start-up."""
    run = Path(tempfile.mkdtemp(prefix=f"{contender}-{how}-{ranks}-", dir=scratch))
    out = run / "out"
    worker = ["--worker", contender, "--steps", str(steps), "--warmup", str(warmup), "--out", str(out),
              "--root", str(run / "runs"), "--devices", str(ranks)]
    if how == "torchrun":
        command = torchrun_command(ranks, worker)
    else:
        command = [sys.executable, str(SCRIPT), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("TRAINDECK_RUN_DIR", None)
    log = run / "log.txt"
    with log.open("w") as sink:
        env[LAUNCH_ENV] = repr(time.time())
        status = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))] if out.exists() else []
    if status != 0 or len(results) != ranks:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"{contender} ({how}, {ranks} ranks) failed: exit {status}, {len(results)} results")
    return {"loop_s": max(r["loop_s"] for r in results),
            "cpu_s": sum(r["cpu_s"] for r in results),
            "timed_steps": results[0]["timed_steps"],
            "slowest": max((r["slowest_s"], r["slowest_at"]) for r in results),
            "startup_s": next(r["startup_s"] for r in results if r["rank"] == 0)}


def fmt(samples: list[float], scale: float = 1.0, width: int = 8, digits: int = 2) -> str:
    if not samples:
        return f"{'—':>{2 * width + 3}}"
    return f"{statistics.median(samples) * scale:>{width}.{digits}f} / {min(samples) * scale:<{width}.{digits}f}"


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (Linux /proc/stat; 0.0 elsewhere)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(limit_s: float) -> float:
    """Block until other work leaves the CPUs (< 10% busy), at most ``limit_s``; returns seconds waited."""
    start = time.perf_counter()
    while cpu_busy() > 0.10 and time.perf_counter() - start < limit_s:
        pass
    return time.perf_counter() - start


def bench(args: argparse.Namespace) -> None:
    # (contender, ranks, how, timed): the timed runs give the step time and the 2-rank torchrun
    # start-up; the others run a few steps for start-up only.
    timed = [("raw", 2, "torchrun", True), ("ours", 2, "torchrun", True)]
    startup_only = [("raw", 1, "torchrun", False), ("ours", 1, "torchrun", False), ("ours", 2, "python", False)]
    loop: dict[str, list[float]] = {"raw": [], "ours": []}
    cpu: dict[str, list[float]] = {"raw": [], "ours": []}
    slowest: dict[str, list[tuple[float, int]]] = {"raw": [], "ours": []}
    startup: dict[tuple[str, int, str], list[float]] = {(c, r, h): [] for c, r, h, _ in timed + startup_only}
    timed_steps = 0
    waited = 0.0
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as scratch:
        for round_ in range(args.rounds):
            shift = round_ % len(timed)  # alternate which contender goes first
            for contender, ranks, how, is_timed in timed[shift:] + timed[:shift] + startup_only:
                steps, warmup = (args.steps, args.warmup) if is_timed else (20, 5)
                if args.wait_idle:
                    waited += wait_for_idle(args.wait_idle)
                result = launch(contender, ranks, how, steps, warmup, Path(scratch))
                startup[(contender, ranks, how)].append(result["startup_s"])
                if is_timed:
                    loop[contender].append(result["loop_s"] / result["timed_steps"])
                    cpu[contender].append(result["cpu_s"] / result["timed_steps"])
                    slowest[contender].append(result["slowest"])
                    timed_steps = result["timed_steps"]
            print(f"  round {round_ + 1}/{args.rounds} done ({time.perf_counter() - began:.0f} s)",
                  file=sys.stderr, flush=True)

    print(f"tiny MLP 32-128-2, batch {BATCH}/rank, 2 ranks gloo, {args.steps} steps/rank "
          f"({timed_steps} timed after {args.warmup} warm-up) x {args.rounds} rounds, 1 thread/rank, "
          f"torch {torch.__version__}")
    print(f"{'wall per step (max over ranks)':<32}{'median us':>10}{'ratio':>8}{'best us':>10}{'ratio':>8}")
    for title, table in (("", loop), ("CPU per step (sum over ranks)", cpu)):
        if title:
            print(f"{title:<32}{'median us':>10}{'ratio':>8}{'best us':>10}{'ratio':>8}")
        raw_med, raw_best = statistics.median(table["raw"]), min(table["raw"])
        for name, samples in table.items():
            med, best = statistics.median(samples), min(samples)
            print(f"  {name:<30}{med * 1e6:>10.1f}{med / raw_med:>8.3f}{best * 1e6:>10.1f}{best / raw_best:>8.3f}")
    print("slowest single step after the first, ms (max over ranks; at step), per round:")
    for name, samples in slowest.items():
        print(f"  {name:<6}" + "".join(f"{s * 1e3:>9.1f} @{at:<5d}" for s, at in samples))
    print()
    print(f"start-up, command to first step, s (median / best of {args.rounds})")
    print(f"{'':<36}{'1 rank':^19}   {'2 ranks':^19}")
    rows = [("raw   torchrun script.py", "raw", "torchrun"), ("ours  torchrun script.py", "ours", "torchrun"),
            ("ours  python script.py (self-launch)", "ours", "python")]
    for label, contender, how in rows:
        cells = [fmt(startup.get((contender, ranks, how), [])) for ranks in (1, 2)]
        print(f"{label:<36}{cells[0]}   {cells[1]}")
    total = time.perf_counter() - began
    print(f"\nwhole bench: {total:.0f} s" + (f" ({waited:.0f} s of it waiting for idle CPUs)" if args.wait_idle else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps per rank (timed runs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="steps left out of the timing")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each launch wait up to S seconds for other work to leave the CPUs")
    parser.add_argument("--worker", choices=("raw", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None:
        bench(args)
        return
    torch.set_num_threads(1)
    (worker_raw if args.worker == "raw" else worker_ours)(args)


if __name__ == "__main__":
    main()
