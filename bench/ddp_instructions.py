"""Instructions per DDP training step, raw loop vs traindeck, counted by valgrind's callgrind.

The same job as ``bench/ddp_overhead.py`` (2 ranks on gloo, the tiny MLP 32-128-2, batch 64
per rank, Adam; ours logs its loss every step). Timings on a shared machine swing by more
than the difference sought; an instruction count does not: repeated runs agree to ~0.2%.
It is not a time (Python code runs at fewer instructions per cycle than the matrix kernels,
so a share of instructions understates its share of time), but it says where the
per-step work goes, exactly, and shows a change's effect at once.

Rank 0 runs under callgrind with collection off; the worker switches it on (with
``callgrind_control``) at step ``--skip`` and off ``--steps`` steps later, so only steady
state is counted, and only rank 0's main thread (the training code path; not gloo's threads,
not waiting). Rank 1 runs natively. Contenders:

* raw  — the hand-written loop of ``bench/ddp_overhead.py``;
* ours — ``Trainer(devices=2, strategy="ddp")``; its clock-scheduled work (a control
  agreement between the ranks every 0.1 s, a metrics flush every 0.25 s) is held off in
  the window: under callgrind a step takes ~50x longer, so by the clock it would come ~50x
  more often per step than natively;
* ours+clock — the same with that work at callgrind's pace; the difference to ours over
  the number of events it counted is the cost of one event (natively: ~40 steps of this job
  per agreement, ~100 per flush).

    python bench/ddp_instructions.py [--runs 2] [--steps 100] [--skip 100] [--model mlp|null]

``--model null`` is a near-free model (Linear(2, 1), batch 4) that leaves the frameworks'
own per-step work. Needs ``valgrind`` (``apt install valgrind``); ~1 min per contender run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
CONTENDERS = ("raw", "ours", "ours+clock")
HOLD_OFF = 1e6  # seconds: the clock-scheduled intervals in the window of "ours"


# -- worker (one rank) ------------------------------------------------------------------

def job(model: str) -> tuple[Any, Any, int, Any]:
    """(network factory, loss function, batch size, a function making the dataset of n batches per rank)."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_overhead import BATCH, make_dataset, make_net

    if model == "null":
        def null_net() -> nn.Module:
            torch.manual_seed(0)
            return nn.Linear(2, 1)

        def mse(out: Any, y: Any) -> Any:
            return ((out - y) ** 2).mean()

        return null_net, mse, 4, lambda n: TensorDataset(torch.randn(n * 4 * 2, 2), torch.randn(n * 4 * 2, 1))
    return make_net, nn.functional.cross_entropy, BATCH, lambda n: make_dataset(n, 2)


def collect(on: bool) -> None:
    """Switch callgrind's collection in this process (a no-op when not under callgrind)."""
    if os.environ.get("BENCH_UNDER_CALLGRIND") == "1":
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def worker(args: argparse.Namespace) -> None:
    if os.environ.get("RANK") == "0" and os.environ.get("BENCH_UNDER_CALLGRIND") != "1":
        os.environ["BENCH_UNDER_CALLGRIND"] = "1"
        os.execvp("valgrind", ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                               f"--callgrind-out-file={args.out}", sys.executable, *sys.argv])
    import torch

    torch.set_num_threads(1)
    make, loss_fn, batch, dataset = job(args.model)
    total = args.skip + args.steps + 20
    data = dataset(total)
    first, last = args.skip, args.skip + args.steps
    if args.worker == "raw":
        run_raw(make, loss_fn, batch, data, first, last)
    else:
        run_ours(make, loss_fn, batch, data, first, last, total, clock=args.worker == "ours+clock",
                 root=args.root)


