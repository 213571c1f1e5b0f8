"""The Optuna side of a sweep: opening the study, pruner and sampler specs, a trial as sweep.json shows it.

Optuna (and SQLAlchemy) are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Any, Iterator

from engine._errors import SweepError

__all__ = ["counts", "make_pruner", "make_sampler", "open_study", "redact", "spec_name", "trial_row"]


def make_pruner(spec: Any) -> Any:
    """An Optuna pruner from a spec (median, percentile:P, hyperband, threshold:lower=X,upper=Y, none) or as given."""
    import optuna

    if not isinstance(spec, str):
        return spec if spec is not None else optuna.pruners.NopPruner()
    kind, _, rest = spec.partition(":")
    try:
        if kind == "median" and not rest:
            return optuna.pruners.MedianPruner()
        if kind == "percentile":
            return optuna.pruners.PercentilePruner(float(rest))
        if kind == "hyperband" and not rest:
            return optuna.pruners.HyperbandPruner()
        if kind == "threshold":
            bounds = dict(part.split("=", 1) for part in rest.split(",") if part)
            if not bounds or set(bounds) - {"lower", "upper"}:
                raise ValueError("threshold takes lower=X and/or upper=Y")
            return optuna.pruners.ThresholdPruner(**{k: float(v) for k, v in bounds.items()})
        if kind == "none" and not rest:
            return optuna.pruners.NopPruner()
    except ValueError as exc:
        raise SweepError(f"bad --pruner {spec!r}: {exc}") from None
    raise SweepError(f"unknown --pruner {spec!r}: use median, percentile:P, hyperband, "
                     "threshold:lower=X,upper=Y or none")


def make_sampler(spec: Any, seed: int | None) -> Any:
    """An Optuna sampler from ``tpe``, ``random`` or ``qmc``, or as given."""
    import optuna

    if not isinstance(spec, str):
        return spec
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "qmc": optuna.samplers.QMCSampler}
    if spec not in samplers:
        raise SweepError(f"unknown --sampler {spec!r}: use {', '.join(samplers)}")
    return samplers[spec](seed=seed)


def open_study(storage_url: str, study_name: str, direction: str, metric: str, sampler: Any, seed: int | None,
               pruner: Any) -> Any:
    """Create or load the study; every way it can fail is a SweepError that says why."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {}
    if storage_url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with _sqlite_lock(storage_url):
            storage = optuna.storages.RDBStorage(storage_url, **kwargs)
            study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                        direction=direction, sampler=make_sampler(sampler, seed),
                                        pruner=make_pruner(pruner))
    except ImportError as exc:
        raise SweepError(f"storage {redact(storage_url)} needs a database driver that is not "
                         f"installed ({exc}); install the one SQLAlchemy needs (e.g. psycopg2-binary for "
                         "PostgreSQL, PyMySQL for MySQL)") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"cannot open storage {redact(storage_url)}: {first}") from None
    if study.direction.name.lower() != direction:
        raise SweepError(f"study {study_name!r} in {redact(storage_url)} is set to "
                         f"{study.direction.name.lower()}, not {direction}")
    known = study.user_attrs.get("metric")  # set once a trial completed with it
    if known is not None and known != metric:
        raise SweepError(f"study {study_name!r} optimises {known!r}, not {metric!r}")
    return study


def trial_row(trial: Any) -> dict[str, Any] | None:
    """A study's trial as sweep.json lists it; None for a surplus trial (asked past n_trials by a racing driver)."""
    attrs = trial.user_attrs
    if attrs.get("surplus"):
        return None
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
             "WAITING": "waiting"}.get(trial.state.name, trial.state.name.lower())
    if state in ("failed", "running") and attrs.get("interrupted"):
        state = "interrupted"
    steps = trial.intermediate_values
    last = max(steps) if steps else None
    start, end = trial.datetime_start, trial.datetime_complete
    params = trial.params or trial.system_attrs.get("fixed_params", {})  # a waiting trial's enqueued values
    return {"number": trial.number, "state": state, "params": params,
            "value": trial.value if state == "complete" else None,
            "last": {"step": last, "value": steps[last]} if last is not None else None,
            "started": start.isoformat(timespec="seconds") if start else None,
            "finished": end.isoformat(timespec="seconds") if end else None,
            "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
            "run": attrs.get("run"), "run_dir": attrs.get("run_dir"), "host": attrs.get("host"),
            "error": attrs.get("error")}


def spec_name(value: Any) -> str:
    """A pruner or sampler as sweep.json records it: its spec text, or its class name."""
    return value if isinstance(value, str) else type(value).__name__


def counts(trial: Any) -> bool:
    """Whether a trial counts toward n_trials: finished or running, not waiting, surplus or interrupted-and-failed."""
    state, attrs = trial.state.name, trial.user_attrs
    if state == "WAITING" or attrs.get("surplus"):
        return False
    return not (state == "FAIL" and attrs.get("interrupted"))


def redact(url: str) -> str:
    """The storage URL without its password, for messages and sweep.json."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


@contextlib.contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Hold a lock next to an SQLite file while opening it: two drivers creating one study's tables at once collide."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if not path or path.startswith(":memory:") or not Path(path).parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
