"""Live control and monitoring: what the supervisor path costs the training, and how fast it answers.

Jobs are started as a user starts them (``traindeck run --detach``: the CLI writes run.json
and spawns ``python -m engine.supervisor RUN_DIR``, which runs the ranks), with a TUI-like
client attached that subscribes to every topic (metrics, telemetry, logs, events, state)
and reads continuously. The job is this file in ``--worker`` mode: the tiny MLP of
``bench/overhead.py`` (32→128→2, batch 64, Adam, 1 thread), ``Trainer(log_every_n_steps=1)``,
logging its loss, ``bench/t`` (wall-clock time of the log call, as seconds since a T0 passed
in, so the float stays small) and ``extra`` more metrics every step. Each rank times its own
steps after ``--warmup`` steps (start-up, the first logger flush importing TensorBoard) and
writes them to a file. Measured:

1. step time with supervisor + client vs the same script run as a plain process (no
   ``$TRAINDECK_SOCKET``), rounds alternating, medians and their ratio [target <= 1.02];
2. command latency, ``set temperature=...`` sent by a client until its reply (rank 0 replies
   once every rank has agreed on and applied it), 2 ranks on gloo, p50/p95, with the job's
   step time [target p95 <= 150 ms + one step];
3. metric latency, ``self.log`` to the client: receive time - (T0 + value of ``bench/t``)
   [target p95 <= 300 ms], from the runs of 1 and 4;
4. throughput: K metrics a step (2 = loss + ``bench/t``, then more), values/s delivered to
   the client, whether all arrive, and the step-time ratio against no supervisor.

    python bench/control.py [--steps 3000] [--warmup 300] [--repeats 3] [--commands 50]
                            [--k 10,50] [--k-steps 1500] [--k-repeats 2]

Internally the same file is the job: ``--worker --out DIR ...``. Every process it starts and
its temp directory are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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


# -- the job (--worker) -------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from engine import Trainer
    from engine.callbacks import Callback
    from overhead import traindeck_net  # same directory: the model of bench/overhead.py

    torch.set_num_threads(1)
    extra, t0 = args.extra, args.t0

    class BenchNet(type(traindeck_net())):  # overhead's Net: logs train/loss every step
        def __init__(self) -> None:
            super().__init__()
            self.register_tunable("temperature", 1.0)  # the target of `set` commands; unused

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("bench/t", time.time() - t0, on_step=True, on_epoch=False)
            for i in range(extra):
                self.log(f"bench/m{i:02d}", loss, on_step=True, on_epoch=False)
            return loss

    class Timer(Callback):
        """Times every step after the warm-up: mean over the window, median and slowest single step."""

        def __init__(self) -> None:
            self.last = 0.0
            self.begin = self.cpu0 = self.wall0 = 0.0
            self.gaps: list[float] = []
            self.steps = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            self.steps += 1
            if self.steps > args.warmup:
                self.gaps.append(now - self.last)
            elif self.steps == args.warmup:
                self.begin, self.cpu0, self.wall0 = now, time.process_time(), time.time()
            self.last = now

    world = args.devices
    batches = args.steps if args.steps else 500  # --steps 0: run until stopped, epoch after epoch
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
    timed = len(timer.gaps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"rank": trainer.global_rank, "steps": timer.steps, "timed_steps": timed,
              "loop_s": timer.last - timer.begin, "cpu_s": time.process_time() - timer.cpu0,
              "median_step_s": statistics.median(timer.gaps) if timed else None,
              "max_step_s": max(timer.gaps) if timed else None,
              "window": [timer.wall0, timer.wall0 + (timer.last - timer.begin)], "warmup": args.warmup,
              "supervised": bool(os.environ.get("TRAINDECK_SOCKET"))}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


# -- processes: start, watch, clean up ----------------------------------------------------

class Processes:
    """Everything the bench starts; ``cleanup`` ends what is left, by pid, and removes the scratch dir."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="tdctl-"))  # short: socket paths live under it
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
        mark = str(self.scratch)  # every command line we start names the scratch dir; nothing else does
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid != os.getpid() and any(mark in part for part in proc.info["cmdline"] or []):
                victims.setdefault(proc.pid, proc)
        alive = [p for p in victims.values() if p.is_running()]
        for proc in alive:
            if proc.pid in self.supervisors:
                proc.terminate()  # graceful: the supervisor stops its ranks
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
        self.latency: list[tuple[int, float]] = []  # (step, seconds from self.log to here)
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
                            self.latency.append((step, now - (self.t0 + stamp)))
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