def run_raw(make: Any, loss_fn: Any, batch: int, data: Any, first: int, last: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo")
    model = DistributedDataParallel(make())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = DistributedSampler(data, num_replicas=dist.get_world_size(), rank=dist.get_rank(), seed=0)
    for i, (x, y) in enumerate(DataLoader(data, batch_size=batch, sampler=sampler)):
        if i in (first, last):
            collect(i == first)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dist.destroy_process_group()


def run_ours(make: Any, loss_fn: Any, batch: int, data: Any, first: int, last: int, total: int, clock: bool,
             root: str) -> None:
    import torch
    from torch.utils.data import DataLoader

    import engine._distributed
    import engine._publish
    from engine import Module, Trainer
    from engine.callbacks import Callback

    events = {"agreements": 0, "flushes": 0}
    if not clock:  # hold the clock-scheduled work off (see the module docstring)
        engine._publish.FLUSH_INTERVAL_S = HOLD_OFF
        engine._distributed.ControlPoint.__init__.__defaults__ = (HOLD_OFF,)  # its interval_s
    start, flush = engine._distributed.ControlPoint.start, engine._publish.MetricPublisher.flush

    def counted_start(self: Any, *a: Any) -> None:
        events["agreements"] += 1
        start(self, *a)

    def counted_flush(self: Any) -> None:
        events["flushes"] += 1
        flush(self)

    engine._distributed.ControlPoint.start = counted_start  # type: ignore[method-assign]
    engine._publish.MetricPublisher.flush = counted_flush  # type: ignore[method-assign]

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = loss_fn(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Window(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == first:
                self.before = dict(events)
                collect(True)
            elif batch_idx == last:
                collect(False)
                if trainer.global_rank == 0:
                    print("events " + " ".join(f"{k}={v - self.before[k]}" for k, v in events.items()), flush=True)

    trainer = Trainer(max_steps=total, default_root_dir=root, enable_progress_bar=False, enable_checkpointing=False,
                      accelerator="cpu", devices=2, strategy="ddp", callbacks=[Window()])
    trainer.fit(Net(), DataLoader(data, batch_size=batch, shuffle=True))


# -- the bench --------------------------------------------------------------------------

def count(contender: str, args: argparse.Namespace, scratch: Path) -> tuple[float, dict[str, int]]:
    """Rank 0's main-thread instructions per step, and the scheduled events counted in the window."""
    out = scratch / f"callgrind.{contender}.out"
    for old in scratch.glob(f"{out.name}*"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               str(SCRIPT), "--worker", contender, "--model", args.model, "--steps", str(args.steps),
               "--skip", str(args.skip), "--out", str(out), "--root", str(scratch / "runs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    env.pop("BENCH_UNDER_CALLGRIND", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    main_thread = Path(f"{out}-01")
    if done.returncode != 0 or not main_thread.exists():
        raise SystemExit(f"{contender}: the job failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    totals = [line for line in main_thread.read_text().splitlines() if line.startswith("totals:")]
    events: dict[str, int] = {}
    for line in done.stdout.splitlines():
        if line.startswith("events "):
            events = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
    return int(totals[0].split()[1]) / args.steps, events


def bench(args: argparse.Namespace) -> None:
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not found: install valgrind (e.g. apt install valgrind)")
    import torch

    began = time.time()
    per_step: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    events: dict[str, list[dict[str, int]]] = {c: [] for c in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="traindeck-instr-") as tmp:
        for run in range(args.runs):
            for contender in CONTENDERS:
                n, seen = count(contender, args, Path(tmp))
                per_step[contender].append(n)
                events[contender].append(seen)
                counted = ", ".join(f"{k} {v}" for k, v in seen.items())
                print(f"  run {run + 1} {contender:10} {n:12,.0f} instructions a step  {counted}", flush=True)
    model = "Linear(2, 1), batch 4" if args.model == "null" else "tiny MLP 32-128-2, batch 64"
    print(f"\n{model}, 2 ranks on gloo, rank 0's main thread, steps {args.skip}..{args.skip + args.steps} "
          f"x {args.runs} runs, torch {torch.__version__} ({time.time() - began:.0f} s)")
    raw = statistics.median(per_step["raw"])
    print(f"{'contender':12} {'instructions a step':>20} {'ratio':>7}   runs")
    for contender in CONTENDERS:
        median = statistics.median(per_step[contender])
        runs = " ".join(f"{n:,.0f}" for n in per_step[contender])
        print(f"{contender:12} {median:20,.0f} {median / raw:7.3f}   {runs}")
    ours = statistics.median(per_step["ours"])
    seen = events["ours+clock"]
    n_events = statistics.median(sum(e.values()) for e in seen)
    if n_events:
        extra = (statistics.median(per_step["ours+clock"]) - ours) * args.steps / n_events
        kinds = ", ".join(f"{k} {statistics.median(e[k] for e in seen):.0f}" for k in seen[0])
        print(f"clock-scheduled work: {kinds} in {args.steps} steps under callgrind; "
              f"~{extra:,.0f} instructions each")
    print(f"ours - raw: {ours - raw:,.0f} instructions a step ({ours / raw - 1:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skip", type=int, default=100, help="steps before counting starts")
    parser.add_argument("--model", choices=("mlp", "null"), default="mlp")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
