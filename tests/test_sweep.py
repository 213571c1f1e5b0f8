"""Sweeps end to end: real Optuna studies in SQLite, every trial a real supervised run.

Each test runs `traindeck sweep` (or the Python API) on tests/scripts/sweep_train.py, a tiny
regression whose parameters come from engine.trial_params, and checks sweep.json, the
trials' run directories, the study and what the commands print.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from engine._sweep._summary import read_summary
from engine.runs import read_run_file
from tests.test_supervisor import traindeck, wait_for

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN = SCRIPTS / "sweep_train.py"
SPACE = ["--param", "lr=log:1e-3:0.5", "--param", "hidden=int:4:32", "--param", "opt=cat:adam,sgd"]


def summary(name: str, root: str = "runs") -> dict[str, Any]:
    return read_summary(Path(root) / name)


def states(name: str) -> dict[int, str]:
    return {t["number"]: t["state"] for t in summary(name)["trials"]}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 6-trial sweep, 2 trials at a time, run once for the tests that read its results."""
    cwd = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "TRAINDECK_SOCKET_DIR": str(tmp_path_factory.mktemp("sockets")),
           "TRAINDECK_LINGER_S": "0.3", "CUDA_VISIBLE_DEVICES": "3,5"}
    run = subprocess.run([sys.executable, "-m", "tui.cli", "sweep", "--name", "search", "--trials", "6",
                          "--parallel", "2", "--seed", "3", "--pruner", "none", *SPACE, str(TRAIN), "--epochs", "2"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ls = subprocess.run([sys.executable, "-m", "tui.cli", "ls"], cwd=cwd, env=env, capture_output=True, text=True)
    show = subprocess.run([sys.executable, "-m", "tui.cli", "sweep", "show", "search"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    return {"dir": cwd / "runs" / "search", "stdout": run.stdout, "stderr": run.stderr, "ls": ls.stdout,
            "show": show.stdout, "summary": json.loads((cwd / "runs" / "search" / "sweep.json").read_text())}


def test_a_sweep_runs_every_trial_and_finds_a_better_value_than_its_worst(finished_sweep: dict[str, Any]) -> None:
    trials = finished_sweep["summary"]["trials"]
    values = [t["value"] for t in trials]
    assert finished_sweep["summary"]["state"] == "finished"
    assert [t["state"] for t in trials] == ["complete"] * 6
    assert finished_sweep["summary"]["best"]["value"] == min(values) < max(values)


def test_each_trial_is_a_run_with_its_sampled_parameters(finished_sweep: dict[str, Any]) -> None:
    for trial in finished_sweep["summary"]["trials"]:
        record = read_run_file(trial["run_dir"])
        assert record["name"] == f"search/trial-{trial['number']}"
        assert record["state"] == "finished"
        assert record["sweep"]["params"] == trial["params"]
        assert set(trial["params"]) == {"lr", "hidden", "opt"}
        assert 1e-3 <= trial["params"]["lr"] <= 0.5 and 4 <= trial["params"]["hidden"] <= 32
        assert f"search/trial-{trial['number']}" in finished_sweep["ls"]


def test_parallel_runs_that_many_trials_at_once_and_no_more(finished_sweep: dict[str, Any]) -> None:
    spans = []
    for trial in finished_sweep["summary"]["trials"]:
        events = [json.loads(line) for line in (Path(trial["run_dir"]) / "events.jsonl").read_text().splitlines()]
        spans.append((events[0]["time"], next(e["time"] for e in events if e["event"] == "finished")))
    overlap = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert overlap == 2


def test_parallel_trials_each_get_their_own_visible_gpus(finished_sweep: dict[str, Any]) -> None:
    spans = {}
    for trial in finished_sweep["summary"]["trials"]:
        record = read_run_file(trial["run_dir"])
        events = [json.loads(line) for line in (Path(trial["run_dir"]) / "events.jsonl").read_text().splitlines()]
        spans[record["env"]["CUDA_VISIBLE_DEVICES"], trial["number"]] = (
            events[0]["time"], next(e["time"] for e in events if e["event"] == "finished"))
    assert {gpu for gpu, _ in spans} == {"3", "5"}
    for (gpu, number), (start, end) in spans.items():
        assert not any(other_gpu == gpu and other != number and start < other_end and other_start < end
                       for (other_gpu, other), (other_start, other_end) in spans.items())


def test_sweep_show_prints_the_best_parameters_and_the_trials_best_first(finished_sweep: dict[str, Any]) -> None:
    best = finished_sweep["summary"]["best"]
    lines = finished_sweep["show"].splitlines()
    assert lines[1].startswith(f"best: trial {best['number']}") and f"opt={best['params']['opt']}" in lines[1]
    table = lines[lines.index(next(line for line in lines if line.startswith("trial "))) + 1:]
    assert [int(row.split()[0]) for row in table][0] == best["number"]
    assert len(table) == 6


def test_the_python_api_prunes_a_bad_trial_at_the_next_step(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / "sweep_api.py"), "runs"], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    by_offset = {t["params"]["offset"]: t for t in outcome["trials"]}
    assert by_offset[100.0]["state"] == "pruned" and by_offset[0.0]["state"] == "complete"
    assert outcome["best_params"] == {"offset": 0.0, "lr": 0.05}
    pruned = read_run_file(by_offset[100.0]["run_dir"])
    assert pruned["state"] == "stopped" and pruned["step"] < 8 * 12
    assert "pruned at step" in result.stderr


def test_a_crashed_trial_is_failed_with_its_traceback_and_the_sweep_goes_on(env: dict[str, str]) -> None:
    result = traindeck("sweep", "--name", "crash", "--trials", "2", "--param", "fail=cat:true", str(TRAIN),
                       timeout=180)
    trials = summary("crash")["trials"]
    assert [t["state"] for t in trials] == ["failed", "failed"]
    assert "Traceback" in trials[0]["error"] and "RuntimeError: this trial fails on purpose" in trials[0]["error"]
    assert "trial 1 failed: RuntimeError: this trial fails on purpose" in result.stderr


def test_a_metric_the_script_never_logs_is_named_with_the_ones_it_does(env: dict[str, str]) -> None:
    result = traindeck("sweep", "--name", "typo", "--trials", "3", "--metric", "val/acc", "--param",
                       "lr=log:1e-3:0.5", str(TRAIN), "--epochs", "5", check=False, timeout=180)
    assert result.returncode == 2
    assert "never logs 'val/acc'" in result.stderr and "train/loss, val/loss" in result.stderr
    assert list(states("typo").values()) == ["failed"]


def interrupt_during_trial_1(name: str) -> None:
    """Start a 3-trial sweep, one trial at a time, and Ctrl-C it while trial 1 trains."""
    driver = subprocess.Popen([sys.executable, "-m", "tui.cli", "sweep", "--name", name, "--trials", "3",
                               "--pruner", "none", "--param", "lr=log:1e-3:0.5", str(TRAIN), "--epochs", "3",
                               "--sleep", "0.03"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (Path(f"runs/{name}/sweep.json").exists() and states(name).get(1) == "running"
                      and (read_run_file(f"runs/{name}/trial-1") or {}).get("step") is not None), 120,
             "trial 1 to run")
    driver.send_signal(signal.SIGINT)
    assert driver.wait(60) == 130
    assert summary(name)["state"] == "interrupted" and states(name) == {0: "complete", 1: "interrupted"}


def test_an_interrupted_sweep_resumes_its_trial_from_the_checkpoint(env: dict[str, str]) -> None:
    interrupt_during_trial_1("long")
    stopped_at = read_run_file("runs/long/trial-1")["step"]
    assert list(Path("runs/long/trial-1/checkpoints").glob("*.ckpt"))

    result = traindeck("sweep", "--resume", "--name", "long", timeout=180)
    assert "trial 1 continues (attempt 2)" in result.stderr
    assert summary("long")["state"] == "finished"
    assert [t["state"] for t in summary("long")["trials"]] == ["complete"] * 3
    record = read_run_file("runs/long/trial-1")
    assert record["attempt"] == 2 and record["state"] == "finished" and record["step"] > stopped_at


def test_an_interrupted_trial_without_a_checkpoint_runs_again_from_the_start(env: dict[str, str]) -> None:
    interrupt_during_trial_1("again")
    shutil.rmtree("runs/again/trial-1/checkpoints")

    traindeck("sweep", "--resume", "--name", "again", timeout=180)
    trials = summary("again")["trials"]
    assert summary("again")["state"] == "finished"
    assert [t["state"] for t in trials] == ["complete", "interrupted", "complete", "complete"]
    assert trials[2]["params"] == trials[1]["params"]


def test_two_sweep_processes_share_one_sqlite_study(env: dict[str, str]) -> None:
    storage = f"sqlite:///{Path('shared.db').resolve()}"
    drivers = [subprocess.Popen([sys.executable, "-m", "tui.cli", "sweep", "--name", name, "--storage", storage,
                                 "--study", "shared", "--trials", "4", "--param", "lr=log:1e-3:0.5", str(TRAIN),
                                 "--epochs", "2"], stderr=subprocess.PIPE, text=True) for name in ("left", "right")]
    for driver in drivers:
        assert driver.wait(180) == 0, driver.stderr.read()
    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert {t.user_attrs["run"].split("/")[0] for t in done} == {"left", "right"}
    listed = [sum(t["state"] == "complete" for t in summary(name)["trials"]) for name in ("left", "right")]
    assert max(listed) == 4


def test_a_pruned_two_device_trial_stops_every_rank_at_the_same_step(env: dict[str, str]) -> None:
    traindeck("sweep", "--name", "ddp", "--trials", "1", "--devices", "2", "--pruner", "threshold:upper=50",
              "--param", "offset=cat:100", str(TRAIN), "--epochs", "20", "--sleep", "0.02", timeout=180)
    trial = summary("ddp")["trials"][0]
    assert trial["state"] == "pruned"
    logs = Path(trial["run_dir"]) / "logs"
    applied = [re.findall(r"rank \d applied stop .*reason=pruned at step (\d+)", (logs / f"rank{rank}.log").read_text())
               for rank in (0, 1)]
    assert applied[0] == applied[1] and len(applied[0]) == 1
    assert int(applied[0][0]) < 20 * 6


def test_a_killed_drivers_running_trial_is_followed_again_on_resume(env: dict[str, str]) -> None:
    driver = subprocess.Popen([sys.executable, "-m", "tui.cli", "sweep", "--name", "orphan", "--trials", "2",
                               "--pruner", "none", "--param", "lr=log:1e-3:0.5", str(TRAIN), "--epochs", "3",
                               "--sleep", "0.03"], stderr=subprocess.DEVNULL)
    wait_for(lambda: (read_run_file("runs/orphan/trial-0") or {}).get("step") is not None, 120, "trial 0 to run")
    driver.kill()
    driver.wait()
    assert summary("orphan")["state"] == "interrupted"

    result = traindeck("sweep", "--resume", "--name", "orphan", timeout=180)
    assert re.search(r"trial 0 left \w+ by an earlier driver: following it again", result.stderr)
    assert [t["state"] for t in summary("orphan")["trials"]] == ["complete", "complete"]


def test_a_detached_sweep_runs_on_after_the_command_returns(env: dict[str, str]) -> None:
    result = traindeck("sweep", "--detach", "--name", "bg", "--trials", "1", "--param", "lr=log:1e-3:0.5",
                       str(TRAIN), "--epochs", "1", timeout=30)
    assert "traindeck sweep show bg" in result.stderr
    wait_for(lambda: (summary("bg") or {}).get("state") == "finished", 120, "the detached sweep to finish")
    assert "trial 0 complete" in Path("runs/bg/driver.log").read_text()