def cpu_in_window(samples: list[tuple[float, float]], window: list[float]) -> float:
    """CPU seconds spent inside ``window`` (wall-clock), interpolated from (time, cpu) samples."""
    def at(t: float) -> float:
        before = [s for s in samples if s[0] <= t]
        after = [s for s in samples if s[0] >= t]
        if not before:
            return samples[0][1] if samples else 0.0
        if not after:
            return samples[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return at(window[1]) - at(window[0])


def worker_args(out: Path, root: Path, steps: int, warmup: int, extra: int, t0: float, devices: int = 1,
                max_time: float = 600.0) -> list[str]:
    return ["--worker", "--out", str(out), "--root", str(root), "--steps", str(steps), "--warmup", str(warmup),
            "--extra", str(extra), "--t0", repr(t0), "--devices", str(devices), "--max-time", str(max_time)]


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.t0 = time.time()
        self.count = 0

    def _dir(self, label: str) -> Path:
        self.count += 1
        path = self.procs.scratch / f"{self.count:02d}-{label}"
        path.mkdir()
        return path

    def plain(self, steps: int, extra: int) -> dict[str, Any]:
        """The job as a plain process: no supervisor, no socket."""
        run = self._dir(f"plain-k{extra + 2}")
        command = [sys.executable, str(SCRIPT), *worker_args(run / "out", run / "root", steps, self.args.warmup,
                                                              extra, self.t0)]
        with open(run / "log.txt", "w") as log:
            status = subprocess.run(command, env=self.procs.env(False), cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
        return self._results(run, status, 1)[0]

    def supervised(self, steps: int, extra: int, devices: int = 1, commands: int = 0) -> dict[str, Any]:
        """The job under `traindeck run --detach` with a Watcher attached; optionally send commands meanwhile."""
        import psutil

        from engine.runs import read_run_file

        run = self._dir(f"sup-k{extra + 2}-d{devices}")
        name = run.name
        command = [sys.executable, "-m", "tui.cli", "run", "--detach", "--name", name,
                   "--root-dir", str(self.procs.root), "--devices", str(devices), str(SCRIPT),
                   *worker_args(run / "out", run / "root", steps, self.args.warmup, extra, self.t0, devices)]
        cli = subprocess.run(command, env=self.procs.env(True), cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        record = read_run_file(self.procs.root / name) or {}
        if record.get("supervisor_pid"):
            self.procs.supervisors.append(record["supervisor_pid"])
        if cli.returncode != 0 or not record.get("socket"):
            raise SystemExit(f"traindeck run failed ({cli.returncode}):\n{cli.stderr[-3000:]}")
        sup = psutil.Process(record["supervisor_pid"])
        watcher = Watcher(record["socket"], self.t0)
        watcher.start()
        watcher.subscribed.wait(30)
        if watcher.error:
            raise SystemExit(f"the client could not attach: {watcher.error}")
        sup_cpu: list[tuple[float, float]] = []
        latencies: list[float] = []
        if commands:
            latencies = self._commands(record["socket"], watcher, sup, sup_cpu, commands)
        while sup.is_running() and sup.status() != psutil.STATUS_ZOMBIE:
            self._sample(sup, sup_cpu)
            time.sleep(0.2)
        watcher.done.set()
        watcher.join(10)
        status = (read_run_file(self.procs.root / name) or {}).get("exit_status")
        results = self._results(run, status, devices, self.procs.root / name)
        lead = next(r for r in results if r["rank"] == 0)
        window = lead["window"]
        lo, hi = lead["warmup"], lead["steps"] - 1  # values logged in batch n (1-based) carry step n - 1
        lead.update(
            sup_cpu_s=cpu_in_window(sup_cpu, window), client_cpu_s=cpu_in_window(watcher.cpu, window),
            delivered=sum(n for step, n in watcher.values_at.items() if lo <= step <= hi),
            expected=(extra + 2) * (hi - lo + 1), dropped=watcher.dropped, counts=dict(watcher.counts),
            metric_latency=[s for step, s in watcher.latency if lo <= step <= hi],
            command_latency=latencies, ranks=results, client_error=watcher.error)
        return lead

    def _sample(self, sup: Any, samples: list[tuple[float, float]]) -> None:
        import psutil

        try:
            times = sup.cpu_times()
            samples.append((time.time(), times.user + times.system))
        except psutil.Error:
            pass

    def _commands(self, socket_path: str, watcher: Watcher, sup: Any, sup_cpu: list[tuple[float, float]],
                  n: int) -> list[float]:
        """Wait for the warm-up to pass, send ``n`` `set` commands spaced 50-200 ms apart, then stop the job."""
        from engine.client import Client

        deadline = time.monotonic() + 180
        while (watcher.state.get("step") or 0) < self.args.warmup + 50:
            if time.monotonic() > deadline or not sup.is_running():
                raise SystemExit(f"the 2-rank job did not get past its warm-up (state {watcher.state})")
            self._sample(sup, sup_cpu)
            time.sleep(0.1)
        latencies = []
        rng = random.Random(0)
        with Client(socket_path, name="bench-ctl", timeout=10.0) as client:
            for _ in range(n):
                time.sleep(rng.uniform(0.05, 0.2))
                self._sample(sup, sup_cpu)
                value = round(rng.uniform(0.5, 2.0), 4)
                sent = time.perf_counter()
                reply = client.command("set", timeout=30, key="temperature", value=value)
                latencies.append(time.perf_counter() - sent)
                if reply.get("type") != "reply" or not reply.get("ok"):
                    raise SystemExit(f"set temperature={value} was refused: {reply}")
            reply = client.command("stop", timeout=60, checkpoint=False)
            if not reply.get("ok"):
                raise SystemExit(f"stop was refused: {reply}")
        return latencies

    def _results(self, run: Path, status: int, ranks: int, run_dir: Path | None = None) -> list[dict[str, Any]]:
        out = run / "out"
        found = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))] if out.exists() else []
        if status != 0 or len(found) != ranks:
            logs = [run / "log.txt"] + (sorted((run_dir / "logs").glob("*.log")) if run_dir else [])
            text = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())
            raise SystemExit(f"{run.name}: exit {status}, {len(found)} of {ranks} results\n{text}")
        return found


