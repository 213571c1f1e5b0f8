"""DDP overhead per training step and start-up time: a raw torchrun + DDP loop vs traindeck.

Two ranks on gloo, one thread each, the tiny MLP of ``bench/overhead.py`` (32→128→2),
batch 64 per rank, Adam. Contenders:

* raw  — a hand-written loop: ``init_process_group("gloo")``, ``DistributedDataParallel``,
  ``DistributedSampler``;
* ours — ``Trainer(devices=2, strategy="ddp", accelerator="cpu")`` at its defaults (loggers on,
  ``self.log`` of the loss every step).

Both run under the same torchrun command (the one ``Trainer(devices=N)`` builds for its
self-launch), started from here as subprocesses.

1. Step time, by the method of ``bench/control.py``: ``--procs`` groups (torchrun + 2 ranks)
   of raw, as many of ours and as many more of raw (raw', the A/A check) start side by side,
   each training epoch after epoch (``--epoch-steps`` batches per rank) until the bench ends
   it. Each rank writes its pid, and after every optimizer step its step count, into an
   int64 slot of a 32-byte file the bench maps too (the same ``ctypes`` store in both
   contenders). Once rank 0 is past ``--warmup`` steps both ranks of the group are held with
   SIGSTOP (the torchrun agents are never held: they only poll their ranks, ~0.3% of a core
   each, alike for every contender). Then ``--rounds`` rounds: each gives one turn of
   ``--turn`` s to one group of every contender (round r: group r mod procs), in an order
   shuffled every round, the other groups held. In its turn rank 0, all its threads, runs on
   CPU 0 and rank 1 on CPU 1 (``--pin none``: anywhere). A turn's figures: wall = its length /
   the steps rank 0 finished in it (throughput); CPU = both ranks' CPU time in it (all
   threads, gloo's included; and the two main threads alone), from
   /proc/<pid>/task/*/schedstat, to the nanosecond, / those steps. The ratio is total time
   (or CPU) per step over all turns, paired by round, its 95% interval a bootstrap over the
   process sets, then the rounds in each (``control.paired_ratio``); raw' / raw must contain 1.
   Target: ours / raw <= 1.05, "demonstrated" only when the whole interval is <= 1.05.
2. Start-up is command to first training step: the bench records a wall-clock timestamp just
   before starting the command and passes it in ``$BENCH_LAUNCH_TIME``; rank 0 subtracts it
   from the time it starts its first step. Measured for 1 and 2 ranks, raw and ours under the
   same torchrun command, and for 2 ranks ours as a user runs it (``python script.py``, which
   re-runs itself under torchrun: one more interpreter start in front), ``--startup-rounds``
   launches of each, one after the other, after 1 has ended.

    python bench/ddp_overhead.py [--procs 3] [--turn 0.22] [--rounds 300] [--warmup 600]
                                 [--epoch-steps 5000] [--startup-rounds 3] [--pin ranks|none]
                                 [--no-aa] [--seed N] [--wait-idle S] [--dump FILE]
    python bench/ddp_overhead.py --pool FILE [FILE ...]   # 1 over several runs' --dump files

``--wait-idle S`` waits (up to S seconds) for other work to leave the CPUs before the groups
start and before each start-up launch, and between rounds of 1 when the last round saw other
work (at most S seconds in all there), for machines shared with other jobs. ``--dump`` writes
every turn of 1 (JSON lines); ``--pool`` reads such files and prints 1 over all their turns.

Internally the same file is the worker: ``--worker raw|ours --out DIR`` (a finite start-up
run), with ``--counter FILE`` the endless job of 1. Every process the bench starts and its
temp directory are removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from overhead import make_net, traindeck_net  # same directory: the same model as bench/overhead.py

BATCH = 64
LAUNCH_ENV = "BENCH_LAUNCH_TIME"
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
TARGET = 1.05


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


class Slots:
    """The int64 slots a group's ranks share with the bench, in a small file both map:
    [pid of rank 0, pid of rank 1, steps finished by rank 0, steps finished by rank 1].
    A rank's write after each step is one store into shared memory (no system call)."""

    N = 4

    def __init__(self, path: str | Path, create: bool = False) -> None:
        if create:
            Path(path).write_bytes(bytes(8 * self.N))
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 8 * self.N)
        self.values = (ctypes.c_int64 * self.N).from_buffer(self._map)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; a no-op elsewhere): a group held with SIGSTOP is
    never left behind, whatever ends the bench. ``Trainer`` does the same for ours' ranks."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def worker_slots(args: argparse.Namespace) -> tuple[Any, int] | None:
    """The endless job of 1: this rank's pid in its slot; (slots, index of this rank's step count)."""
    if not args.counter:
        return None
    rank = int(os.environ.get("RANK", "0"))
    slots = Slots(args.counter)
    slots.values[rank] = os.getpid()
    return slots, 2 + rank


