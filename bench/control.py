"""Live control and monitoring: what the supervisor path costs the training, and how fast it answers.

Jobs start as a user starts them, ``traindeck run --detach`` (the CLI writes run.json and
spawns ``python -m engine.supervisor RUN_DIR``, which starts the ranks), with a TUI-like
client attached that subscribes to every topic (metrics, telemetry, logs, events, state)
and reads continuously. The job is this file in ``--worker`` mode: the tiny MLP of
``bench/overhead.py`` (32→128→2, batch 64, Adam, 1 thread), ``Trainer(log_every_n_steps=1)``,
logging every step its loss, ``bench/t`` (the wall-clock time of the log call, in seconds
after a T0 passed in, so the float stays small) and ``K - 2`` more metrics. Each rank times
its steps after ``--warmup`` steps (start-up; the first logger flush imports TensorBoard)
and writes them to a file. "plain" is the same script as a plain process (no supervisor,
no ``$TRAINDECK_SOCKET``). Measured:

1. step time supervised vs plain, K=2 [target ratio <= 1.02], two ways:
   a. separate runs of ``--steps`` steps, alternating supervised/plain, ``--repeats`` rounds;
   b. interleaved: a supervised and a plain job started side by side, then run in turns of
      ``--phase`` seconds, the other one held with SIGSTOP, so that drift in a shared
      machine's speed hits both alike; each job's time per step in each turn (turn length /
      steps ended in it), median over turns; also the job's CPU per step and how often it was
      preempted. Also for every K of 4, and once A/A (two plain jobs): the machine's noise
      floor for this ratio (``--no-aa`` skips it).
2. command latency: ``set temperature=...`` (a tunable the module registers and never
   uses) sent by a client until its reply, which rank 0 sends once every rank has agreed
   on it and applied it; 2 ranks on gloo, ``--commands`` commands 50-200 ms apart, p50/p95,
   and the job's step time meanwhile [target p95 <= 150 ms + one step]. Each rank also notes
   when it sees the new value (start of the next batch): sent -> applied on both, and
   whether both applied it at the step the reply names.
3. metric latency, ``self.log`` -> client: receive time - (T0 + value of ``bench/t``), 1 rank;
   K=2 from the supervised runs of 1a [target p95 <= 300 ms], and for each K of 4 from the
   supervised job of 1b running alone for ``--solo`` s after the turns (never held again, so
   a hold never counts as latency).
4. throughput: K metrics a step (K=2, 10, 50); metric values a second delivered to the
   client during the solo window, the share of all logged values that arrived, the
   supervisor's and the client's CPU, and the step-time ratio vs plain from 1b.

    python bench/control.py [--steps 3000] [--warmup 300] [--repeats 3] [--commands 50]
                            [--k 2,10,50] [--phase 1] [--phases 10] [--solo 5] [--no-aa]

About 4.5 minutes on 2 shared cores. Compare ratios with the A/A row: on a machine shared
with other jobs, ratios of wall time swing by 10-50% from run to run.

Internally the same file is the job: ``--worker --out DIR ...``. Every process the bench
starts and its temp directory are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
TOPICS = ["metrics", "telemetry", "logs", "events", "state"]
BATCH = 64
LINGER_S = "0.5"
SETTLE_S = 0.1  # left out of the solo window after the job resumes


# -- the job (--worker) -------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from engine import Trainer
    from engine.callbacks import Callback
    from overhead import traindeck_net  # same directory: the model of bench/overhead.py

    torch.set_num_threads(1)
    extra, t0, out = args.extra, args.t0, Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    class BenchNet(type(traindeck_net())):  # overhead's Net: logs train/loss every step
        def __init__(self) -> None:
            super().__init__()
            self.register_tunable("temperature", 1.0)

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("bench/t", time.time() - t0, on_step=True, on_epoch=False)
            for i in range(extra):
                self.log(f"bench/m{i:02d}", loss, on_step=True, on_epoch=False)
            return loss

    class Timer(Callback):
        """Wall-clock end of every step after the warm-up; stops the fit when ``out/stop`` appears; notes
        when the ``temperature`` tunable changes (seen at the start of the batch after the control point)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.steps = 0
            self.cpu0 = self.cpu1 = 0.0
            self.temperature = 1.0
            self.changes: list[tuple[int, float, float]] = []  # (global step, new value, wall time seen)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if module.tunables["temperature"] != self.temperature:
                self.temperature = module.tunables["temperature"]
                self.changes.append((trainer.global_step, self.temperature, time.time()))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps += 1
            if self.steps >= args.warmup:
                self.stamps.append(time.time())
                self.cpu1 = time.process_time()
            if self.steps == args.warmup:
                self.cpu0 = time.process_time()
                (out / f"ready{trainer.global_rank}").write_text(str(os.getpid()))
            if self.steps % 50 == 0 and (out / "stop").exists():
                trainer.should_stop = True

    world = args.devices
    batches = args.steps if args.steps else 500  # --steps 0: epoch after epoch until stopped
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * BATCH * world, 32, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    timer = Timer()
    limits = {"max_epochs": 1} if args.steps else {"max_steps": 10 ** 9, "max_time": args.max_time}
    trainer = Trainer(**limits, default_root_dir=args.root, enable_progress_bar=False, enable_checkpointing=False,
                      accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                      log_every_n_steps=1, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(BenchNet(), loader)
    stamps = timer.stamps
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    record = {"rank": trainer.global_rank, "steps": timer.steps, "warmup": args.warmup,
              "timed_steps": len(gaps), "loop_s": stamps[-1] - stamps[0] if gaps else 0.0,
              "cpu_s": timer.cpu1 - timer.cpu0,
              "median_step_s": statistics.median(gaps) if gaps else None, "max_step_s": max(gaps, default=None),
              "stamps": stamps, "changes": timer.changes}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


# -- processes ----------------------------------------------------------------------------

class Processes:
    """Everything the bench starts; ``cleanup`` ends what is left, by pid, and removes the scratch dir."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="tdctl-"))  # short: the sockets live under it
        self.sockets = self.scratch / "s"
        self.sockets.mkdir(mode=0o700)
        self.root = self.scratch / "runs"
        self.supervisors: list[int] = []

    def env(self, supervised: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINDECK_")}
        env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        if supervised:
            env.update(TRAINDECK_SOCKET_DIR=str(self.sockets), TRAINDECK_LINGER_S=LINGER_S)
        return env

    def cleanup(self) -> None:
        import psutil

        victims: dict[int, Any] = {}
        for pid in self.supervisors:
            try:
                sup = psutil.Process(pid)
                victims[pid] = sup
                victims.update({c.pid: c for c in sup.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        mark = str(self.scratch)  # every command line the bench starts names its scratch dir
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid != os.getpid() and any(mark in part for part in proc.info["cmdline"] or []):
                victims.setdefault(proc.pid, proc)
        alive = [p for p in victims.values() if p.is_running()]
        for proc in alive:
            try:
                proc.resume()  # a job held by the interleaving would not see SIGTERM
                if proc.pid in self.supervisors:
                    proc.terminate()  # graceful: the supervisor stops its ranks
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=3)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=3)
        shutil.rmtree(self.scratch, ignore_errors=True)


class Watcher(threading.Thread):
    """A TUI-like client: subscribes to every topic and reads continuously, recording what arrives."""

    def __init__(self, socket_path: str, t0: float) -> None:
        super().__init__(name="bench-watcher", daemon=True)
        self.socket_path, self.t0 = socket_path, t0
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.counts: Counter[str] = Counter()
        self.values_at: dict[int, int] = {}  # step -> metric values received for it
        self.latency: list[tuple[int, float, float]] = []  # (step, wall time of self.log, seconds to here)
        self.dropped = 0
        self.state: dict[str, Any] = {}
        self.cpu: list[tuple[float, float]] = []  # (wall time, this thread's CPU seconds)
        self.error: str | None = None

    def run(self) -> None:
        from engine.client import Client, ConnectError

        client = Client(self.socket_path, name="bench-tui", timeout=10.0)
        try:
            client.connect()
            self.state = client.subscribe(TOPICS)["state"]
            self.subscribed.set()
            next_cpu = 0.0
            while not self.done.is_set():
                message = client.recv(timeout=0.2)
                now = time.time()
                if now >= next_cpu:
                    self.cpu.append((now, time.thread_time()))
                    next_cpu = now + 0.1
                if message is None:
                    continue
                kind = message["type"]
                self.counts[kind] += 1
                if kind == "metrics":
                    for point in message["points"]:
                        values, step = point["values"], point["step"]
                        self.values_at[step] = self.values_at.get(step, 0) + len(values)
                        stamp = values.get("bench/t")
                        if isinstance(stamp, (int, float)):
                            self.latency.append((step, self.t0 + stamp, now - (self.t0 + stamp)))
                elif kind == "state":
                    self.state = message["state"]
                elif kind == "dropped":
                    self.dropped += message["count"]
                elif kind == "bye":
                    break
        except ConnectError as exc:
            if not self.subscribed.is_set():
                self.error = str(exc)
        except Exception as exc:  # reported by the bench, never silently lost
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.cpu.append((time.time(), time.thread_time()))
            self.subscribed.set()
            client.close()


def cpu_in_window(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """CPU seconds spent between two wall-clock times, interpolated from (time, cpu) samples."""
    def at(t: float) -> float:
        i = bisect.bisect_left(samples, (t, -1.0))
        if i == 0:
            return samples[0][1] if samples else 0.0
        if i == len(samples):
            return samples[-1][1]
        (t0, c0), (t1, c1) = samples[i - 1], samples[i]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return at(end) - at(start)


class Job:
    """One run of the worker, supervised (through the CLI, with a Watcher) or plain."""

    def __init__(self, bench: Bench, supervised: bool, steps: int, extra: int, devices: int = 1) -> None:
        self.bench, self.supervised, self.devices, self.extra = bench, supervised, devices, extra
        procs = bench.procs
        bench.count += 1
        self.dir = procs.scratch / f"{bench.count:02d}-{'sup' if supervised else 'plain'}-k{extra + 2}-d{devices}"
        self.dir.mkdir()
        self.out = self.dir / "out"
        job_args = ["--worker", "--out", str(self.out), "--root", str(self.dir / "root"), "--steps", str(steps),
                    "--warmup", str(bench.args.warmup), "--extra", str(extra), "--t0", repr(bench.t0),
                    "--devices", str(devices)]
        self.sup_cpu: list[tuple[float, float]] = []
        if not supervised:
            self.log = open(self.dir / "log.txt", "w")
            self.process = subprocess.Popen([sys.executable, str(SCRIPT), *job_args], env=procs.env(False),
                                            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
            return
        import psutil

        from engine.runs import read_run_file

        self.run_dir = procs.root / self.dir.name
        cli = subprocess.run([sys.executable, "-m", "tui.cli", "run", "--detach", "--name", self.dir.name,
                              "--root-dir", str(procs.root), "--devices", str(devices), str(SCRIPT), *job_args],
                             env=procs.env(True), cwd=REPO, capture_output=True, text=True, timeout=120)
        record = read_run_file(self.run_dir) or {}
        if record.get("supervisor_pid"):
            procs.supervisors.append(record["supervisor_pid"])
        if cli.returncode != 0 or not record.get("socket"):
            raise SystemExit(f"traindeck run failed ({cli.returncode}):\n{cli.stderr[-3000:]}")
        self.socket = record["socket"]
        self.sup = psutil.Process(record["supervisor_pid"])
        self.watcher = Watcher(self.socket, bench.t0)
        self.watcher.start()
        self.watcher.subscribed.wait(30)
        if self.watcher.error:
            raise SystemExit(f"the client could not attach to {self.socket}: {self.watcher.error}")

    def alive(self) -> bool:
        import psutil

        if not self.supervised:
            return self.process.poll() is None
        try:
            return self.sup.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def sample(self) -> None:
        """Record the supervisor's CPU time now (for its share during the timed window)."""
        if self.supervised:
            try:
                times = self.sup.cpu_times()
                self.sup_cpu.append((time.time(), times.user + times.system))
            except Exception:
                pass

    def wait_ready(self, timeout: float = 180) -> int:
        """Block until rank 0 is past its warm-up; returns its pid."""
        deadline = time.monotonic() + timeout
        ready = self.out / "ready0"
        while not (ready.exists() and ready.read_text()):
            if time.monotonic() > deadline or not self.alive():
                raise SystemExit(f"{self.dir.name} did not get past its warm-up\n{self._logs()}")
            self.sample()
            time.sleep(0.1)
        return int(ready.read_text())

    def stop(self) -> None:
        (self.out / "stop").write_text("")

    def finish(self) -> dict[str, Any]:
        """Wait for the job to end; rank 0's record, with what the client saw when supervised."""
        while self.alive():
            self.sample()
            time.sleep(0.2)
        if not self.supervised:
            self.log.close()
            status = self.process.returncode
        else:
            from engine.runs import read_run_file

            self.watcher.done.set()
            self.watcher.join(10)
            status = (read_run_file(self.run_dir) or {}).get("exit_status")
        found = [json.loads(p.read_text()) for p in sorted(self.out.glob("rank*.json"))]
        if status != 0 or len(found) != self.devices:
            raise SystemExit(f"{self.dir.name}: exit {status}, {len(found)} of {self.devices} results\n"
                             f"{self._logs()}")
        lead = next(r for r in found if r["rank"] == 0)
        lead["ranks"] = found
        if self.supervised:
            w = self.watcher
            start, end = lead["stamps"][0], lead["stamps"][-1]
            lead.update(sup_cpu_s=cpu_in_window(self.sup_cpu, start, end),
                        client_cpu_s=cpu_in_window(w.cpu, start, end), values_at=w.values_at, dropped=w.dropped,
                        latency=w.latency, counts=dict(w.counts), client_error=w.error)
        return lead

    def _logs(self) -> str:
        paths = [self.dir / "log.txt"]
        if self.supervised:
            paths += sorted((self.run_dir / "logs").glob("*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in paths if p.exists())


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args, self.procs = args, procs
        self.t0 = time.time()
        self.count = 0

    def separate(self, supervised: bool) -> dict[str, Any]:
        """1a: one run of ``--steps`` steps, K=2."""
        run = Job(self, supervised, self.args.steps, 0).finish()
        if supervised:
            first = run["warmup"] - 1  # stamp i ends the batch that logged step warmup - 1 + i
            run["delivered"] = sum(n for s, n in run["values_at"].items() if s >= first)
            run["expected"] = 2 * (run["steps"] - first)
            run["metric_latency"] = [lat for step, _, lat in run["latency"] if step >= first]
        return run

    def interleaved(self, k: int, aa: bool = False) -> dict[str, Any]:
        """1b/4: a supervised and a plain job side by side taking turns (the other held by SIGSTOP), then
        the supervised one alone for ``--solo`` s, never held again: its metric latency and delivery rate.

        ``aa``: two plain jobs instead (an A/A comparison: the machine's noise floor for the ratio)."""
        import psutil

        sup, plain = Job(self, not aa, 0, k - 2), Job(self, False, 0, k - 2)
        jobs = {"sup": sup, "plain": plain}
        pids = {"sup": psutil.Process(sup.wait_ready()), "plain": psutil.Process(plain.wait_ready())}
        turns: dict[str, list[tuple[float, float]]] = {"sup": [], "plain": []}
        usage: dict[str, list[tuple[float, int]]] = {"sup": [], "plain": []}  # CPU s, involuntary switches
        for proc in pids.values():
            proc.suspend()
        try:
            for round_ in range(self.args.phases):
                for name in (["sup", "plain"] if round_ % 2 == 0 else ["plain", "sup"]):
                    proc = pids[name]
                    before = _usage(proc)
                    begin = time.time()
                    proc.resume()
                    time.sleep(self.args.phase)
                    proc.suspend()
                    turns[name].append((begin, time.time()))
                    after = _usage(proc)
                    usage[name].append((after[0] - before[0], after[1] - before[1]))
                    sup.sample()
            solo = (time.time(), time.time() + (0 if aa else self.args.solo))
            pids["sup"].resume()
            while time.time() < solo[1]:
                sup.sample()
                time.sleep(0.25)
            sup.sample()
        finally:
            for name, proc in pids.items():
                jobs[name].stop()
                proc.resume()
        runs = {"sup": sup.finish(), "plain": plain.finish()}
        result: dict[str, Any] = {"k": k, "aa": aa, "turns": turns, "runs": runs}
        for name, run in runs.items():
            result[name] = [time_per_step(run["stamps"], a, b) for a, b in turns[name]]
            done = [(b - a) / per if per else 0 for (a, b), per in zip(turns[name], result[name])]
            result[f"{name}_job_cpu"] = [cpu / n for (cpu, _), n in zip(usage[name], done) if n]
            result[f"{name}_preempted"] = sum(n for _, n in usage[name]) / sum(b - a for a, b in turns[name])
            result[name] = [per for per in result[name] if per]
        if aa:
            return result
        run = runs["sup"]
        first = run["warmup"] - 1  # the step logged by the batch that ends at stamps[0]
        start, end = solo[0] + SETTLE_S, solo[1]
        i, j = bisect.bisect_left(run["stamps"], start), bisect.bisect_right(run["stamps"], end)
        stamps = run["stamps"]
        result["values_per_s"] = (sum(run["values_at"].get(first + n, 0) for n in range(i + 1, j))
                                  / (stamps[j - 1] - stamps[i]))
        logged = k * (run["steps"] - first)
        result["delivered"] = sum(n for s, n in run["values_at"].items() if s >= first) / logged
        result["dropped"] = run["dropped"]
        result["latency"] = [lat for _, logged, lat in run["latency"] if start <= logged <= end]
        result["sup_cpu"] = cpu_in_window(sup.sup_cpu, start, end) / (end - start)
        result["client_cpu"] = cpu_in_window(sup.watcher.cpu, start, end) / (end - start)
        return result

    def commands(self) -> dict[str, Any]:
        """2: a 2-rank job past its warm-up; ``--commands`` `set` commands 50-200 ms apart, then `stop`."""
        from engine.client import Client

        job = Job(self, True, 0, 0, devices=2)
        job.wait_ready()
        sent: list[tuple[float, float, float, int]] = []  # (value, sent, replied: wall times, step in the reply)
        rng = random.Random(0)
        value = 1.0
        with Client(job.socket, name="bench-ctl", timeout=10.0) as client:
            for _ in range(self.args.commands):
                time.sleep(rng.uniform(0.05, 0.2))
                job.sample()
                value = round(value + rng.uniform(0.01, 0.5) * rng.choice((-1, 1)), 4) if value > 0.6 else 1.5
                began = time.time()
                reply = client.command("set", timeout=30, key="temperature", value=value)
                sent.append((value, began, time.time(), reply.get("step")))
                if reply.get("type") != "reply" or not reply.get("ok"):
                    raise SystemExit(f"set temperature={value} was refused: {reply}")
            reply = client.command("stop", timeout=60, checkpoint=False)
            if not reply.get("ok"):
                raise SystemExit(f"stop was refused: {reply}")
        run = job.finish()
        run["command_latency"] = [replied - began for _, began, replied, _ in sent]
        # every command changes the value, one at a time: the n-th change on a rank is the n-th command
        applied, same_step = [], 0
        for (value, began, _, step), *where in zip(sent, *(r["changes"] for r in run["ranks"])):
            applied.append(max(t for _, _, t in where) - began)
            same_step += all(s == step and v == value for s, v, _ in where)
        run["applied_latency"], run["same_step"] = applied, same_step
        return run


def _usage(proc: Any) -> tuple[float, int]:
    """A process's CPU seconds (all threads) and involuntary context switches (times it was preempted)."""
    times = proc.cpu_times()
    return times.user + times.system, proc.num_ctx_switches().involuntary


def time_per_step(stamps: list[float], start: float, end: float) -> float | None:
    """The turn's length over the steps that ended in it: all the work done in the turn counts, flushes
    included (leaving the first moments out would leave out the flush a resumed job does at once)."""
    done = bisect.bisect_right(stamps, end) - bisect.bisect_left(stamps, start)
    return (end - start) / done if done >= 3 else None


# -- report ------------------------------------------------------------------------------

def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); nan without samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def per_step(run: dict[str, Any]) -> float:
    return run["loop_s"] / run["timed_steps"]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def report(args: argparse.Namespace, separate: dict[str, list], ddp: dict[str, Any] | None,
           mixed: list[dict[str, Any]], began: float) -> None:
    from importlib.metadata import version

    print(f"\ntiny MLP 32-128-2 (bench/overhead.py), batch {BATCH}, Adam, 1 thread/rank, log_every_n_steps=1, "
          f"{os.cpu_count()} CPUs, torch {version('torch')}; K = metrics logged per step (train/loss, bench/t, "
          f"K-2 more); supervised = `traindeck run --detach` + a client subscribed to {', '.join(TOPICS)}")
    if separate["sup"]:
        sup, plain = separate["sup"], separate["plain"]
        print(f"\n1a. step time, separate runs alternating, K=2, {args.steps} steps (steps {args.warmup}.. timed), "
              f"{len(sup)} rounds, medians")
        print(f"    {'':<12}{'mean us':>9}{'ratio':>7}{'median us':>11}{'ratio':>7}{'CPU us':>8}{'ratio':>7}"
              f"{'sup CPU':>9}{'client':>8}   per-round mean ratios")
        base = {key: statistics.median(fn(r) for r in plain) for key, fn in
                (("mean", per_step), ("median", lambda r: r["median_step_s"]),
                 ("cpu", lambda r: r["cpu_s"] / r["timed_steps"]))}
        for name, runs in (("plain", plain), ("supervised", sup)):
            mean = statistics.median(per_step(r) for r in runs)
            med = statistics.median(r["median_step_s"] for r in runs)
            cpu = statistics.median(r["cpu_s"] / r["timed_steps"] for r in runs)
            line = (f"    {name:<12}{mean * 1e6:>9.0f}{mean / base['mean']:>7.3f}{med * 1e6:>11.0f}"
                    f"{med / base['median']:>7.3f}{cpu * 1e6:>8.0f}{cpu / base['cpu']:>7.3f}")
            if name == "supervised":
                sup_pct = statistics.median(r["sup_cpu_s"] / r["loop_s"] * 100 for r in runs)
                cli_pct = statistics.median(r["client_cpu_s"] / r["loop_s"] * 100 for r in runs)
                pairs = " ".join(f"{per_step(a) / per_step(b):.3f}" for a, b in zip(sup, plain))
                line += f"{sup_pct:>8.1f}%{cli_pct:>7.1f}%   {pairs}"
            print(line)
        print("    (mean: loop time / steps, the throughput; median: of single steps; CPU: the job process, all "
              "threads;\n     sup CPU / client: the supervisor / the client thread, % of one core while timed)")
    if mixed:
        print(f"\n1b. interleaved: supervised and plain side by side in turns of {args.phase:g} s (the other held), "
              f"{args.phases} turns each, medians over turns")
        print(f"    {'K':>7}{'plain us':>10}{'sup us':>9}{'ratio':>7}{'turn ratios p25..p75':>22}"
              f"{'CPU plain us':>14}{'sup us':>8}{'ratio':>7}{'preempted/s plain':>19}{'sup':>6}")
        for m in mixed:
            ratios = [a / b for a, b in zip(m["sup"], m["plain"])]
            wall = [statistics.median(m[n]) for n in ("plain", "sup")]
            cpu = [statistics.median(m[f"{n}_job_cpu"]) for n in ("plain", "sup")]
            label = f"{m['k']} A/A" if m["aa"] else str(m["k"])
            print(f"    {label:>7}{wall[0] * 1e6:>10.0f}{wall[1] * 1e6:>9.0f}{wall[1] / wall[0]:>7.3f}"
                  f"{pct(ratios, 0.25):>14.3f}..{pct(ratios, 0.75):.3f}{cpu[0] * 1e6:>14.0f}{cpu[1] * 1e6:>8.0f}"
                  f"{cpu[1] / cpu[0]:>7.3f}{m['plain_preempted']:>19.0f}{m['sup_preempted']:>6.0f}")
        print("    (us: wall time per step; turn ratios: sup/plain of adjacent turns; CPU: the job process's CPU"
              "\n     time per step, all threads; preempted/s: the job's involuntary context switches, i.e. it was"
              "\n     runnable but another process had the CPU; A/A: two plain jobs, \"sup\" being the second: the"
              "\n     noise floor)")
        print(f"\n4.  the supervised job of 1b alone for {args.solo:g} s after its turns (never held again)")
        print(f"    {'K':>3}{'values/s':>10}{'got':>8}{'dropped':>9}{'sup CPU':>9}{'client':>8}"
              f"{'latency p50 ms':>16}{'p95':>7}{'max':>7}{'n':>6}")
        for m in (m for m in mixed if not m["aa"]):
            lat = m["latency"]
            print(f"    {m['k']:>3}{m['values_per_s']:>10.0f}{m['delivered'] * 100:>7.1f}%{m['dropped']:>9d}"
                  f"{m['sup_cpu'] * 100:>8.1f}%{m['client_cpu'] * 100:>7.1f}%{ms(pct(lat, 0.5)):>16}"
                  f"{ms(pct(lat, 0.95)):>7}{ms(max(lat, default=float('nan'))):>7}{len(lat):>6d}")
        print("    (values/s: metric values a second delivered to the client; got: share of all values logged"
              "\n     after the warm-up that reached it; dropped: live messages the supervisor dropped for it; sup"
              "\n     CPU / client: the supervisor / the client thread in % of one core; latency: self.log -> client"
              "\n     over n points)")
    print("\nsummary")
    if separate["sup"]:
        ratio = statistics.median(map(per_step, separate["sup"])) / statistics.median(map(per_step, separate["plain"]))
        print(f"1.  step time supervised / plain, K=2, separate runs (1a): {ratio:.3f}"
              f"  (target <= 1.02: {verdict(ratio <= 1.02)})")
    two = next((m for m in mixed if m["k"] == 2 and not m["aa"]), None)
    if two is not None:
        ratio = statistics.median(two["sup"]) / statistics.median(two["plain"])
        print(f"    step time supervised / plain, K=2, interleaved (1b):   {ratio:.3f}"
              f"  (target <= 1.02: {verdict(ratio <= 1.02)})")
    for m in (m for m in mixed if m["aa"]):
        ratio = statistics.median(m["sup"]) / statistics.median(m["plain"])
        ratios = [a / b for a, b in zip(m["sup"], m["plain"])]
        print(f"    noise floor, plain / plain, K={m['k']}, interleaved (A/A):  {ratio:.3f}  (adjacent turns "
              f"p25..p75 {pct(ratios, 0.25):.3f}..{pct(ratios, 0.75):.3f})")
    if ddp is not None:
        lat = ddp["command_latency"]
        step = statistics.median(per_step(r) for r in ddp["ranks"])
        p95 = pct(lat, 0.95)
        seen = ddp["applied_latency"]
        print(f"2.  command latency, 2 ranks gloo, {len(lat)} `set` commands 50-200 ms apart:\n"
              f"    sent -> reply (rank 0 replies once both ranks agreed and it applied it): "
              f"p50 {ms(pct(lat, 0.5))} ms, p95 {ms(p95)} ms, max {ms(max(lat))} ms\n"
              f"    sent -> seen applied on both ranks (at the start of the next batch): "
              f"p50 {ms(pct(seen, 0.5))} ms, p95 {ms(pct(seen, 0.95))} ms; "
              f"{ddp['same_step']} of {len(lat)} applied at the reply's step on both ranks\n"
              f"    job step time meanwhile {ms(step)} ms (slowest step "
              f"{ms(max(r['max_step_s'] for r in ddp['ranks']))} ms): target p95 <= 150 ms + one step = "
              f"{150 + step * 1e3:.1f} ms: {verdict(p95 <= 0.150 + step)}")
    if separate["sup"]:
        lat = [s for r in separate["sup"] for s in r["metric_latency"]]
        p95 = pct(lat, 0.95)
        got = sum(r["delivered"] for r in separate["sup"]) / sum(r["expected"] for r in separate["sup"])
        print(f"3.  metric latency, self.log -> client, K=2 (1a, {len(lat)} points): p50 {ms(pct(lat, 0.5))} ms, "
              f"p95 {ms(p95)} ms, max {ms(max(lat, default=0))} ms, {got * 100:.1f}% delivered "
              f"(target p95 <= 300 ms: {verdict(p95 <= 0.300)})")
    for m in (m for m in mixed if not m["aa"]):
        print(f"4.  K={m['k']:<3} {m['values_per_s']:>7.0f} values/s delivered, {m['delivered'] * 100:.1f}% of logged, "
              f"step time x{statistics.median(m['sup']) / statistics.median(m['plain']):.3f} vs plain, "
              f"metric latency p95 {ms(pct(m['latency'], 0.95))} ms")
    watched = separate["sup"] + [m["runs"]["sup"] for m in mixed if not m["aa"]] + ([ddp] if ddp else [])
    errors = [r["client_error"] for r in watched if r.get("client_error")]
    if errors:
        print(f"client errors: {'; '.join(errors)}")
    print(f"\nwhole bench: {time.perf_counter() - began:.0f} s")
    print("reproduce: .venv/bin/python bench/control.py " + " ".join(
        f"--{k} {shlex.quote(str(getattr(args, k)))}" for k in
        ("steps", "warmup", "repeats", "commands", "k", "phase", "phases", "solo")) + ("" if args.aa else " --no-aa"))


def bench(args: argparse.Namespace) -> None:
    procs = Processes()
    began = time.perf_counter()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        b = Bench(args, procs)
        separate: dict[str, list] = {"sup": [], "plain": []}
        for round_ in range(args.repeats):
            for case in (["sup", "plain"] if round_ % 2 == 0 else ["plain", "sup"]):
                run = b.separate(case == "sup")
                separate[case].append(run)
                progress(began, f"1a round {round_ + 1}/{args.repeats} {case}: {per_step(run) * 1e6:.0f} us/step")
        ddp = None
        if args.commands:
            ddp = b.commands()
            progress(began, f"2 commands: p95 {ms(pct(ddp['command_latency'], 0.95))} ms")
        mixed = []
        ks = [(int(v), False) for v in args.k.split(",") if v.strip()]
        for k, aa in ks + ([(2, True)] if args.aa else []):
            mixed.append(b.interleaved(k, aa))
            ratio = statistics.median(mixed[-1]["sup"]) / statistics.median(mixed[-1]["plain"])
            progress(began, f"1b{' A/A' if aa else '/4'} K={k}: ratio {ratio:.3f}")
        report(args, separate, ddp, mixed, began)
    finally:
        procs.cleanup()


def progress(began: float, text: str) -> None:
    print(f"  [{time.perf_counter() - began:4.0f} s] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per run in 1a")
    parser.add_argument("--warmup", type=int, default=300, help="steps left out of every timing")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (supervised, plain) in 1a (0 skips 1a)")
    parser.add_argument("--commands", type=int, default=50, help="set commands in 2 (0 skips it)")
    parser.add_argument("--k", default="2,10,50", help="metrics per step for 1b/4, comma-separated, each >= 2")
    parser.add_argument("--phase", type=float, default=1.0, help="seconds per turn in 1b")
    parser.add_argument("--phases", type=int, default=10, help="turns of each job in 1b")
    parser.add_argument("--solo", type=float, default=5.0, help="seconds the supervised job runs alone in 3/4")
    parser.add_argument("--no-aa", dest="aa", action="store_false",
                        help="skip the A/A run of 1b (plain vs plain, K=2: the machine's noise floor)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--extra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-time", type=float, default=900.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if any(int(v) < 2 for v in args.k.split(",") if v.strip()):
        parser.error("--k: every K counts train/loss and bench/t, so each must be at least 2")
    if args.repeats and args.warmup + 10 >= args.steps:
        parser.error("--warmup must be well below --steps")
    try:
        bench(args)
    except KeyboardInterrupt:
        sys.exit("interrupted: every process the bench started has been ended and its temp dir removed")


if __name__ == "__main__":
    main()
