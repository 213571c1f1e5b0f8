"""Hyperparameter sweeps with Optuna: every trial is a supervised run you can watch and steer.

``engine.sweep(...)`` from a script, ``traindeck sweep script.py --param ...`` from the shell;
inside a trial, ``engine.trial_params(defaults)`` gives the sampled values. Guide: docs/sweeps.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from engine._errors import SweepError
from engine._sweep._space import Param, parse_space
from engine._sweep._trial import current_trial, run_trial, trial_params

if TYPE_CHECKING:
    from engine._sweep._driver import SweepResult

__all__ = ["Param", "SweepResult", "sweep", "trial_params"]


def sweep(
    objective: Callable[[dict[str, Any]], Any],
    space: Mapping[str, Any] | Sequence[str],
    n_trials: int,
    direction: str = "minimize",
    metric: str = "val/loss",
    pruner: Any = "median",
    storage: str | None = None,
    parallel: int = 1,
    *,
    name: str | None = None,
    study: str | None = None,
    devices: int = 1,
    root_dir: str | Path = "runs",
    sampler: Any = "tpe",
    seed: int | None = None,
    resume: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Search ``space`` for the best ``metric`` over ``n_trials`` trials, ``parallel`` at a time.

    Each trial re-runs this script as a supervised run (``<root_dir>/<name>/trial-<n>``) in
    which this call builds the trial's model: ``objective(params)`` returns a Module (trained
    with ``Trainer(**trainer_kwargs)``), a ``(Module, DataModule)`` pair, or None when it
    trained by itself; the process then exits, so code after ``sweep()`` runs in the driver
    only. The objective is the last value of ``metric`` the trial logged. ``space`` maps
    names to specs (``"log:1e-4:1e-1"``, ``"int:32:256"``, ``"cat:adam,sgd"``) or lists of choices;
    ``pruner`` and ``sampler`` take a spec (see ``traindeck sweep --help``) or an Optuna object.
    """
    from engine._sweep._driver import SweepConfig, SweepDriver

    if current_trial() is not None:
        run_trial(objective, trainer_kwargs or {})
        raise SystemExit(0)
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or not script.is_file() or script.suffix != ".py":
        raise SweepError("engine.sweep runs each trial by running this script again; call it from a script "
                         "started as `python my_sweep.py`, not from an interactive session")
    config = SweepConfig(name=name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", command=[str(script), *sys.argv[1:]],
                         space=parse_space(space), n_trials=n_trials, metric=metric, direction=direction,
                         root_dir=Path(root_dir), storage=storage, study=study, pruner=pruner, sampler=sampler,
                         seed=seed, parallel=parallel, devices=devices, resume=resume)
    return SweepDriver(config).run()


def __getattr__(name: str) -> Any:
    if name == "SweepResult":  # the driver (and the socket client) load only when a sweep runs
        from engine._sweep._driver import SweepResult

        return SweepResult
    raise AttributeError(f"module 'engine._sweep' has no attribute {name!r}")