# -- worker: raw torch.distributed + DDP -------------------------------------------------

def worker_raw(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    endless = worker_slots(args)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched:
        die_with_parent()  # as Trainer does for ours' ranks under torchrun
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    dataset = make_dataset(args.steps, world)
    net = make_net()
    model = DistributedDataParallel(net) if launched else net
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = None
    if launched:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    if endless is not None:
        slots, index = endless
        values = slots.values
        steps, epoch, deadline = 0, 0, time.monotonic() + args.max_time
        while time.monotonic() < deadline:  # epoch after epoch until the bench ends the group
            if sampler is not None:
                sampler.set_epoch(epoch)
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                values[index] = steps
            epoch += 1
        return
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

    endless = worker_slots(args)

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

    class Count(Callback):
        """The endless job of 1: this rank's step count into its slot after every step, as the raw loop does."""

        def __init__(self, values: Any, index: int) -> None:
            self.values, self.index, self.steps = values, index, 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps += 1
            self.values[self.index] = self.steps

    world = args.devices
    dataset = make_dataset(args.steps, world)
    strategy = "ddp" if world > 1 else "auto"
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    if endless is not None:  # epoch after epoch until the bench ends the group
        trainer = Trainer(max_steps=10 ** 9, max_time=args.max_time, default_root_dir=args.root,
                          enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu", devices=world,
                          strategy=strategy, callbacks=[Count(endless[0].values, endless[1])])
        trainer.fit(traindeck_net(), loader)
        return
    timer = Timer()
    trainer = Trainer(max_epochs=1, default_root_dir=args.root, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu", devices=world,
                      strategy=strategy, callbacks=[timer])
    # fit() re-runs this script under torchrun when devices > 1 and no launcher is around.
    trainer.fit(traindeck_net(), loader)
    write_result(Path(args.out), trainer.global_rank, timer.t1 - timer.t0, timer.c1 - timer.c0,
                 timer.steps - args.warmup, timer.startup, timer.slowest)


# -- launching ----------------------------------------------------------------------------

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


# -- 1: step time, groups held with SIGSTOP and run in turns -------------------------------

CONTENDERS = {"raw": "raw", "ours": "ours", "raw'": "raw"}  # group -> the worker it runs


class Group:
    """One contender's 2-rank job (torchrun + 2 ranks), training until the bench ends it."""

    def __init__(self, procs: Any, name: str, index: int, args: argparse.Namespace) -> None:
        import psutil

        self.name = name
        self.dir = procs.scratch / f"{index:02d}-{name.replace(chr(39), '2')}"
        self.dir.mkdir()
        counter = self.dir / "counter"
        self.slots = Slots(counter, create=True)
        worker = ["--worker", CONTENDERS[name], "--steps", str(args.epoch_steps), "--warmup", str(args.warmup),
                  "--counter", str(counter), "--out", str(self.dir / "out"), "--root", str(self.dir / "runs"),
                  "--devices", "2", "--max-time", str(args.max_time)]
        self.log = open(self.dir / "log.txt", "w")
        self.agent = subprocess.Popen(torchrun_command(2, worker), env=procs.env(False), cwd=REPO, stdout=self.log,
                                      stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        procs.supervisors.append(self.agent.pid)  # ended first, gracefully, by Processes.cleanup
        self.agent_proc = psutil.Process(self.agent.pid)
        self.pids: tuple[int, int] | None = None  # the ranks', once held

    def steps(self) -> tuple[int, int]:
        v = self.slots.values
        return v[2], v[3]

    def signal(self, sig: int) -> None:
        for pid in self.pids or ():
            os.kill(pid, sig)

    def tail(self) -> str:
        self.log.flush()
        return (self.dir / "log.txt").read_text(errors="replace")[-3000:]


def hold_when_ready(groups: list[Group], warmup: int, timeout: float = 600) -> None:
    """Hold both ranks of every group with SIGSTOP as soon as rank 0 is past ``warmup`` steps."""
    deadline = time.monotonic() + timeout
    pending = list(groups)
    while pending:
        for group in list(pending):
            v = group.slots.values
            if v[2] >= warmup and v[0] and v[1]:
                group.pids = (int(v[0]), int(v[1]))
                group.signal(signal.SIGSTOP)
                pending.remove(group)
            elif group.agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{group.dir.name} did not get past its warm-up (torchrun exit "
                                 f"{group.agent.poll()}, {v[2]} steps)\n{group.tail()}")
        time.sleep(0.05)


class Turns:
    """Rounds of turns over the held groups (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, groups: dict[str, list[Group]]) -> None:
        import psutil

        self.args, self.groups = args, groups
        self.agents = [g.agent_proc for members in groups.values() for g in members]
        self.me = psutil.Process()
        self.rng = random.Random(args.seed)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.layout = (cpus[0], cpus[1]) if args.pin == "ranks" and len(cpus) >= 2 else None
        self.turns: list[dict[str, Any]] = []
        self.waited = 0.0

    def run(self, began: float) -> list[dict[str, Any]]:
        args = self.args
        slots = min(len(m) for m in self.groups.values())
        for round_ in range(args.rounds):
            order = list(self.groups)
            self.rng.shuffle(order)
            for name in order:
                members = self.groups[name]
                turn = self.turn(members[round_ % len(members)], args.turn)
                turn.update(group=name, round=str(round_), slot=round_ % slots)
                self.turns.append(turn)
            done = round_ + 1
            if done % 50 == 0 or done == args.rounds:
                progress(began, f"1: {done}/{args.rounds} rounds")
            others = statistics.fmean(t["others"] for t in self.turns[-len(order):])
            if args.wait_idle and others > 0.5 and self.waited < args.wait_idle:
                progress(began, f"1: other work ({others:.2f} CPUs) in round {done}: waiting for idle CPUs")
                self.waited += wait_for_idle(args.wait_idle - self.waited)
        return self.turns

    def turn(self, group: Group, length: float) -> dict[str, Any]:
        from control import _cpu, _machine_busy, _on_cpu, _set_affinity

        pids = group.pids
        assert pids is not None
        if self.layout is not None:
            for pid, cpu in zip(pids, self.layout):
                _set_affinity(pid, {cpu})
        busy0, side0 = _machine_busy(), sum(_cpu(a) for a in self.agents) + _cpu(self.me)
        cpu0 = [_on_cpu(pid) for pid in pids]
        steps0 = group.steps()
        begin = time.perf_counter()
        group.signal(signal.SIGCONT)
        time.sleep(length)
        group.signal(signal.SIGSTOP)
        end = time.perf_counter()
        steps1 = group.steps()
        cpu1 = [_on_cpu(pid) for pid in pids]
        side1, busy1 = sum(_cpu(a) for a in self.agents) + _cpu(self.me), _machine_busy()
        thread = sum(b[0] - a[0] for a, b in zip(cpu0, cpu1))
        process = sum(b[1] - a[1] for a, b in zip(cpu0, cpu1))
        steps = steps1[0] - steps0[0]
        ok = steps >= 3
        return {"begin": begin, "end": end, "steps": steps, "steps1": steps1[1] - steps0[1],
                "thread_cpu": thread, "process_cpu": process,
                "wall": (end - begin) / steps if ok else None, "thread": thread / steps if ok else None,
                "process": process / steps if ok else None,
                "others": max(0.0, (busy1 - busy0 - process - (side1 - side0)) / (end - begin))}


def step_time(args: argparse.Namespace, began: float) -> dict[str, Any]:
    """1: every group started side by side, held past its warm-up, then run in turns; all ended after."""
    from control import Processes

    names = ["raw", "ours"] + (["raw'"] if args.aa else [])
    kinds = [name for name in names for _ in range(args.procs)]
    order = list(range(len(kinds)))
    random.Random(args.seed).shuffle(order)  # start order: no contender always first
    procs = Processes()
    try:
        if args.wait_idle:
            wait_for_idle(args.wait_idle)
        members: dict[int, Group] = {i: Group(procs, kinds[i], n, args) for n, i in enumerate(order)}
        groups: dict[str, list[Group]] = {}
        for i, name in enumerate(kinds):
            groups.setdefault(name, []).append(members[i])
        hold_when_ready(list(members.values()), args.warmup)
        progress(began, f"1: {len(members)} groups past {args.warmup} warm-up steps, held")
        turns = Turns(args, groups)
        turns.run(began)
        return {"turns": turns.turns, "layout": turns.layout, "waited": turns.waited}
    finally:
        procs.cleanup()  # resumes and ends every group (torchrun first, gracefully), removes the scratch dir
        procs.supervisors.clear()


# -- 1: statistics and report -------------------------------------------------------------

KEYS = (("wall", "wall"), ("process", "CPU, both ranks"), ("thread", "CPU, main threads"))


def judge(main: tuple[float, float, float, int], aa: tuple[float, float, float, int] | None) -> str:
    if aa is not None and not aa[1] <= 1.0 <= aa[2]:
        return "no verdict: the A/A interval excludes 1, so this run's method is biased by more than its noise"
    if main[2] <= TARGET:
        return f"demonstrated (the whole 95% interval is <= {TARGET})"
    if main[1] > TARGET:
        return f"NOT met (the whole 95% interval is > {TARGET})"
    return f"not resolved by this run (the 95% interval contains {TARGET})"


def ratio_table(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Print 1's table for ``turns``; returns its ratios."""
    from control import pct, print_ratios

    present = {t["group"] for t in turns}
    names = [g for g in CONTENDERS if g in present]
    widths = (10, 18, 20)
    print(f"    {'':<8}{'per step, median of turns (us)':^48}{'steps a turn':^16}")
    print(f"    {'':<8}" + "".join(f"{label:>{w}}" for (_, label), w in zip(KEYS, widths))
          + f"{'rank 0':>8}{'rank 1':>8}")
    for name in names:
        mine = [t for t in turns if t["group"] == name]
        medians = [statistics.median([t[key] for t in mine if t.get(key)]) for key, _ in KEYS]
        print(f"    {name:<8}" + "".join(f"{m * 1e6:>{w}.0f}" for m, w in zip(medians, widths))
              + f"{statistics.median(t['steps'] for t in mine):>8.0f}"
              + f"{statistics.median(t['steps1'] for t in mine):>8.0f}")
    rows = [("raw'", "raw' / raw (A/A)", {"raw'"}, {"raw"}), ("ours", "ours / raw", {"ours"}, {"raw"})]
    if "raw'" in present:
        rows.append(("both", "ours / both raw", {"ours"}, {"raw", "raw'"}))
    ratios, typical = print_ratios(turns, KEYS, rows, ({"ours"}, {"raw", "raw'"} & present), names, "group")
    others = [t["others"] for t in turns]
    print(f"    other work on the machine during the turns: median {statistics.median(others):.2f} CPUs, "
          f"p90 {pct(others, 0.9):.2f}")
    return {"ratios": ratios, "typical": typical, "aa": ratios.get("raw'", {}).get("wall")}


TABLE_NOTE = ("    (wall: the turn's length over the steps rank 0 finished in it, i.e. throughput; CPU, both ranks:"
              "\n     all their threads, gloo's included, from /proc/<pid>/task/*/schedstat; main threads: the two"
              "\n     training threads alone; a round's turns are at most a round apart, so drift in the machine's"
              "\n     speed hits each contender alike; the ratio counts every turn as it came (throughput); the"
              "\n     trimmed row is the trimmed mean of the per-round log ratios against both raw sets, a typical"
              "\n     round; raw' is a second set of raw groups: raw' / raw is the A/A check, whose interval must"
              "\n     contain 1 for the method to be trusted)")


def summary(table: dict[str, Any], where: str = "this run") -> list[str]:
    from control import interval

    ours = table["ratios"]["ours"]
    lines = [f"ours / raw per step, wall (throughput): {interval(ours['wall'])}, {ours['wall'][3]} rounds: "
             f"target <= {TARGET} {judge(ours['wall'], table['aa']).replace('this run', where)}",
             f"    CPU, both ranks {interval(ours['process'])}; main threads {interval(ours['thread'])}"]
    if "both" in table["ratios"]:
        lines.append(f"    against both raw sets: wall {interval(table['ratios']['both']['wall'])}, CPU "
                     f"{interval(table['ratios']['both']['process'])}")
    aa = table["aa"]
    lines.append(f"    A/A raw' / raw wall {interval(aa)}" if aa else "    no A/A (--no-aa)")
    return lines


def pool(files: list[str]) -> None:
    """1 over the turns of several runs' ``--dump`` files together (each run's process sets stay separate slots,
    so the interval still carries the groups' own differences)."""
    from control import interval, paired_ratio

    if len({os.path.realpath(f) for f in files}) < len(files):
        raise SystemExit("--pool: a file is named twice")
    every: list[dict[str, Any]] = []
    print(f"1.  step time, pooled over {len(files)} run{'s' if len(files) > 1 else ''}:")
    for n, name in enumerate(files):
        with open(name) as f:
            settings = json.loads(f.readline())["settings"]
            turns = [{**t, "round": f"{n}:{t['round']}", "slot": f"{n}:{t['slot']}"}
                     for t in (json.loads(line) for line in f if line.strip())]
        ours = paired_ratio(turns, {"ours"}, {"raw"}, "wall")
        aa = paired_ratio(turns, {"raw'"}, {"raw"}, "wall")
        print(f"    {name} ({settings['date']}, {settings['rounds']} rounds of {settings['turn']:g} s turns, "
              f"pin {settings['pin']}): ours / raw wall {interval(ours)}, A/A {interval(aa)}")
        every += turns
    table = ratio_table(every)
    print(TABLE_NOTE)
    print("\n".join(["pooled:"] + summary(table, "these runs")))


# -- 2: start-up, then the report -----------------------------------------------------------

def startup(args: argparse.Namespace, began: float) -> dict[tuple[str, int, str], list[float]]:
    """2: each start-up launch ``--startup-rounds`` times, one after the other, 20 steps each."""
    plan = [("raw", 2, "torchrun"), ("ours", 2, "torchrun")]
    rest = [("raw", 1, "torchrun"), ("ours", 1, "torchrun"), ("ours", 2, "python")]
    found: dict[tuple[str, int, str], list[float]] = {key: [] for key in plan + rest}
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as scratch:
        for round_ in range(args.startup_rounds):
            shift = round_ % len(plan)  # alternate which contender goes first
            for contender, ranks, how in plan[shift:] + plan[:shift] + rest:
                if args.wait_idle:
                    wait_for_idle(args.wait_idle)
                result = launch(contender, ranks, how, 20, 5, Path(scratch))
                found[(contender, ranks, how)].append(result["startup_s"])
            progress(began, f"2: start-up round {round_ + 1}/{args.startup_rounds} done")
    return found


def progress(began: float, text: str) -> None:
    print(f"  [{time.perf_counter() - began:4.0f} s] {text}", file=sys.stderr, flush=True)


def report(args: argparse.Namespace, rot: dict[str, Any] | None, starts: dict | None, began: float) -> None:
    print(f"tiny MLP 32-128-2, batch {BATCH}/rank, 2 ranks gloo under torchrun, 1 thread/rank, Adam, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    lines: list[str] = []
    if rot is not None:
        layout = rot["layout"]
        where = (f"in its turn rank 0 (all its threads) on CPU {layout[0]}, rank 1 on CPU {layout[1]}"
                 if layout else "no pinning")
        contenders = ["raw", "ours"] + (["raw'"] if args.aa else [])
        print(f"\n1.  step time: {args.procs} groups (torchrun + 2 ranks) each of {', '.join(contenders)}, started "
              f"side by side, held with SIGSTOP past {args.warmup} steps, epochs of {args.epoch_steps} steps; "
              f"{args.rounds} rounds, each one {args.turn:g} s turn of every contender in a shuffled order "
              f"(round r: group r mod {args.procs}); {where}; torchrun agents never held")
        table = ratio_table(rot["turns"])
        print(TABLE_NOTE)
        lines += summary(table)
    if starts is not None:
        print(f"\n2.  start-up, command to first step, s (median / best of {args.startup_rounds})")
        print(f"    {'':<36}{'1 rank':^19}   {'2 ranks':^19}")
        rows = [("raw   torchrun script.py", "raw", "torchrun"), ("ours  torchrun script.py", "ours", "torchrun"),
                ("ours  python script.py (self-launch)", "ours", "python")]
        for label, contender, how in rows:
            cells = [fmt(starts.get((contender, ranks, how), [])) for ranks in (1, 2)]
            print(f"    {label:<36}{cells[0]}   {cells[1]}")
    if lines:
        print("\nsummary\n" + "\n".join(lines))
    total = time.perf_counter() - began
    waited = rot["waited"] if rot else 0.0
    print(f"\nwhole bench: {total:.0f} s" + (f" ({waited:.0f} s of 1 waiting for idle CPUs)" if waited else ""))
    print("reproduce: .venv/bin/python bench/ddp_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(getattr(args, k)))}" for k in
        ("procs", "turn", "rounds", "warmup", "epoch_steps", "startup_rounds", "seed", "pin"))
          + ("" if args.aa else " --no-aa"))


def bench(args: argparse.Namespace) -> None:
    began = time.perf_counter()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    rot = step_time(args, began) if args.rounds else None
    if args.dump and rot is not None:
        settings = {k: getattr(args, k) for k in ("procs", "turn", "rounds", "warmup", "epoch_steps", "seed", "aa",
                                                     "pin")}
        with open(args.dump, "w") as f:
            f.write(json.dumps({"settings": {**settings, "date": time.strftime("%Y-%m-%d %H:%M")}}) + "\n")
            for t in rot["turns"]:
                f.write(json.dumps(t) + "\n")
    starts = startup(args, began) if args.startup_rounds else None
    report(args, rot, starts, began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=3, help="groups (torchrun + 2 ranks) per contender in 1")
    parser.add_argument("--turn", type=float, default=0.22, help="seconds per turn in 1")
    parser.add_argument("--rounds", type=int, default=300, help="rounds of turns in 1 (0 skips 1)")
    parser.add_argument("--warmup", type=int, default=600,
                        help="steps rank 0 runs before its group is held (past the first logger flush and the "
                        "heap freeze 2 s into a fit)")
    parser.add_argument("--epoch-steps", type=int, default=5000, help="batches per rank and epoch in 1")
    parser.add_argument("--startup-rounds", type=int, default=3, help="launches of each start-up case (0 skips 2)")
    parser.add_argument("--pin", choices=("ranks", "none"), default="ranks",
                        help="in its turn rank 0 on the first CPU, rank 1 on the second (ranks), or no pinning")
    parser.add_argument("--no-aa", dest="aa", action="store_false",
                        help="skip raw' in 1 (a second set of raw groups: the A/A check)")
    parser.add_argument("--seed", type=int, help="seed of the start and turn orders (default: a new one each run)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for other work to leave the CPUs before the groups start, "
                        "before each start-up launch, and between rounds of 1 that saw other work (S in all)")
    parser.add_argument("--dump", metavar="FILE", help="write every turn of 1 to FILE, one JSON object a line")
    parser.add_argument("--pool", metavar="FILE", nargs="+",
                        help="run nothing: 1 over the turns of earlier runs' --dump files together")
    parser.add_argument("--worker", choices=("raw", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--counter", help=argparse.SUPPRESS)
    parser.add_argument("--max-time", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        torch.set_num_threads(1)
        (worker_raw if args.worker == "raw" else worker_ours)(args)
        return
    if args.pool:
        pool(args.pool)
        return
    if args.procs < 1:
        parser.error("--procs must be at least 1")
    if args.seed is None:
        args.seed = random.randrange(10 ** 6)
    try:
        bench(args)
    except KeyboardInterrupt:
        sys.exit("interrupted: every process the bench started has been ended and its temp dir removed")


if __name__ == "__main__":
    main()
