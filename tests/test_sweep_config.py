"""What a sweep accepts before anything runs: the search space, the trial's parameters, pruners,
samplers, storages, and how `sweep show` reads a summary. No trial is started here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from engine import SweepError, trial_params
from engine._sweep._driver import SweepConfig, SweepDriver
from engine._sweep._study import make_pruner, make_sampler, redact
from engine._sweep._space import parse_param, parse_space
from engine._sweep._summary import best_trial, ranked_trials, write_summary
from engine._sweep._trial import TRIAL_ENV


@pytest.mark.parametrize("text, kind, low, high, step", [
    ("lr=log:1e-4:1e-1", "log", 1e-4, 1e-1, None),
    ("dropout=float:0:0.5:0.1", "float", 0.0, 0.5, 0.1),
    ("hidden=int:32:256:32", "int", 32, 256, 32),
    ("width=logint:8:1024", "logint", 8, 1024, None),
])
def test_numeric_params_parse_to_their_range(text: str, kind: str, low: float, high: float, step: float) -> None:
    param = parse_param(text)
    assert (param.kind, param.low, param.high, param.step) == (kind, low, high, step)
    assert parse_param(f"{param.name}={param.spec()}") == param


def test_categorical_choices_keep_their_types() -> None:
    assert parse_param("opt=cat:adam,sgd,3,0.5,true,none").choices == ("adam", "sgd", 3, 0.5, True, None)


def test_params_become_the_matching_optuna_distributions() -> None:
    space = {p.name: p.distribution() for p in parse_space(["lr=log:1e-4:1e-1", "n=int:1:9:2", "o=cat:a,b"])}
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert space["n"] == optuna.distributions.IntDistribution(1, 9, step=2)
    assert space["o"] == optuna.distributions.CategoricalDistribution(["a", "b"])


def test_a_python_space_takes_spec_texts_and_choice_lists() -> None:
    params = parse_space({"lr": "log:1e-3:1", "act": ["relu", "gelu"]})
    assert [(p.name, p.kind) for p in params] == [("lr", "log"), ("act", "cat")]


@pytest.mark.parametrize("text, message", [
    ("lr=normal:0:1", "unknown distribution 'normal'"),
    ("lr=float:1:1", "empty range"),
    ("lr=float:2:1", "empty range"),
    ("lr=log:0:1", "a log range needs LOW > 0"),
    ("n=int:1.5:4", "whole numbers"),
    ("lr=float:a:1", "not a number"),
    ("lr=float:0:inf", "not finite"),
    ("lr=log:1e-3:1:0.1", "log takes LOW:HIGH"),
    ("lr=float:0:1:2", "STEP must be positive and no larger"),
    ("opt=cat:", "cat needs a comma-separated list"),
    ("opt=cat:a,a", "listed twice"),
    ("lr", "expected NAME=KIND:ARGS"),
])
def test_bad_params_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_param(text)


def test_an_empty_space_and_a_repeated_name_are_refused() -> None:
    with pytest.raises(SweepError, match="the search space is empty"):
        parse_space([])
    with pytest.raises(SweepError, match="lr declared more than once"):
        parse_space(["lr=log:1e-3:1", "lr=float:0:1"])


def test_trial_params_are_the_defaults_outside_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert trial_params({"lr": 0.1, "opt": "sgd"}) == {"lr": 0.1, "opt": "sgd"}


def test_trial_params_lay_the_sampled_values_over_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRIAL_ENV, json.dumps({"sweep": "s", "number": 3, "params": {"lr": 0.02}}))
    assert trial_params({"lr": 0.1, "opt": "sgd"}) == {"lr": 0.02, "opt": "sgd"}


def test_a_sampled_name_the_script_does_not_know_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRIAL_ENV, json.dumps({"sweep": "s", "number": 0, "params": {"lrr": 0.02}}))
    with pytest.raises(SweepError, match="samples lrr, which the script's defaults do not have"):
        trial_params({"lr": 0.1})


@pytest.mark.parametrize("spec, kind", [("median", optuna.pruners.MedianPruner),
                                        ("percentile:25", optuna.pruners.PercentilePruner),
                                        ("hyperband", optuna.pruners.HyperbandPruner),
                                        ("threshold:upper=2.5", optuna.pruners.ThresholdPruner),
                                        ("none", optuna.pruners.NopPruner)])
def test_pruner_specs_build_optuna_pruners(spec: str, kind: type) -> None:
    assert isinstance(make_pruner(spec), kind)


@pytest.mark.parametrize("spec", ["mediann", "threshold:", "threshold:top=1", "percentile:x"])
def test_bad_pruner_specs_are_refused(spec: str) -> None:
    with pytest.raises(SweepError, match="pruner"):
        make_pruner(spec)


def test_an_unknown_sampler_is_refused() -> None:
    with pytest.raises(SweepError, match="unknown --sampler 'grid'"):
        make_sampler("grid", None)


def _config(tmp_path: Path, **overrides: object) -> SweepConfig:
    fields = {"name": "s", "command": ["train.py"], "space": parse_space(["lr=log:1e-3:1"]), "n_trials": 2,
              "root_dir": tmp_path, "echo": lambda text: None, **overrides}
    return SweepConfig(**fields)


def test_without_optuna_a_sweep_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(SweepError, match=r"pip install 'traindeck\[sweep\]'"):
        SweepDriver(_config(tmp_path))


def test_an_unreachable_storage_is_a_clear_error_and_leaves_no_sweep(tmp_path: Path) -> None:
    driver = SweepDriver(_config(tmp_path, storage=f"sqlite:///{tmp_path}/missing/dir/study.db"))
    with pytest.raises(SweepError, match="cannot open storage sqlite:///.*unable to open database file"):
        driver.run()
    assert not (tmp_path / "s").exists()


def test_a_storage_without_its_driver_names_what_to_install(tmp_path: Path) -> None:
    driver = SweepDriver(_config(tmp_path, storage="postgresql://me:secret@db.example:5432/sweeps"))
    with pytest.raises(SweepError, match=r"postgresql://me:\*\*\*@db.example:5432/sweeps needs a database driver"):
        driver.run()


def test_storage_passwords_never_reach_messages_or_files() -> None:
    assert redact("postgresql://me:secret@host/db") == "postgresql://me:***@host/db"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_an_existing_sweep_is_only_continued_with_resume(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    write_summary(tmp_path / "s", {"name": "s", "trials": []})
    with pytest.raises(SweepError, match="already exists .* continue it with --resume"):
        SweepDriver(_config(tmp_path)).run()
    with pytest.raises(SweepError, match="no sweep named 'other'"):
        SweepDriver(_config(tmp_path, name="other", resume=True)).run()


def test_a_study_asked_to_go_the_other_direction_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    optuna.create_study(study_name="shared", storage=url, direction="maximize")
    with pytest.raises(SweepError, match="set to maximize, not minimize"):
        SweepDriver(_config(tmp_path, storage=url, study="shared")).run()


SUMMARY = {"name": "s", "metric": "val/loss", "direction": "minimize", "n_trials": 4, "state": "running",
           "space": {"lr": "log:0.001:1"},
           "trials": [{"number": 0, "state": "complete", "params": {"lr": 0.1}, "value": 0.5, "duration_s": 3.0},
                      {"number": 1, "state": "pruned", "params": {"lr": 0.9}, "value": None,
                       "last": {"step": 10, "value": 9.0}},
                      {"number": 2, "state": "complete", "params": {"lr": 0.01}, "value": 0.25, "duration_s": 4.0},
                      {"number": 3, "state": "running", "params": {"lr": 0.02}, "value": None}]}


def test_trials_rank_best_first_then_the_rest_by_number() -> None:
    assert [t["number"] for t in ranked_trials(SUMMARY)] == [2, 0, 1, 3]
    assert [t["number"] for t in ranked_trials({**SUMMARY, "direction": "maximize"})] == [0, 2, 1, 3]
    assert best_trial(SUMMARY)["number"] == 2


def test_sweep_show_prints_the_best_trial_and_the_table(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    write_summary(tmp_path / "s", {**SUMMARY, "best": {"number": 2, "value": 0.25, "params": {"lr": 0.01}}})
    out = subprocess.run([sys.executable, "-m", "tui.cli", "sweep", "show", "s", "--root-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "sweep s: running, 3/4 trials, minimize val/loss"
    assert out[1] == "best: trial 2  val/loss=0.25  lr=0.01"
    assert [line.split()[:2] for line in out[3:]] == [["2", "complete"], ["0", "complete"], ["1", "pruned"],
                                                      ["3", "running"]]


def test_sweep_show_of_an_unknown_sweep_lists_the_ones_there(tmp_path: Path) -> None:
    (tmp_path / "known").mkdir()
    write_summary(tmp_path / "known", SUMMARY)
    result = subprocess.run([sys.executable, "-m", "tui.cli", "sweep", "show", "nope", "--root-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no sweep named 'nope'" in result.stderr and "known" in result.stderr


def test_a_detached_sweep_that_cannot_start_says_why(tmp_path: Path) -> None:
    script = Path(__file__).parent / "scripts" / "sweep_train.py"
    result = subprocess.run([sys.executable, "-m", "tui.cli", "sweep", "--detach", "--name", "s", "--param",
                             "lr=log:1e-3:1", "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db", str(script)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "the sweep did not start" in result.stderr and "unable to open database file" in result.stderr