# -- report ------------------------------------------------------------------------------

def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); nan for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def per_step(run: dict[str, Any]) -> float:
    return run["loop_s"] / run["timed_steps"]


def throughput_rows(k: int, sup: list[dict[str, Any]], plain: list[dict[str, Any]]) -> list[str]:
    med_sup = statistics.median(per_step(r) for r in sup)
    med_plain = statistics.median(per_step(r) for r in plain)
    pairs = " ".join(f"{per_step(a) / per_step(b):.3f}" for a, b in zip(sup, plain))
    cpu_sup = statistics.median(r["cpu_s"] / r["timed_steps"] for r in sup)
    cpu_plain = statistics.median(r["cpu_s"] / r["timed_steps"] for r in plain)
    sup_pct = statistics.median(r["sup_cpu_s"] / r["loop_s"] * 100 for r in sup)
    cli_pct = statistics.median(r["client_cpu_s"] / r["loop_s"] * 100 for r in sup)
    rate = statistics.median(r["delivered"] / r["loop_s"] for r in sup)
    got = sum(r["delivered"] for r in sup) / max(1, sum(r["expected"] for r in sup))
    dropped = sum(r["dropped"] for r in sup)
    lat = [s for r in sup for s in r["metric_latency"]]
    return [
        f"{k:>3}  {'plain':<11}{med_plain * 1e6:>9.0f}{1.0:>7.3f}{cpu_plain * 1e6:>9.0f}{'':>8}{'':>8}"
        f"{k / med_plain:>10.0f}",
        f"{k:>3}  {'supervised':<11}{med_sup * 1e6:>9.0f}{med_sup / med_plain:>7.3f}{cpu_sup * 1e6:>9.0f}"
        f"{sup_pct:>7.1f}%{cli_pct:>7.1f}%{rate:>10.0f}{got * 100:>8.1f}%{dropped:>6d}"
        f"{pct(lat, 0.5) * 1e3:>8.0f}{pct(lat, 0.95) * 1e3:>7.0f}{max(lat, default=float('nan')) * 1e3:>7.0f}"
        f"   pairs {pairs}",
    ]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(args: argparse.Namespace, base: dict[str, list], ks: dict[int, dict[str, list]],
           ddp: dict[str, Any] | None, began: float) -> None:
    from importlib.metadata import version

    print(f"\ntiny MLP 32-128-2 (bench/overhead.py), batch {BATCH}, Adam, 1 thread/rank, log_every_n_steps=1, "
          f"{os.cpu_count()} CPUs, torch {version('torch')}")
    print(f"K = metrics logged per step (train/loss + bench/t + extras); times over steps {args.warmup + 1}.."
          f"; medians over rounds")
    print("\n1+4. step time, supervisor + TUI-like client (all topics) vs plain process")
    print(f"{'K':>3}  {'case':<11}{'us/step':>9}{'ratio':>7}{'cpu us':>9}{'sup':>8}{'client':>8}"
          f"{'values/s':>10}{'got':>9}{'drop':>6}{'lat p50':>8}{'p95':>7}{'max':>7}")
    for k, runs in sorted({2: base, **ks}.items()):
        if runs["sup"]:
            for line in throughput_rows(k, runs["sup"], runs["plain"]):
                print(line)
    print("  (sup/client: CPU of the supervisor / the client thread as % of one core during the timed window;"
          "\n   values/s: metric values per second delivered to the client; got: share of those logged;"
          "\n   lat: self.log -> client in ms; pairs: per-round ratio supervised/plain)")
    ratio = statistics.median(per_step(r) for r in base["sup"]) / statistics.median(per_step(r) for r in base["plain"])
    print(f"\n1. throughput ratio at K=2 (median/median, {len(base['sup'])} rounds): {ratio:.3f}  "
          f"(target <= 1.02: {verdict(ratio <= 1.02)})")
    if ddp is not None:
        lat = ddp["command_latency"]
        step = statistics.median(per_step(r) for r in ddp["ranks"])
        p95 = pct(lat, 0.95)
        print(f"\n2. command latency, set temperature=..., sent -> reply (applied on all ranks), 2 ranks gloo, "
              f"{len(lat)} commands 50-200 ms apart:")
        print(f"   p50 {pct(lat, 0.5) * 1e3:.1f} ms   p95 {p95 * 1e3:.1f} ms   max {max(lat) * 1e3:.1f} ms   "
              f"min {min(lat) * 1e3:.1f} ms")
        print(f"   job step time meanwhile {step * 1e3:.2f} ms (mean over ranks' timed windows; slowest step "
              f"{max(r['max_step_s'] for r in ddp['ranks']) * 1e3:.0f} ms)")
        print(f"   target p95 <= 150 ms + one step = {150 + step * 1e3:.1f} ms: {verdict(p95 <= 0.150 + step)}")
    lat = [s for r in base["sup"] for s in r["metric_latency"]]
    p95 = pct(lat, 0.95)
    print(f"\n3. metric latency, self.log -> client, 1 rank, K=2, {len(lat)} points from {len(base['sup'])} runs:")
    print(f"   p50 {pct(lat, 0.5) * 1e3:.1f} ms   p95 {p95 * 1e3:.1f} ms   max {max(lat, default=0) * 1e3:.1f} ms   "
          f"(target p95 <= 300 ms: {verdict(p95 <= 0.300)})")
    print(f"\nwhole bench: {time.perf_counter() - began:.0f} s")
    print("reproduce: .venv/bin/python bench/control.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("steps", args.steps), ("warmup", args.warmup),
                                                    ("repeats", args.repeats), ("commands", args.commands),
                                                    ("k", args.k), ("k_steps", args.k_steps),
                                                    ("k_repeats", args.k_repeats))))


