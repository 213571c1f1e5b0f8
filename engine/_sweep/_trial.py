"""Inside a trial: the parameters the sweep sampled for this run, handed over in the environment."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from engine._errors import SweepError

__all__ = ["TRIAL_ENV", "current_trial", "run_trial", "trial_params"]

TRIAL_ENV = "TRAINDECK_TRIAL"  # JSON: {"sweep": name, "number": n, "params": {...}, "metric": name}


def current_trial() -> dict[str, Any] | None:
    """This process's trial (sweep name, number, params, metric), or None outside a sweep."""
    text = os.environ.get(TRIAL_ENV)
    if not text:
        return None
    try:
        trial = json.loads(text)
    except ValueError:
        raise SweepError(f"${TRIAL_ENV} is not valid JSON: {text[:200]!r}") from None
    if not isinstance(trial, dict) or not isinstance(trial.get("params"), dict):
        raise SweepError(f"${TRIAL_ENV} does not describe a trial: {text[:200]!r}")
    return trial


def trial_params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sampled parameters of this sweep trial laid over ``defaults``; just ``defaults`` outside a sweep.

    With ``defaults``, a sampled name the script does not know is an error (a typo in
    ``--param`` would otherwise be silently ignored).
    """
    trial = current_trial()
    params = dict(trial["params"]) if trial else {}
    if defaults is None:
        return params
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SweepError(f"the sweep samples {', '.join(unknown)}, which the script's defaults do not have "
                         f"(it knows {', '.join(sorted(defaults)) or 'nothing'}); fix the --param name or add it "
                         "to the defaults passed to trial_params")
    return {**defaults, **params}


def run_trial(factory: Callable[[dict[str, Any]], Any], trainer_kwargs: Mapping[str, Any]) -> None:
    """Build this trial's Module from its parameters with ``factory`` and train it.

    ``factory`` returns a Module (trained with ``Trainer(**trainer_kwargs)``), a
    ``(Module, DataModule)`` pair, or None when it trained by itself.
    """
    from engine import Trainer

    built = factory(trial_params())
    if built is None:
        return
    module, datamodule = built if isinstance(built, tuple) else (built, None)
    Trainer(**trainer_kwargs).fit(module, datamodule=datamodule)
