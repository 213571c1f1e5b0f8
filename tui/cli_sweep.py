"""``traindeck sweep``: run an Optuna sweep of a script, every trial a supervised run; ``sweep show`` reports one.

Torch-free; Optuna is imported only when a sweep actually runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine._sweep._summary import SUMMARY_FILE, find_sweep, list_sweeps, ranked_trials, read_summary
from tui.cli_runs import print_table
from tui.errors import CLIError

__all__ = ["add_sweep_commands"]

# Options a --resume takes from sweep.json when they are not given again.
_STORED = {"trials": "n_trials", "metric": "metric", "direction": "direction", "parallel": "parallel",
           "devices": "devices", "pruner": "pruner", "sampler": "sampler", "seed": "seed"}
DETACH_START_S = 30.0
_DEFAULTS = {"trials": 20, "metric": "val/loss", "direction": "minimize", "parallel": 1, "devices": 1,
             "pruner": "median", "sampler": "tpe", "seed": None}


def cmd_sweep(args: argparse.Namespace) -> int:
    """Search hyperparameters with Optuna: each trial runs the script as a run named SWEEP/trial-N."""
    if args.script == "show":
        return cmd_sweep_show(_show_parser().parse_args(args.script_args, namespace=argparse.Namespace(
            root_dir=args.root_dir)))
    from engine._errors import SweepError
    from engine._sweep._space import parse_param, parse_space

    stored = read_summary(Path(args.root_dir) / args.name) if args.resume and args.name else None
    if args.resume and not args.name:
        raise CLIError("--resume needs the --name of the sweep to continue")
    if args.resume and stored is None:
        raise CLIError(f"no sweep named {args.name!r} in {args.root_dir}/ to resume")
    for option, key in _STORED.items():
        if getattr(args, option) is None:
            setattr(args, option, stored.get(key, _DEFAULTS[option]) if stored else _DEFAULTS[option])
    try:
        if args.param:
            space = parse_space(args.param)
        elif stored:
            space = [parse_param(f"{name}={spec}") for name, spec in stored.get("space", {}).items()]
        else:
            raise CLIError("declare the search space with --param NAME=KIND:ARGS (e.g. --param lr=log:1e-4:1e-1)")
    except SweepError as exc:
        raise CLIError(str(exc)) from None
    if args.script is None:
        if not stored:
            raise CLIError("name the training script: traindeck sweep [options] train.py [script args]")
        command = [str(a) for a in stored["command"]]
    else:
        command = [args.script, *args.script_args]
    script = Path(command[0])
    if not script.is_file() or script.suffix != ".py":
        raise CLIError(f"no such Python script: {script}")
    name = args.name or f"{script.stem}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.detach:
        return _detach(args, name)
    return _run_sweep(args, name, command, space)


def _run_sweep(args: argparse.Namespace, name: str, command: list[str], space: list[Any]) -> int:
    from engine._errors import SweepError
    from engine._sweep._driver import SweepConfig, SweepDriver

    def echo(text: str) -> None:
        print(f"traindeck sweep {name}: {text}", file=sys.stderr, flush=True)

    config = SweepConfig(name=name, command=command, space=space, n_trials=args.trials, metric=args.metric,
                         direction=args.direction, root_dir=Path(args.root_dir), storage=args.storage,
                         study=args.study, pruner=args.pruner, sampler=args.sampler, seed=args.seed,
                         parallel=args.parallel, devices=args.devices, resume=args.resume, echo=echo)
    try:
        result = SweepDriver(config).run()
    except SweepError as exc:
        raise CLIError(str(exc)) from None
    print_summary(read_summary(result.sweep_dir) or {})
    if result.state == "interrupted":
        echo(f"interrupted; continue with: traindeck sweep --resume --name {name} --root-dir {args.root_dir}")
        return 130
    return 0


def _detach(args: argparse.Namespace, name: str) -> int:
    """Run this same sweep in its own session (it survives the terminal), its output in driver.log."""
    sweep_dir = Path(args.root_dir) / name
    if (sweep_dir / SUMMARY_FILE).exists() and not args.resume:
        raise CLIError(f"a sweep named {name!r} already exists in {args.root_dir}; continue it with --resume")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    argv = list(args.argv)
    argv.remove("--detach")  # the first one is ours: options come before the script
    if args.name is None:
        argv = [argv[0], "--name", name, *argv[1:]]
    with open(sweep_dir / "driver.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "tui", *argv], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + DETACH_START_S
    while process.poll() is None and time.monotonic() < deadline:
        summary = read_summary(sweep_dir) or {}
        if summary.get("driver", {}).get("pid") == process.pid:
            break
        time.sleep(0.1)
    if process.poll() not in (None, 0):
        tail = (sweep_dir / "driver.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise CLIError(f"the sweep did not start (see {sweep_dir / 'driver.log'}):\n" + "\n".join(tail))
    print(f"traindeck: sweep {name} started (driver pid {process.pid}); its output: {sweep_dir / 'driver.log'}\n"
          f"  results:  traindeck sweep show {name}\n  watch it: traindeck attach {name}", file=sys.stderr)
    return 0


def cmd_sweep_show(args: argparse.Namespace) -> int:
    """Print a sweep's best parameters and its trials table (or its summary as JSON)."""
    sweep_dir = find_sweep(args.name, args.root_dir)
    if sweep_dir is None:
        known = ", ".join(p.name for p in list_sweeps(args.root_dir)) or "none"
        raise CLIError(f"no sweep named {args.name!r} in {args.root_dir}/ (sweeps there: {known})")
    summary = read_summary(sweep_dir)
    if summary is None:
        raise CLIError(f"{sweep_dir / SUMMARY_FILE} cannot be read")
    if args.ui:
        from tui.cli_job import open_cockpit

        return open_cockpit(None, None, Path(args.root_dir), sweep_dir=sweep_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """The sweep's state, best trial and trials table (best first), as plain text."""
    trials = ranked_trials(summary)
    done = sum(1 for t in trials if t.get("state") in ("complete", "pruned", "failed"))
    print(f"sweep {summary.get('name')}: {summary.get('state')}, {done}/{summary.get('n_trials')} trials, "
          f"{summary.get('direction')} {summary.get('metric')}")
    if summary.get("error"):
        print(f"error: {summary['error']}")
    best = summary.get("best")
    if best:
        print(f"best: trial {best['number']}  {summary.get('metric')}={_cell(best['value'])}  "
              + "  ".join(f"{k}={_cell(v)}" for k, v in best["params"].items()))
    names = list(summary.get("space", {}))
    header = ["trial", "state", *names, summary.get("metric", "value"), "duration"]
    rows = [[str(t.get("number")), str(t.get("state")), *(_cell(t.get("params", {}).get(n)) for n in names),
             _cell(t.get("value") if t.get("value") is not None else (t.get("last") or {}).get("value")),
             f"{t['duration_s']:.1f}s" if isinstance(t.get("duration_s"), (int, float)) else "-"]
            for t in trials]
    print_table([header, *rows])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _show_parser() -> argparse.ArgumentParser:
    show = argparse.ArgumentParser(prog="traindeck sweep show", description=cmd_sweep_show.__doc__)
    show.add_argument("name", help="the sweep's name (a directory under --root-dir) or its path")
    show.add_argument("--json", action="store_true", help="print sweep.json")
    show.add_argument("--ui", action="store_true", help="open the cockpit's sweep view")
    show.add_argument("--root-dir", default=argparse.SUPPRESS, help="where sweeps live (default: runs)")
    return show


def add_sweep_commands(sub: Any) -> None:
    """Register ``sweep`` (and its ``sweep show NAME``) on the ``traindeck`` parser."""
    sweep = sub.add_parser(
        "sweep", help=cmd_sweep.__doc__, description=cmd_sweep.__doc__
        + " The script reads its values with engine.trial_params(defaults). `traindeck sweep show NAME [--json] "
        "[--ui]` prints a sweep's results.",
        usage="traindeck sweep [options] script.py [script args]  |  traindeck sweep show NAME [--json] [--ui]")
    sweep.add_argument("--param", action="append", metavar="NAME=KIND:ARGS",
                       help="a searched parameter: float:LOW:HIGH[:STEP], log:LOW:HIGH, int:LOW:HIGH[:STEP], "
                            "logint:LOW:HIGH or cat:A,B,... (repeat for each)")
    sweep.add_argument("--trials", type=int, help="number of trials (default 20)")
    sweep.add_argument("--metric", help="the logged metric to optimise (default val/loss)")
    sweep.add_argument("--direction", choices=("minimize", "maximize"), help="default minimize")
    sweep.add_argument("--pruner", help="median (default), percentile:P, hyperband, threshold:lower=X,upper=Y, none")
    sweep.add_argument("--sampler", choices=("tpe", "random", "qmc"), help="default tpe")
    sweep.add_argument("--seed", type=int, help="seed of the sampler, for a repeatable sweep")
    sweep.add_argument("--parallel", type=int, help="trials run at once (default 1)")
    sweep.add_argument("--devices", type=int, help="devices (processes) per trial (default 1)")
    sweep.add_argument("--storage", help="an SQLAlchemy URL Optuna accepts (default: SQLite in the sweep's directory)")
    sweep.add_argument("--study", help="the study's name in the storage (default: the sweep's name)")
    sweep.add_argument("--name", help="the sweep's name (its directory is ROOT_DIR/NAME)")
    sweep.add_argument("--root-dir", default="runs", help="where sweeps and runs live (default: runs)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the sweep --name; options not given again are taken from it")
    sweep.add_argument("--detach", action="store_true", help="run the sweep in the background and return")
    sweep.add_argument("script", nargs="?", help="the training script (a .py file), or `show`")
    sweep.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    sweep.set_defaults(func=cmd_sweep)
