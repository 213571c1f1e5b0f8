"""Live control and monitoring: what the supervisor path costs the training, and how fast it answers.

Jobs start as a user starts them, ``traindeck run --detach`` (the CLI writes run.json and
spawns ``python -m engine.supervisor RUN_DIR``, which starts the ranks), with a TUI-like
client attached that subscribes to every topic (metrics, telemetry, logs, events, state)
and reads continuously. The job is this file in ``--worker`` mode: the tiny MLP of
``bench/overhead.py`` (32→128→2, batch 64, Adam, 1 thread), ``Trainer(log_every_n_steps=1)``,
logging every step its loss, ``bench/t`` (the wall-clock time of the log call, in seconds
after a T0 passed in, so the float stays small) and ``K - 2`` more metrics. Each rank notes
the wall-clock time and its training thread's CPU time (``time.thread_time()``) at the end of
every step after ``--warmup`` steps and writes them to a file. "plain" is the same script as a
plain process (no supervisor, no ``$TRAINDECK_SOCKET``). Measured:

1. step time supervised vs plain, K=2 [target ratio <= 1.02]. ``--procs`` supervised jobs,
   as many plain ones and as many more plain ones (plain', the A/A check) start side by side;
   each is held with SIGSTOP once past its warm-up. Then ``--rounds`` rounds: each gives one
   turn of ``--turn`` s to one process of every contender (round r: process r mod procs), in an
   order shuffled every round, the others held. A turn's figures: wall = its length / the steps
   that ended in it (throughput), thread CPU = the training thread's CPU in it / those steps,
   process CPU = the same for all the rank's threads (both from /proc/<pid>/task/*/schedstat,
   to the nanosecond). A round's log ratio sup / plain compares turns at most a round apart, so
   drift in a shared machine's speed cancels; the estimate is the 10%-trimmed mean of those
   over rounds, its 95% interval a bootstrap that resamples the process sets, then the rounds in
   each (a process's own speed, from its memory layout and the like, stays in the interval).
   plain' / plain must contain 1. With ``--pin rank`` (the default, given 2+ CPUs) the running
   rank, all its threads, has CPU 0 to itself and the supervisors and this process (the client)
   run on the others, as on a many-core box where the supervisor has a core of its own;
   ``--pin thread`` leaves only the training thread alone on CPU 0 (the rank's TensorBoard and
   channel threads then share CPU 1 with the supervisor), ``--pin none`` pins nothing. The
   training thread's off-CPU time and its waits (voluntary context switches) tell GIL and lock
   waits from preemption.
   ``--turn`` stays under the 0.25 s between metric flushes: a resumed job flushes at once, so
   each turn holds exactly one flush (4.5 a second of running, against 4 live). Every other K
   of ``--k`` adds one supervised and one plain job, compared the same way in ``--k-rounds``
   rounds of ``--k-turn`` s turns (their flushes are long, so three a turn).
2. command latency: ``set temperature=...`` (a tunable the module registers and never
   uses) sent by a client until its reply, which rank 0 sends once every rank has agreed
   on it and applied it; 2 ranks on gloo, ``--commands`` commands 50-200 ms apart, p50/p95,
   and the job's step time meanwhile [target p95 <= 150 ms + one step]. Each rank also notes
   when it sees the new value (start of the next batch): sent -> applied on both, and
   whether both applied it at the step the reply names.
3. metric latency, ``self.log`` -> client: receive time - (T0 + value of ``bench/t``), 1 rank,
   for each K from its supervised job running alone for ``--solo`` s after the turns (never
   held again, so a hold never counts as latency) [target p95 <= 300 ms].
4. throughput: K metrics a step (K=2, 10, 50); metric values a second delivered to the
   client during the solo window, the share of all logged values that arrived, the
   supervisor's and the client's CPU, and the step-time ratio vs plain from 1.

    python bench/control.py [--procs 3] [--turn 0.22] [--rounds 240] [--k 2,10,50] [--k-rounds 20]
                            [--k-turn 0.72] [--solo 5] [--commands 50] [--pin rank|thread|none]
                            [--no-aa] [--seed N] [--dump FILE]
    python bench/control.py --pool FILE [FILE ...]   # section 1 over several runs' --dump files

About 5 minutes on 2 shared cores. ``--dump`` writes every turn (JSON lines); ``--pool`` reads
such files and prints section 1 over all their turns together (one table per layout).

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
from typing import Any, Sequence

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
            self.thread_cpu: list[float] = []  # this (the training) thread's CPU seconds at each stamp
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
                self.thread_cpu.append(time.thread_time())
                self.cpu1 = time.process_time()
            if self.steps == args.warmup:
                self.cpu0 = time.process_time()
                (out / f"ready{trainer.global_rank}").write_text(str(os.getpid()))
            if self.steps % 50 == 0 and (out / "stop").exists():
                trainer.should_stop = True

    world = args.devices
    batches = args.steps if args.steps else 5000  # --steps 0: epoch after epoch (~6 s each) until stopped
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
              "stamps": stamps, "thread_cpu": timer.thread_cpu, "changes": timer.changes}
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
        self.rank: Any = None  # rank 0's psutil.Process, once past its warm-up (rotation only)
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
        """Record the supervisor's CPU time now (for its share during a window)."""
        if self.supervised:
            try:
                times = self.sup.cpu_times()
                self.sup_cpu.append((time.time(), times.user + times.system))
            except Exception:
                pass

    def ready_pid(self) -> int | None:
        """Rank 0's pid once it is past its warm-up, else None."""
        ready = self.out / "ready0"
        text = ready.read_text() if ready.exists() else ""
        return int(text) if text.strip() else None

    def wait_ready(self, timeout: float = 180) -> int:
        """Block until rank 0 is past its warm-up; returns its pid."""
        deadline = time.monotonic() + timeout
        while (pid := self.ready_pid()) is None:
            if time.monotonic() > deadline or not self.alive():
                raise SystemExit(f"{self.dir.name} did not get past its warm-up\n{self._logs()}")
            self.sample()
            time.sleep(0.1)
        return pid

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
            lead.update(values_at=w.values_at, dropped=w.dropped, latency=w.latency, counts=dict(w.counts),
                        client_error=w.error)
        return lead

    def _logs(self) -> str:
        paths = [self.dir / "log.txt"]
        if self.supervised:
            paths += sorted((self.run_dir / "logs").glob("*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in paths if p.exists())


# -- turns --------------------------------------------------------------------------------

def _cpu(proc: Any) -> float:
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except Exception:  # gone: counts as nothing more
        return 0.0


def _machine_busy() -> float:
    """CPU seconds all CPUs have been busy since boot (/proc/stat); 0 where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    except (OSError, ValueError):
        return 0.0


def _on_cpu(pid: int) -> tuple[float, float]:
    """(main thread, all threads) CPU seconds of process ``pid``, to the nanosecond (/proc/.../schedstat; the
    same clock as time.thread_time()); (nan, nan) where it cannot be read."""
    total = main = float("nan")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return main, total
    total = 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        total += ns / 1e9
        if tid == str(pid):
            main = ns / 1e9
    return main, total


def _waits(pid: int) -> int:
    """How often the main thread of ``pid`` has blocked (voluntary context switches: a lock, the GIL, I/O)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


def _set_affinity(pid: int, cpus: set[int], main: set[int] | None = None) -> None:
    """Every thread of ``pid`` onto ``cpus``; its main thread onto ``main`` when given."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, main if main is not None and tid == pid else cpus)
        except OSError:
            pass


class Rotation:
    """Jobs past their warm-up, held with SIGSTOP, run one at a time in turns of ``--turn`` seconds.

    A round gives one turn to each group (its processes take the rounds in turn), in an order shuffled
    every round, so drift in a shared machine's speed hits every group alike and each comparison can be
    paired within a round. ``--pin`` decides which CPUs the running rank, the supervisors and this process
    (the client) use (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, jobs: list[Job]) -> None:
        import psutil

        self.args, self.jobs = args, jobs
        self.me = psutil.Process()
        self.turns: list[dict[str, Any]] = []
        self.rng = random.Random(args.seed)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.all_cpus = set(cpus)
        self.layout = ({cpus[0]}, set(cpus[1:])) if args.pin != "none" and len(cpus) >= 2 else None

    def hold_when_ready(self, timeout: float = 300) -> None:
        """Hold every job with SIGSTOP as soon as it is past its warm-up (so the others start faster)."""
        import psutil

        deadline = time.monotonic() + timeout
        pending = list(self.jobs)
        while pending:
            for job in list(pending):
                pid = job.ready_pid()
                if pid is not None:
                    job.rank = psutil.Process(pid)
                    job.rank.suspend()
                    pending.remove(job)
                elif time.monotonic() > deadline or not job.alive():
                    raise SystemExit(f"{job.dir.name} did not get past its warm-up\n{job._logs()}")
            for job in self.jobs:
                job.sample()
            time.sleep(0.05)

    def pin(self, job: Job | None = None) -> None:
        """Apply the layout to ``job`` (its rank and supervisor), or to this process; new threads included."""
        if self.layout is None:
            return
        rank_cpu, rest = self.layout
        if job is None:
            _set_affinity(os.getpid(), rest)
            return
        if self.args.pin == "thread":
            _set_affinity(job.rank.pid, rest, main=rank_cpu)
        else:
            _set_affinity(job.rank.pid, rank_cpu)
        if job.supervised:
            _set_affinity(job.sup.pid, rest)

    def unpin(self) -> None:
        if self.layout is not None:
            _set_affinity(os.getpid(), self.all_cpus)

    def run(self, groups: dict[str, list[Job]], rounds: int, phase: str, length: float) -> None:
        self.pin()
        sups = [job for job in self.jobs if job.supervised]
        slots = min(len(m) for m in groups.values())
        for round_ in range(rounds):
            order = list(groups)
            self.rng.shuffle(order)
            for name in order:
                members = groups[name]
                turn = self.turn(members[round_ % len(members)], length, sups)
                turn.update(group=name, round=f"{phase}{round_}", slot=round_ % slots)
                self.turns.append(turn)

    def turn(self, job: Job, length: float, sups: list[Job]) -> dict[str, Any]:
        self.pin(job)
        rank = job.rank
        busy0, side0 = _machine_busy(), sum(_cpu(j.sup) for j in sups) + _cpu(self.me)
        switches0, waits0 = rank.num_ctx_switches().involuntary, _waits(rank.pid)
        thread0, process0 = _on_cpu(rank.pid)
        begin = time.time()
        rank.resume()
        time.sleep(length)
        rank.suspend()
        end = time.time()
        thread1, process1 = _on_cpu(rank.pid)
        switches1, waits1 = rank.num_ctx_switches().involuntary, _waits(rank.pid)
        side1, busy1 = sum(_cpu(j.sup) for j in sups) + _cpu(self.me), _machine_busy()
        own = process1 - process0 + side1 - side0
        job.sample()
        return {"job": job, "begin": begin, "end": end, "thread_cpu": thread1 - thread0,
                "process_cpu": process1 - process0, "preempted": switches1 - switches0, "waits": waits1 - waits0,
                "others": max(0.0, (busy1 - busy0 - own) / (end - begin))}

    def solo(self, job: Job) -> tuple[float, float]:
        """Let ``job`` run alone for ``--solo`` s, never held again (a hold would count as latency), then tell
        it to stop. Returns the window."""
        self.pin(job)
        job.rank.resume()
        window = (time.time() + SETTLE_S, time.time() + self.args.solo)
        while time.time() < window[1]:
            job.sample()
            time.sleep(0.1)
        job.sample()
        job.stop()
        return window

    def finish(self) -> dict[Job, dict[str, Any]]:
        """Stop and resume every job still held; each job's record; per-turn figures filled in."""
        for job in self.jobs:
            job.stop()
            if job.rank is not None and job.alive():
                try:
                    job.rank.resume()
                except Exception:
                    pass
        records = {job: job.finish() for job in self.jobs}
        for turn in self.turns:
            run = records[turn["job"]]
            stamps, cpu = run["stamps"], run["thread_cpu"]
            i, j = bisect.bisect_left(stamps, turn["begin"]), bisect.bisect_right(stamps, turn["end"])
            ended = turn["steps"] = j - i  # steps that ended in the turn
            ok = ended >= 3
            turn["wall"] = (turn["end"] - turn["begin"]) / ended if ok else None
            turn["thread"] = turn["thread_cpu"] / ended if ok else None
            turn["process"] = turn["process_cpu"] / ended if ok else None
            if ok:  # the training thread's CPU in its expensive steps (metric flushes, epoch ends)
                steps = [b - a for a, b in zip(cpu[i:j], cpu[i + 1:j])]
                typical = statistics.median(steps)
                turn["cpu_total"] = sum(steps)
                turn["cpu_slow"] = sum(d for d in steps if d > SLOW * typical)
                turn["slow_steps"] = sum(d > SLOW * typical for d in steps)
        return records


# -- statistics ---------------------------------------------------------------------------

SLOW = 3.0  # a step costing more than this many times the turn's median step is an expensive one
TRIM = 0.1  # share of per-round ratios left out at each end (turns hit by a burst of other work)
BOOTSTRAP = 2000


def trimmed_mean(values: list[float], trim: float = TRIM) -> float:
    ordered = sorted(values)
    cut = int(len(ordered) * trim)
    kept = ordered[cut:len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


TOTALS = {"wall": lambda t: t["end"] - t["begin"], "thread": lambda t: t["thread_cpu"],
          "process": lambda t: t["process_cpu"]}


def paired_ratio(turns: list[dict[str, Any]], num: set[str], den: set[str], key: str, trim: float | None = None,
                 seed: int = 0) -> tuple[float, float, float, int]:
    """num / den over the rounds where both ran, and a 95% bootstrap interval.

    ``trim`` None: the throughput ratio, num's total ``key`` (turn time, or CPU) over its total steps
    against den's, every turn counting as it came. A fraction: the ``trim``-trimmed mean of the per-round
    log ratios of per-step ``key`` (a typical round: the rounds hit hardest by other work left out, but
    also any rare stall of num's own). The bootstrap resamples the slots (a slot: the rounds one set of
    processes, one of each contender, shared), then the rounds within each: whole rounds keep the
    pairing, whole slots carry the processes' own differences (memory layout and the like) into the
    interval. Returns (ratio, low, high, rounds)."""
    total = TOTALS[key]
    rounds: dict[str, list[Any]] = {}
    for turn in turns:
        if turn["group"] in num | den:
            side = 0 if turn["group"] in num else 1
            entry = rounds.setdefault(turn["round"], [turn["slot"], [0.0, 0.0], [0.0, 0.0], [], []])
            entry[1 + side][0] += total(turn)
            entry[1 + side][1] += turn["steps"]
            if turn.get(key):
                entry[3 + side].append(math.log(turn[key]))
    slots: dict[Any, list[tuple[float, ...]]] = {}
    for slot, (cn, sn), (cd, sd), ln, ld in rounds.values():
        if sn and sd and ln and ld:
            slots.setdefault(slot, []).append((cn, sn, cd, sd, statistics.fmean(ln) - statistics.fmean(ld)))

    def estimate(sample: list[tuple[float, ...]]) -> float:
        if trim is not None:
            return trimmed_mean([r[4] for r in sample], trim)
        cn, sn, cd, sd = (sum(r[i] for r in sample) for i in range(4))
        return math.log((cn / sn) / (cd / sd))

    every = [r for values in slots.values() for r in values]
    if len(every) < 5:
        return float("nan"), float("nan"), float("nan"), len(every)
    rng = random.Random(seed)
    groups = list(slots.values())
    boot = []
    for _ in range(BOOTSTRAP):
        sample: list[tuple[float, ...]] = []
        for values in rng.choices(groups, k=len(groups)):
            sample += rng.choices(values, k=len(values))
        boot.append(estimate(sample))
    boot.sort()
    return (math.exp(estimate(every)), math.exp(boot[int(0.025 * BOOTSTRAP)]),
            math.exp(boot[int(0.975 * BOOTSTRAP) - 1]), len(every))


def per_process(turns: list[dict[str, Any]], key: str) -> dict[tuple[str, Any], float]:
    """Each process (group, slot) against its rounds: trimmed mean of (its log ``key`` - the round's mean)."""
    by_round: dict[str, list[tuple[tuple[str, Any], float]]] = {}
    for turn in turns:
        if turn.get(key):
            by_round.setdefault(turn["round"], []).append(((turn["group"], turn["slot"]), math.log(turn[key])))
    deviations: dict[tuple[str, Any], list[float]] = {}
    for members in by_round.values():
        if len(members) > 1:
            mean = statistics.fmean(v for _, v in members)
            for process, v in members:
                deviations.setdefault(process, []).append(v - mean)
    return {process: math.exp(trimmed_mean(d)) for process, d in deviations.items()}


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args, self.procs = args, procs
        self.t0 = time.time()
        self.count = 0

    def rotation(self, began: float) -> dict[str, Any]:
        """1, 3, 4: every job started side by side, held, then run in turns; then each supervised one alone."""
        args = self.args
        ks = [int(v) for v in args.k.split(",") if v.strip() and int(v) != 2]
        n = args.procs
        kinds = [("supervised", True, 0)] * n + [("plain", False, 0)] * n + ([("plain'", False, 0)] * n if args.aa
                                                                            else [])
        kinds += [(f"{name} K={k}", sup, k - 2) for k in ks for name, sup in (("supervised", True), ("plain", False))]
        order = list(range(len(kinds)))
        random.Random(args.seed).shuffle(order)  # start order: no group always first
        jobs: dict[int, Job] = {}
        for i in order:
            jobs[i] = Job(self, kinds[i][1], 0, kinds[i][2])
        groups: dict[str, list[Job]] = {}
        for i, (name, _, _) in enumerate(kinds):
            groups.setdefault(name, []).append(jobs[i])
        rot = Rotation(args, [jobs[i] for i in sorted(jobs)])
        try:
            rot.hold_when_ready()
            progress(began, f"1 {len(jobs)} jobs past their warm-up, held")
            main = {g: groups[g] for g in ("supervised", "plain", "plain'") if g in groups}
            rot.run(main, args.rounds, "k2-", args.turn)
            progress(began, f"1 K=2: {args.rounds} rounds of {len(main)} turns done")
            if ks:
                rot.run({f"{name} K={k}": groups[f"{name} K={k}"] for k in ks for name in ("supervised", "plain")},
                        args.k_rounds, "kn-", args.k_turn)
                progress(began, f"1 K={','.join(map(str, ks))}: {args.k_rounds} rounds done")
            solos = {}
            for name in ["supervised"] + [f"supervised K={k}" for k in ks]:
                job = groups[name][0]
                solos[name] = (job, rot.solo(job))
                job.finish()  # ends before the next one runs alone
            progress(began, f"3/4 {len(solos)} supervised jobs ran alone for {args.solo:g} s each")
            records = rot.finish()
        finally:
            rot.unpin()
        return {"turns": rot.turns, "groups": groups, "records": records, "solos": solos, "ks": ks,
                "layout": rot.layout, "rot": rot}

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


def interval(r: tuple[float, float, float, int]) -> str:
    return f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"


def solo_figures(job: Job, window: tuple[float, float], run: dict[str, Any]) -> dict[str, Any]:
    """3/4: what the client got while ``job`` ran alone in ``window``."""
    start, end = window
    first = run["warmup"] - 1  # the step logged by the batch that ends at stamps[0]
    stamps = run["stamps"]
    i, j = bisect.bisect_left(stamps, start), bisect.bisect_right(stamps, end)
    k = job.extra + 2
    return {"values_per_s": (sum(run["values_at"].get(first + n, 0) for n in range(i + 1, j))
                             / (stamps[j - 1] - stamps[i])),
            "delivered": sum(n for s, n in run["values_at"].items() if s >= first) / (k * (run["steps"] - first)),
            "dropped": run["dropped"],
            "latency": [lat for _, logged, lat in run["latency"] if start <= logged <= end],
            "sup_cpu": cpu_in_window(job.sup_cpu, start, end) / (end - start),
            "client_cpu": cpu_in_window(job.watcher.cpu, start, end) / (end - start)}


KEYS = (("wall", "wall"), ("thread", "thread CPU"), ("process", "process CPU"))


def judge(main: tuple[float, float, float, int], aa: tuple[float, float, float, int] | None) -> str:
    if aa is not None and not aa[1] <= 1.0 <= aa[2]:
        return "no verdict: the A/A interval excludes 1, so this run's method is biased by more than its noise"
    if main[2] <= 1.02:
        return "demonstrated (the whole 95% interval is <= 1.02)"
    if main[1] > 1.02:
        return "NOT met (the whole 95% interval is > 1.02)"
    return "not resolved by this run (the 95% interval contains 1.02)"


def print_ratios(turns: list[dict[str, Any]], keys: Sequence[tuple[str, str]],
                 rows: list[tuple[str, str, set[str], set[str]]], trimmed: tuple[set[str], set[str]],
                 names: list[str], unit: str) -> tuple[dict[str, dict[str, tuple]], dict[str, tuple]]:
    """The ratio lines of a turn-taking table (bench/ddp_overhead.py prints its own with it too): every row
    (name, label, numerator groups, denominator groups) whose groups ran ("both" always), the trimmed row of
    ``trimmed`` (numerator, denominator), and each ``unit``'s wall time against its rounds' mean.
    Returns the rows' ratios by name and the trimmed ones, each by key of ``keys``."""
    present = {t["group"] for t in turns}
    print("    ratio: time (or CPU) per step over all the turns, paired by round [95% bootstrap interval: process "
          "sets, then rounds]")
    print(f"    {'':<18}" + "".join(f"{label:<24}" for _, label in keys))
    ratios: dict[str, dict[str, tuple]] = {}
    for name, label, num, den in rows:
        if name in present or name == "both":
            ratios[name] = {key: paired_ratio(turns, num, den, key) for key, _ in keys}
            print(f"    {label:<18}" + "".join(f"{interval(ratios[name][key]):<24}" for key, _ in keys))
    typical = {key: paired_ratio(turns, *trimmed, key, trim=TRIM) for key, _ in keys}
    print(f"    {f'  {TRIM:.0%}-trimmed':<18}" + "".join(f"{interval(typical[key]):<24}" for key, _ in keys))
    deviations = per_process(turns, "wall")
    print(f"    each {unit}'s wall time vs its rounds' mean: " + "; ".join(
        f"{name} " + " ".join(f"{v:.3f}" for (g, _), v in sorted(deviations.items(), key=lambda kv: str(kv[0]))
                              if g == name) for name in names))
    return ratios, typical


def ratio_table(main: list[dict[str, Any]]) -> dict[str, Any]:
    """Print section 1's table for the K=2 turns ``main``; returns its ratios."""
    present = {t["group"] for t in main}
    names = [g for g in ("plain", "plain'", "supervised") if g in present]
    print(f"    {'':<14}{'per step, median of turns (us)':^36}{'expensive steps':^22}{'training thread':^22}")
    print(f"    {'':<14}{'wall':>10}{'thread CPU':>12}{'process CPU':>14}{'per turn':>11}{'CPU share':>11}"
          f"{'off CPU us':>12}{'waits/step':>11}")
    for name in names:
        mine = [t for t in main if t["group"] == name]
        medians = [statistics.median([t[key] for t in mine if t.get(key)]) for key, _ in KEYS]
        slow = [t for t in mine if t.get("cpu_total")]
        print(f"    {name:<14}" + "".join(f"{m * 1e6:>{w}.0f}" for m, w in zip(medians, (10, 12, 14)))
              + f"{statistics.fmean(t['slow_steps'] for t in slow):>11.2f}"
              + f"{sum(t['cpu_slow'] for t in slow) / sum(t['cpu_total'] for t in slow) * 100:>10.1f}%"
              + f"{(medians[0] - medians[1]) * 1e6:>12.0f}"
              + f"{sum(t.get('waits', 0) for t in mine) / max(1, sum(t['steps'] for t in mine)):>11.3f}")
    rows = [("plain'", "plain' / plain", {"plain'"}, {"plain"}),
            ("supervised", "sup / plain", {"supervised"}, {"plain"})]
    if "plain'" in present:
        rows.append(("both", "sup / both plain", {"supervised"}, {"plain", "plain'"}))
    ratios, typical = print_ratios(main, KEYS, rows, ({"supervised"}, {"plain", "plain'"}), names, "process")
    others = [t["others"] for t in main]
    rate = {name: sum(t["preempted"] for t in main if t["group"] == name)
            / sum(t["end"] - t["begin"] for t in main if t["group"] == name) for name in names}
    print(f"    other work on the machine during the turns: median {statistics.median(others):.2f} CPUs, p90 "
          f"{pct(others, 0.9):.2f}; training thread preempted " + ", ".join(f"{rate[n]:.0f}/s ({n})" for n in names))
    return {"ratios": ratios, "both": ratios.get("both", ratios.get("supervised")), "typical": typical,
            "aa": ratios.get("plain'", {}).get("wall")}


TABLE_NOTE = ("    (wall: the turn's length over the steps that ended in it, i.e. throughput; thread CPU: the training"
              "\n     thread's own CPU time per step (its schedstat, the clock of time.thread_time()); process CPU:"
              "\n     the rank process, all threads; expensive steps: steps of the training thread costing over "
              f"{SLOW:g}x"
              "\n     the turn's median step (metric flushes, epoch ends), how many a turn and their share of its CPU;"
              "\n     off CPU: wall - thread CPU, the time the training thread was not running (preempted, or"
              "\n     waiting: waits are the times it blocked, on the GIL, a lock or I/O); a round's turns are at"
              "\n     most a round apart, so drift in the machine's speed hits each contender alike; the ratio"
              "\n     counts every turn as it came (throughput); the trimmed row is the "
              f"{TRIM:.0%}-trimmed mean of the"
              "\n     per-round log ratios, a typical round: it leaves out the rounds hit hardest by other work, but"
              "\n     also rare stalls of the supervised job's own, so it may read lower; plain' is a second set of"
              "\n     plain processes: plain' / plain is the A/A check, whose interval must contain 1 for the method"
              "\n     to be trusted)")


def report(args: argparse.Namespace, rot: dict[str, Any] | None, ddp: dict[str, Any] | None, began: float) -> None:
    from importlib.metadata import version

    print(f"\ntiny MLP 32-128-2 (bench/overhead.py), batch {BATCH}, Adam, 1 thread/rank, log_every_n_steps=1, "
          f"{os.cpu_count()} CPUs, torch {version('torch')}; K = metrics logged per step (train/loss, bench/t, "
          f"K-2 more); supervised = `traindeck run --detach` + a client subscribed to {', '.join(TOPICS)}")
    summary: list[str] = []
    if rot is not None:
        turns, groups = rot["turns"], rot["groups"]
        main = [t for t in turns if t["round"].startswith("k2-")]
        layout = rot["layout"]
        where = {"rank": "the running rank (all its threads) alone on CPU {0}, the supervisors and the client on "
                         "CPU {1}",
                 "thread": "the running rank's training thread alone on CPU {0}, everything else (its other "
                           "threads, supervisors, client) on CPU {1}"}.get(args.pin, "no pinning")
        where = where.format(min(layout[0]), ",".join(map(str, sorted(layout[1])))) if layout else "no pinning"
        contenders = [g for g in ("supervised", "plain", "plain'") if g in groups]
        print(f"\n1.  step time, K=2: {args.procs} processes each of {', '.join(contenders)}, started side by side "
              f"with the rest, held with SIGSTOP, run one at a time in turns of {args.turn:g} s; {args.rounds} "
              f"rounds, each one turn of every contender in a shuffled order (round r: process r mod "
              f"{args.procs} of each); {where}")
        table = ratio_table(main)
        both, typical, aa = table["both"], table["typical"], table["aa"]
        sup_turns = [t for t in main if t["group"] == "supervised"]
        span = sum(t["end"] - t["begin"] for t in sup_turns)
        sup_share = sum(cpu_in_window(t["job"].sup_cpu, t["begin"], t["end"]) for t in sup_turns) / span
        client_share = sum(cpu_in_window(t["job"].watcher.cpu, t["begin"], t["end"]) for t in sup_turns) / span
        print(f"    during the supervised turns its supervisor used {sup_share * 100:.1f}% of a core, the client "
              f"{client_share * 100:.1f}%")
        print(TABLE_NOTE)
        ks = rot["ks"]
        rest = [t for t in turns if t["round"].startswith("kn-")]
        if ks:
            print(f"\n    K > 2: one supervised and one plain process for each K, {args.k_rounds} rounds of "
                  f"{2 * len(ks)} turns: ratio [95% interval]")
            for k in ks:
                r = {key: paired_ratio(rest, {f"supervised K={k}"}, {f"plain K={k}"}, key) for key, _ in KEYS}
                print(f"    K={k:<4} " + "  ".join(f"{label} {interval(r[key])}" for key, label in KEYS))
                rot.setdefault("k_ratio", {})[k] = r["wall"]
        figures = {name: solo_figures(job, window, rot["records"][job])
                   for name, (job, window) in rot["solos"].items()}
        print(f"\n4.  each supervised job alone for {args.solo:g} s after the turns (never held again)")
        print(f"    {'K':>3}{'values/s':>10}{'got':>8}{'dropped':>9}{'sup CPU':>9}{'client':>8}"
              f"{'latency p50 ms':>16}{'p95':>7}{'max':>7}{'n':>6}")
        for name, f in figures.items():
            k = rot["solos"][name][0].extra + 2
            lat = f["latency"]
            print(f"    {k:>3}{f['values_per_s']:>10.0f}{f['delivered'] * 100:>7.1f}%{f['dropped']:>9d}"
                  f"{f['sup_cpu'] * 100:>8.1f}%{f['client_cpu'] * 100:>7.1f}%{ms(pct(lat, 0.5)):>16}"
                  f"{ms(pct(lat, 0.95)):>7}{ms(max(lat, default=float('nan'))):>7}{len(lat):>6d}")
        print("    (values/s: metric values a second delivered to the client; got: share of all values logged"
              "\n     after the warm-up that reached it; dropped: live messages the supervisor dropped for it; sup"
              "\n     CPU / client: the supervisor / the client thread in % of one core; latency: self.log -> client"
              "\n     over n points)")
        w = both["wall"]
        summary.append(f"1.  step time supervised / plain, K=2, wall (throughput): {interval(w)}, {w[3]} rounds: "
                       f"target <= 1.02 {judge(w, aa)}")
        summary.append(f"    typical round ({TRIM:.0%}-trimmed) {interval(typical['wall'])}; thread CPU "
                       f"{interval(both['thread'])}, "
                       f"process CPU {interval(both['process'])}"
                       + (f"; A/A plain' / plain wall {interval(aa)}" if aa else "; no A/A (--no-aa)"))
        lat = figures["supervised"]["latency"]
        p95 = pct(lat, 0.95)
        summary.append(f"3.  metric latency, self.log -> client, K=2 ({len(lat)} points): p50 {ms(pct(lat, 0.5))} ms, "
                       f"p95 {ms(p95)} ms, max {ms(max(lat, default=0))} ms, "
                       f"{figures['supervised']['delivered'] * 100:.1f}% delivered "
                       f"(target p95 <= 300 ms: {verdict(p95 <= 0.300)})")
        for name, f in figures.items():
            k = rot["solos"][name][0].extra + 2
            ratio = w if k == 2 else rot["k_ratio"][k]
            summary.append(f"4.  K={k:<3} {f['values_per_s']:>7.0f} values/s delivered, {f['delivered'] * 100:.1f}% of "
                           f"logged, step time x{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] vs plain, metric "
                           f"latency p95 {ms(pct(f['latency'], 0.95))} ms")
    print("\nsummary")
    if ddp is not None:
        lat = ddp["command_latency"]
        step = statistics.median(per_step(r) for r in ddp["ranks"])
        p95 = pct(lat, 0.95)
        seen = ddp["applied_latency"]
        summary.insert(2 if rot else 0,
                       f"2.  command latency, 2 ranks gloo, {len(lat)} `set` commands 50-200 ms apart:\n"
                       f"    sent -> reply (rank 0 replies once both ranks agreed and it applied it): "
                       f"p50 {ms(pct(lat, 0.5))} ms, p95 {ms(p95)} ms, max {ms(max(lat))} ms\n"
                       f"    sent -> seen applied on both ranks (at the start of the next batch): "
                       f"p50 {ms(pct(seen, 0.5))} ms, p95 {ms(pct(seen, 0.95))} ms; "
                       f"{ddp['same_step']} of {len(lat)} applied at the reply's step on both ranks\n"
                       f"    job step time meanwhile {ms(step)} ms (slowest step "
                       f"{ms(max(r['max_step_s'] for r in ddp['ranks']))} ms): target p95 <= 150 ms + one step = "
                       f"{150 + step * 1e3:.1f} ms: {verdict(p95 <= 0.150 + step)}")
    print("\n".join(summary))
    watched = ([rot["records"][j] for j in rot["records"] if j.supervised] if rot else []) + ([ddp] if ddp else [])
    errors = [r["client_error"] for r in watched if r.get("client_error")]
    if errors:
        print(f"client errors: {'; '.join(errors)}")
    print(f"\nwhole bench: {time.perf_counter() - began:.0f} s")
    print("reproduce: .venv/bin/python bench/control.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(getattr(args, k)))}" for k in
        ("warmup", "procs", "turn", "rounds", "k", "k_rounds", "k_turn", "solo", "commands", "seed"))
        + ("" if args.aa else " --no-aa") + f" --pin {args.pin}")


def pool(files: list[str]) -> None:
    """Section 1 over the K=2 turns of several runs' ``--dump`` files together, one table per layout (each run's
    process sets stay separate slots, so the interval still carries the processes' own differences)."""
    runs: dict[str, list[tuple[str, dict[str, Any], list[dict[str, Any]]]]] = {}
    if len({os.path.realpath(f) for f in files}) < len(files):
        raise SystemExit("--pool: a file is named twice")
    for n, name in enumerate(files):
        with open(name) as f:
            settings = json.loads(f.readline())["settings"]
            turns = [json.loads(line) for line in f if line.strip()]
        main = [{**t, "round": f"{n}:{t['round']}", "slot": f"{n}:{t['slot']}"} for t in turns
                if t["round"].startswith("k2-")]
        runs.setdefault(settings["layout"], []).append((name, settings, main))
    for layout, members in runs.items():
        runs_ = f"{len(members)} run{'s' if len(members) > 1 else ''}"
        print(f"\n1.  step time, K=2, pooled over {runs_} (--pin {layout}):")
        for name, settings, main in members:
            both = paired_ratio(main, {"supervised"}, {"plain", "plain'"}, "wall")
            aa = paired_ratio(main, {"plain'"}, {"plain"}, "wall")
            print(f"    {name} ({settings['date']}, {settings['rounds']} rounds of {settings['turn']:g} s turns): "
                  f"sup / both plain wall {interval(both)}, A/A {interval(aa)}")
        table = ratio_table([t for _, _, main in members for t in main])
        print(TABLE_NOTE)
        w = table["both"]["wall"]
        print(f"pooled: step time supervised / plain, K=2, wall (throughput): {interval(w)}, {w[3]} rounds: target "
              f"<= 1.02 {judge(w, table['aa']).replace('this run', 'these runs')}")


def bench(args: argparse.Namespace) -> None:
    procs = Processes()
    began = time.perf_counter()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        b = Bench(args, procs)
        rot = b.rotation(began) if args.rounds else None
        ddp = None
        if args.commands:
            ddp = b.commands()
            progress(began, f"2 commands: p95 {ms(pct(ddp['command_latency'], 0.95))} ms")
        if args.dump and rot is not None:
            settings = {k: getattr(args, k) for k in ("warmup", "procs", "turn", "rounds", "k", "k_rounds", "k_turn",
                                                         "seed", "aa", "pin")}
            with open(args.dump, "w") as f:
                f.write(json.dumps({"settings": {**settings, "layout": args.pin if rot["layout"] else "none",
                                                 "date": time.strftime("%Y-%m-%d %H:%M")}}) + "\n")
                for t in rot["turns"]:
                    f.write(json.dumps({k: v for k, v in t.items() if k != "job"}) + "\n")
        report(args, rot, ddp, began)
    finally:
        procs.cleanup()


def progress(began: float, text: str) -> None:
    print(f"  [{time.perf_counter() - began:4.0f} s] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=300, help="steps each job runs before it is timed")
    parser.add_argument("--procs", type=int, default=3, help="processes per contender in 1 (K=2)")
    parser.add_argument("--turn", type=float, default=0.22,
                        help="seconds per turn in 1 (under the 0.25 s between metric flushes: one flush a turn)")
    parser.add_argument("--rounds", type=int, default=240, help="rounds of turns in 1, K=2 (0 skips 1, 3 and 4)")
    parser.add_argument("--k", default="2,10,50", help="metrics per step, comma-separated, each >= 2; K=2 always "
                        "runs, every other K is one more supervised job for 1 (K > 2) and 4")
    parser.add_argument("--k-rounds", type=int, default=20, help="rounds of turns for the K > 2 jobs in 1")
    parser.add_argument("--k-turn", type=float, default=0.72,
                        help="seconds per turn of the K > 2 jobs (their flushes take longer: three a turn)")
    parser.add_argument("--solo", type=float, default=5.0, help="seconds each supervised job runs alone in 3/4")
    parser.add_argument("--commands", type=int, default=50, help="set commands in 2 (0 skips it)")
    parser.add_argument("--seed", type=int, help="seed of the start and turn orders (default: a new one each run)")
    parser.add_argument("--no-aa", dest="aa", action="store_false",
                        help="skip plain' in 1 (a second set of plain processes: the A/A check)")
    parser.add_argument("--pin", choices=("rank", "thread", "none"), default="rank",
                        help="in 1, the running rank alone on the first CPU, everything else (supervisors, client, "
                        "this process) on the others (rank); only its training thread alone there, its other "
                        "threads with everything else (thread); no pinning (none)")
    parser.add_argument("--dump", metavar="FILE", help="write every turn of 1 to FILE, one JSON object a line")
    parser.add_argument("--pool", metavar="FILE", nargs="+",
                        help="run nothing: section 1 over the turns of earlier runs' --dump files together")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--extra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-time", type=float, default=1800.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.pool:
        pool(args.pool)
        return
    if args.seed is None:
        args.seed = random.randrange(10 ** 6)
    if any(int(v) < 2 for v in args.k.split(",") if v.strip()):
        parser.error("--k: every K counts train/loss and bench/t, so each must be at least 2")
    if args.procs < 1:
        parser.error("--procs must be at least 1")
    try:
        bench(args)
    except KeyboardInterrupt:
        sys.exit("interrupted: every process the bench started has been ended and its temp dir removed")


if __name__ == "__main__":
    main()
