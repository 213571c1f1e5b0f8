"""How long a 2-rank job takes to end after its last training step, and where that time goes.

Two ways a user starts a group, both measured:

* ``python script.py`` with ``Trainer(devices=2, strategy="ddp", accelerator="cpu")`` (the
  Trainer re-runs the script under torchrun; "self-launch");
* ``traindeck run --devices 2 --detach script.py`` (the supervisor starts torchrun).

The job is a tiny MLP trained for ``--steps`` steps. Each rank writes the wall-clock time
its training ended (``on_train_end``); the bench follows the job's process tree with psutil
every 20 ms and reports, counted from the later of the two, when the ranks, torchrun and
the launcher were gone and, for ``traindeck run``, when run.json said ``finished`` and when
the supervisor (which lingers ``TRAINDECK_LINGER_S``, default 3 s, for attached clients)
was gone. Median over ``--rounds``; the polling itself adds a little load.

    python bench/job_exit.py [--rounds 3] [--steps 50]

Internally the same file is the job: ``--worker OUT``.
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

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
POLL_S = 0.02


def worker(out: Path, steps: int, root: Path) -> None:
    import torch
    from torch.nn import functional as F

    from engine import Module, Trainer
    from engine.callbacks import Callback

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class LastStep(Callback):
        def on_train_end(self, trainer, module) -> None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"last-rank{trainer.global_rank}.txt").write_text(repr(time.time()))

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16 * steps, 16, generator=g),
                                          torch.randint(0, 2, (16 * steps,), generator=g))
    trainer = Trainer(devices=2, strategy="ddp", accelerator="cpu", max_steps=steps, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=str(root), callbacks=[LastStep()])
    trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=8))


def _role(proc, root_pid: int) -> str:
    from engine._launcher import TORCHRUN

    cmdline = proc.cmdline()
    if proc.pid == root_pid:
        return "root"
    if TORCHRUN in cmdline or "torch.distributed.run" in cmdline:
        return "torchrun"
    return "rank"


def follow(root_pid: int, run_json: Path | None) -> dict[str, float]:
    """Times (wall clock) at which each role was last gone, and run.json reached a terminal state."""
    import psutil

    root = psutil.Process(root_pid)
    roles: dict[int, str] = {}
    gone: dict[int, float] = {}
    finished = None
    while True:
        now = time.time()
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        alive = set()
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    if proc.cmdline():  # again each time (a child caught before its exec), not once exiting
                        roles[proc.pid] = _role(proc, root_pid)
                    alive.add(proc.pid)
            except psutil.Error:
                pass
        for pid in list(roles):
            if pid not in alive and pid not in gone:
                gone[pid] = now
        if run_json is not None and finished is None:
            try:
                if json.loads(run_json.read_text()).get("state") in ("finished", "failed", "stopped", "killed"):
                    finished = now
            except (OSError, ValueError):
                pass
        if root_pid in gone and (run_json is None or finished is not None):
            break
        time.sleep(POLL_S)
    times: dict[str, float] = {}
    for pid, role in roles.items():
        times[role] = max(times.get(role, 0.0), gone[pid])
    if finished is not None:
        times["run.json finished"] = finished
    return times


def last_step(out: Path) -> float:
    return max(float(p.read_text()) for p in out.glob("last-rank*.txt"))


def self_launch(scratch: Path, steps: int) -> dict[str, float]:
    out, env = scratch / "out", {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRAINDECK_RUN_DIR", None)
    with open(scratch / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--worker", str(out), "--steps", str(steps),
                                 "--root", str(scratch / "runs")], env=env, stdout=log, stderr=subprocess.STDOUT)
        times = follow(proc.pid, None)
        proc.wait()
    if proc.returncode != 0:
        output = (scratch / "log.txt").read_text()[-3000:]
        raise SystemExit(f"the self-launched job failed ({proc.returncode}):\n{output}")
    times["launcher"] = times.pop("root")
    end = last_step(out)
    return {role: t - end for role, t in times.items()}


def supervised(scratch: Path, steps: int) -> dict[str, float]:
    out, runs, name = scratch / "out", scratch / "runs", "job"
    subprocess.run([sys.executable, "-m", "tui.cli", "run", "--detach", "--devices", "2", "--root-dir", str(runs),
                    "--name", name, str(SCRIPT), "--worker", str(out), "--steps", str(steps), "--root",
                    str(scratch / "unused")], cwd=ROOT, check=True, capture_output=True)
    run_json = runs / name / "run.json"
    times = follow(json.loads(run_json.read_text())["supervisor_pid"], run_json)
    times["supervisor"] = times.pop("root")
    state = json.loads(run_json.read_text())["state"]
    if state != "finished":
        raise SystemExit(f"the supervised job ended {state}; see {runs / name}/logs")
    end = last_step(out)
    return {role: t - end for role, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.steps, args.root)
        return
    sys.path.insert(0, str(ROOT))
    results: dict[str, list[dict[str, float]]] = {"python script.py": [], "traindeck run --detach": []}
    with tempfile.TemporaryDirectory(prefix="job-exit-") as scratch:
        for i in range(args.rounds):
            for kind, run in (("python script.py", self_launch), ("traindeck run --detach", supervised)):
                where = Path(scratch) / f"{i}-{kind.split()[0]}"
                where.mkdir()
                results[kind].append(run(where, args.steps))
    print(f"seconds after the last training step (median of {args.rounds}; 2 ranks, gloo, {args.steps} steps)")
    order = ("rank", "torchrun", "launcher", "run.json finished", "supervisor")
    for kind, rounds in results.items():
        parts = [f"{role} gone {statistics.median(r[role] for r in rounds):5.2f}" if role != "run.json finished"
                 else f"{role} {statistics.median(r[role] for r in rounds):5.2f}"
                 for role in order if role in rounds[0]]
        print(f"  {kind:24s} " + "   ".join(parts))


if __name__ == "__main__":
    main()
