"""The sweep driver: asks Optuna for parameters, runs each trial as a supervised run, reports, prunes and tells.

One loop polls the running trials' files (the objective from ``metrics.jsonl``, the end
from ``run.json``), so trials are ordinary runs: ``traindeck ls``, ``attach`` and ``ctl``
work on them. Pruning is a ``stop`` command with reason ``pruned``, so every rank of a
multi-device trial stops at the same step. Torch-free; Optuna is imported here only.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine._errors import SweepError
from engine._sweep._space import Param
from engine._sweep._study import counts, open_study, redact, spec_name, trial_row
from engine._sweep._summary import best_trial, pid_alive, read_summary, write_summary
from engine._sweep._trial import TRIAL_ENV
from engine._sweep._watch import TrialWatch
from engine.client import Client, ConnectError
from engine.runs import load_run
from engine.supervisor.launch import ResumeError, SupervisorStartError, create_run, prepare_resume, start_supervisor

__all__ = ["SweepConfig", "SweepDriver", "SweepResult"]

POLL_S = 0.2
SUMMARY_INTERVAL_S = 2.0


@dataclass
class SweepConfig:
    """Everything a sweep needs; ``command`` is the script and its arguments, run once per trial."""

    name: str
    command: list[str]
    space: list[Param]
    n_trials: int
    metric: str = "val/loss"
    direction: str = "minimize"
    root_dir: Path = Path("runs")
    storage: str | None = None
    study: str | None = None
    pruner: Any = "median"
    sampler: Any = "tpe"
    seed: int | None = None
    parallel: int = 1
    devices: int = 1
    resume: bool = False
    echo: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr, flush=True))


@dataclass
class SweepResult:
    """How a sweep ended: its state, the best trial (None if no trial completed) and every trial."""

    name: str
    sweep_dir: Path
    state: str
    best: dict[str, Any] | None
    trials: list[dict[str, Any]]

    @property
    def best_params(self) -> dict[str, Any] | None:
        return self.best["params"] if self.best else None

    @property
    def best_value(self) -> float | None:
        return self.best["value"] if self.best else None


@dataclass
class _Running:
    trial: Any  # optuna.Trial
    watch: TrialWatch
    slot: int
    reported: int = -1
    pruning: bool = False
    error: str | None = None
    client: Client | None = None


class SweepDriver:
    """Runs ``config.n_trials`` trials of one Optuna study, ``config.parallel`` at a time."""

    def __init__(self, config: SweepConfig) -> None:
        try:
            importlib.import_module("optuna")
        except ImportError:
            raise SweepError("sweeps need Optuna, which is not installed: pip install 'traindeck[sweep]' "
                             "(or pip install optuna)") from None
        if config.n_trials < 1 or config.parallel < 1 or config.devices < 1:
            raise SweepError(f"--trials {config.n_trials}, --parallel {config.parallel}, --devices {config.devices}: "
                             "each must be at least 1")
        if config.direction not in ("minimize", "maximize"):
            raise SweepError(f"--direction must be minimize or maximize, got {config.direction!r}")
        self.config = config
        self.sweep_dir = (Path(config.root_dir) / config.name).resolve()
        self.storage_url = config.storage or f"sqlite:///{self.sweep_dir / 'study.db'}"
        self.study_name = config.study or config.name
        self.host = socket.gethostname()
        self.distributions = {p.name: p.distribution() for p in config.space}
        self.gpus = _visible_gpus()
        if self.gpus and config.parallel * config.devices > len(self.gpus):
            raise SweepError(f"--parallel {config.parallel} x --devices {config.devices} needs "
                             f"{config.parallel * config.devices} GPUs; this machine shows {len(self.gpus)}")
        self.running: dict[int, _Running] = {}
        self.state = "running"
        self.exhausted = False  # the sampler has nothing left to try
        self.error: str | None = None
        self._signals = 0
        self._summary_due = 0.0

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> SweepResult:
        """Run trials until the study holds ``n_trials`` finished ones; Ctrl-C stops the running trials."""
        created = self._prepare_dir()
        try:
            self.study = open_study(self.storage_url, self.study_name, self.config.direction, self.config.metric,
                                    self.config.sampler, self.config.seed, self.config.pruner)
        except SweepError:
            if created:
                shutil.rmtree(self.sweep_dir, ignore_errors=True)
            raise
        self._write_summary()
        previous = _install_signals(self._on_signal)
        try:
            self._adopt_orphans()
            while True:
                self._poll_trials()
                if self._signals:
                    if not self.running:
                        self.state = "interrupted"
                        break
                elif self.error is None and not self.exhausted:
                    self._fill_slots()
                if not self.running and (self.error is not None or self.exhausted
                                         or self._counted() >= self.config.n_trials):
                    self.state = "failed" if self.error else "finished"
                    break
                if time.monotonic() >= self._summary_due:
                    self._write_summary()
                time.sleep(POLL_S)
        finally:
            _restore_signals(previous)
            for running in self.running.values():
                if running.client is not None:
                    running.client.close()
            self._write_summary()
        if self.error:
            raise SweepError(self.error)
        summary = read_summary(self.sweep_dir) or {}
        return SweepResult(self.config.name, self.sweep_dir, self.state, summary.get("best"),
                           summary.get("trials", []))

    def _prepare_dir(self) -> bool:
        """Check the sweep directory against --resume and make it; True when made now."""
        exists = (self.sweep_dir / "sweep.json").exists()
        if exists and not self.config.resume:
            raise SweepError(f"a sweep named {self.config.name!r} already exists in {self.sweep_dir.parent}; "
                             "continue it with --resume or choose another --name")
        if self.config.resume and not exists:
            raise SweepError(f"no sweep named {self.config.name!r} in {self.sweep_dir.parent} to resume")
        made = not self.sweep_dir.exists()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return made

    def _counted(self) -> int:
        """Trials that count toward n_trials: finished ones (interrupted excepted) and those running."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if counts(t))

    def _fill_slots(self) -> None:
        while len(self.running) < self.config.parallel and self._counted() < self.config.n_trials:
            if not self._start_trial():
                return

    def _start_trial(self) -> bool:
        from optuna.trial import TrialState

        trial = self.study.ask(self.distributions)
        earlier = sum(1 for t in self.study.get_trials(deepcopy=False) if t.number < trial.number and counts(t))
        if earlier >= self.config.n_trials:  # another process took the last trial first
            trial.set_user_attr("surplus", True)
            self._tell(trial, state=TrialState.FAIL)
            return False
        slot = min(set(range(self.config.parallel)) - {r.slot for r in self.running.values()})
        run_name = f"{self.config.name}/trial-{trial.number}"
        run_dir = self.sweep_dir / f"trial-{trial.number}"
        for key, value in {"run": run_name, "run_dir": str(run_dir), "host": self.host,
                           "driver_pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        env = {TRIAL_ENV: json.dumps({"sweep": self.config.name, "number": trial.number, "params": trial.params,
                                      "metric": self.config.metric})}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[slot * self.config.devices:
                                                             (slot + 1) * self.config.devices])
        create_run(run_dir, self.config.command, devices=self.config.devices, name=run_name, env=env,
                   sweep={"name": self.config.name, "study": self.study_name, "trial": trial.number,
                          "params": trial.params})
        self.config.echo(f"trial {trial.number} started ({_describe(trial.params)}) in {run_dir}")
        try:
            start_supervisor(run_dir)
        except SupervisorStartError as exc:
            self._tell_failed(trial, str(exc))
            return True
        self.running[trial.number] = _Running(trial, TrialWatch(run_dir, self.config.metric), slot)
        self._summary_due = 0.0
        return True

    def _adopt_orphans(self) -> None:
        """On resume: the trials this host left running. Live runs are followed again, ended ones are
        told, and interrupted ones start a new attempt from their checkpoint (or run again from scratch)."""
        from optuna.trial import Trial, TrialState

        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = frozen.user_attrs
            if attrs.get("host") != self.host or not str(attrs.get("run_dir", "")).startswith(str(self.sweep_dir)):
                continue
            if attrs.get("driver_pid") != os.getpid() and pid_alive(attrs.get("driver_pid")):
                continue
            trial, run_dir = Trial(self.study, frozen._trial_id), Path(attrs["run_dir"])
            trial.set_user_attr("driver_pid", os.getpid())
            run = load_run(run_dir)
            if not run.live and (attrs.get("interrupted") or run.state == "lost"):
                if not self._resume_trial(trial, run_dir):
                    continue
            else:
                self.config.echo(f"trial {frozen.number} left {run.state} by an earlier driver: following it again")
            slot = min(set(range(len(self.running) + 1)) - {r.slot for r in self.running.values()})
            running = _Running(trial, TrialWatch(run_dir, self.config.metric), slot)
            running.reported = max(frozen.intermediate_values, default=-1)
            self.running[frozen.number] = running

    def _resume_trial(self, trial: Any, run_dir: Path) -> bool:
        """A new attempt of an interrupted trial's run from its checkpoint; without one, the trial is
        marked interrupted and its values queued to run again. True when the run was started."""
        from optuna.trial import TrialState

        try:
            attempt, checkpoint = prepare_resume(run_dir, source=f"sweep:{self.config.name}")
            start_supervisor(run_dir)
        except (ResumeError, SupervisorStartError) as exc:
            trial.set_user_attr("interrupted", True)
            self._tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            self.config.echo(f"trial {trial.number} cannot continue ({exc}); it runs again from the start")
            return False
        trial.set_user_attr("interrupted", False)
        self.config.echo(f"trial {trial.number} continues (attempt {attempt}) from {checkpoint.name}")
        return True

    def _poll_trials(self) -> None:
        for number, running in list(self.running.items()):
            for step, value in running.watch.poll():
                if step > running.reported:
                    running.trial.report(value, step)
                    running.reported = step
                    self._summary_due = 0.0
                    if not running.pruning and not self._signals and running.trial.should_prune():
                        self.config.echo(f"trial {number} pruned at step {step} ({self.config.metric}={value:.6g})")
                        self._send(running, "stop", checkpoint=False, reason="pruned")
                        running.pruning = True
            if running.watch.metric_missing and self.error is None:
                self._metric_missing(number, running)
            run = running.watch.run()
            if TrialWatch.ended(run):
                running.watch.poll()
                self._finish(number, running, run)

    def _metric_missing(self, number: int, running: _Running) -> None:
        names = ", ".join(sorted(running.watch.names)) or "nothing"
        self.error = (f"the script never logs {self.config.metric!r}: after the first validation of trial {number} "
                      f"it had logged {names}; pass --metric with one of those")
        running.error = self.error
        for other in self.running.values():
            self._send(other, "stop", checkpoint=True, reason="sweep error")

    def _finish(self, number: int, running: _Running, run: Any) -> None:
        from optuna.trial import TrialState

        del self.running[number]
        if running.client is not None:
            running.client.close()
        self._summary_due = 0.0
        trial, watch = running.trial, running.watch
        reason, client = watch.stop_reason()
        if running.error is not None:
            self._tell_failed(trial, running.error, echo=False)
        elif reason == "pruned" or running.pruning:
            if not running.pruning:
                self.config.echo(f"trial {number} pruned by {client}")
            self._tell(trial, state=TrialState.PRUNED)
        elif run.state == "finished" and watch.values:
            value = watch.values[-1][1]
            self._tell(trial, value)
            self.study.set_user_attr("metric", self.config.metric)
            best = self.study.best_trial
            self.config.echo(f"trial {number} complete: {self.config.metric}={value:.6g} "
                             f"(best: trial {best.number}, {best.value:.6g})")
        elif run.state == "finished":
            names = ", ".join(sorted(watch.names)) or "nothing"
            self._tell_failed(trial, f"the run finished without logging {self.config.metric!r} (it logged {names})",
                              echo=False)
            if self.error is None:
                self.error = (f"the script never logs {self.config.metric!r} (trial {number} logged {names}); "
                              "pass --metric with one of those")
        elif self._signals or (self.error is not None and reason == "sweep error"):
            trial.set_user_attr("interrupted", True)  # stays RUNNING in the study: --resume continues it
            self.config.echo(f"trial {number} interrupted at step {run.step}; --resume continues it")
        elif run.state == "stopped":
            self._tell_failed(trial, f"stopped by {client or 'a client'} at step {run.step} before it finished")
        else:
            self._tell_failed(trial, watch.error(run))

    def _tell(self, trial: Any, *args: Any, **kwargs: Any) -> None:
        """``study.tell``; a sampler that asks to stop the study (a finished GridSampler) ends the sweep."""
        try:
            self.study.tell(trial, *args, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise
            self.exhausted = True

    def _tell_failed(self, trial: Any, error: str, echo: bool = True) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("error", error)
        self._tell(trial, state=TrialState.FAIL)
        if echo:
            last = error.strip().splitlines()[-1] if error.strip() else "failed"
            self.config.echo(f"trial {trial.number} failed: {last}")

    def _send(self, running: _Running, action: str, **args: Any) -> None:
        """Send a command to a trial's supervisor without waiting for the reply (drained on later polls)."""
        run = running.watch.run()
        if not run.live or not run.socket:
            return
        try:
            if running.client is None:
                running.client = Client(run.socket, name=f"sweep:{self.config.name}")
                running.client.connect()
            running.client.send({"type": "command", "id": f"sweep-{action}", "action": action, "args": args})
        except (ConnectError, OSError) as exc:
            self.config.echo(f"trial {running.trial.number}: could not send {action}: {exc}")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        action = "stop" if self._signals == 1 else "kill"
        self.config.echo(f"interrupted: {'stopping' if action == 'stop' else 'killing'} {len(self.running)} "
                         f"running trial(s){'; Ctrl-C again to kill them' if action == 'stop' else ''}")
        for running in self.running.values():
            self._send(running, action, **({"checkpoint": True, "reason": "sweep interrupted"}
                                           if action == "stop" else {"grace_s": 2.0}))

    # -- the summary ------------------------------------------------------------------------

    def _write_summary(self) -> None:
        self._summary_due = time.monotonic() + SUMMARY_INTERVAL_S
        trials = [trial_row(t) for t in self.study.get_trials(deepcopy=False)] if hasattr(self, "study") else []
        summary = {"name": self.config.name, "study": self.study_name, "storage": redact(self.storage_url),
                   "metric": self.config.metric, "direction": self.config.direction,
                   "space": {p.name: p.spec() for p in self.config.space}, "n_trials": self.config.n_trials,
                   "parallel": self.config.parallel, "devices": self.config.devices, "seed": self.config.seed,
                   "pruner": spec_name(self.config.pruner), "sampler": spec_name(self.config.sampler),
                   "command": self.config.command, "state": self.state, "error": self.error,
                   "driver": {"host": self.host, "pid": os.getpid()},
                   "trials": [t for t in trials if t is not None]}
        best = best_trial(summary)
        summary["best"] = {k: best[k] for k in ("number", "value", "params", "run")} if best else None
        write_summary(self.sweep_dir, summary)


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _visible_gpus() -> list[str]:
    """The GPUs trials may be given (honouring CUDA_VISIBLE_DEVICES), from NVML; none without a driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []


def _install_signals(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)