def bench(args: argparse.Namespace) -> None:
    procs = Processes()
    began = time.perf_counter()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        b = Bench(args, procs)
        base: dict[str, list] = {"sup": [], "plain": []}
        for round_ in range(args.repeats):
            order = ["sup", "plain"] if round_ % 2 == 0 else ["plain", "sup"]
            for case in order:
                run = b.supervised(args.steps, 0) if case == "sup" else b.plain(args.steps, 0)
                base[case].append(run)
                progress(began, f"K=2 round {round_ + 1}/{args.repeats} {case}: {per_step(run) * 1e6:.0f} us/step")
        ddp = None
        if args.commands:
            ddp = b.supervised(0, 0, devices=2, commands=args.commands)
            progress(began, f"commands: p95 {pct(ddp['command_latency'], 0.95) * 1e3:.0f} ms")
        ks: dict[int, dict[str, list]] = {}
        for k in [int(v) for v in args.k.split(",") if v.strip()]:
            ks[k] = {"sup": [], "plain": []}
            for round_ in range(args.k_repeats):
                order = ["sup", "plain"] if round_ % 2 == 0 else ["plain", "sup"]
                for case in order:
                    run = b.supervised(args.k_steps, k - 2) if case == "sup" else b.plain(args.k_steps, k - 2)
                    ks[k][case].append(run)
                    progress(began, f"K={k} round {round_ + 1}/{args.k_repeats} {case}: "
                                    f"{per_step(run) * 1e6:.0f} us/step")
        report(args, base, ks, ddp, began)
    finally:
        procs.cleanup()


def progress(began: float, text: str) -> None:
    print(f"  [{time.perf_counter() - began:5.0f} s] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per run for 1 and 3")
    parser.add_argument("--warmup", type=int, default=300, help="steps left out of every timing")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (supervised, plain) for 1 and 3")
    parser.add_argument("--commands", type=int, default=50, help="set commands for 2 (0 skips it)")
    parser.add_argument("--k", default="10,50", help="metrics per step for 4, comma-separated (each >= 2)")
    parser.add_argument("--k-steps", type=int, default=1500, help="training steps per run for 4")
    parser.add_argument("--k-repeats", type=int, default=2, help="rounds of (supervised, plain) for each K")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--extra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-time", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if any(int(v) < 2 for v in args.k.split(",") if v.strip()):
        parser.error("--k: every K counts train/loss and bench/t, so it must be at least 2")
    if args.warmup >= args.steps or args.warmup >= args.k_steps:
        parser.error("--warmup must be below --steps and --k-steps")
    bench(args)


if __name__ == "__main__":
    main()
