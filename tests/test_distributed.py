"""Distributed training with real processes: gloo on CPU, torchrun, signals.

Every test runs ``tests/scripts/ddp_train.py`` (a 2-rank job, 64 samples in batches of 8:
4 batches per rank and epoch) in child processes and checks what a user sees: exit
status, output, files in the run directory, what each rank wrote, which processes exist.

Start-up (importing torch in 4 processes) is most of a job's time, so the ``jobs`` fixture
starts every job the selected tests use at once: the ones meant to finish, and "endless"
ones that train slowly until a kill or SIGTERM test signals them, by then on a quiet
machine. The crash test, which times how fast a group goes down by itself, starts its own
job when it runs. Whatever happens, every process of every job is killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from ddp_jobs import SCRIPT, Job, describe, free_port, launch, progress, results, torchrun, wait_for_steps
from engine._checkpoint_format import read_header, verify
from engine._failures import report_failures, write_failure
from engine._preemption import PREEMPTED_EXIT_CODE

GONE_WITHIN_S = 10.0  # a failed or killed job must have no process left this long after the event
MAX_STEPS = 24  # the script's default: 6 epochs
KILL_TARGETS = ["launcher", "torchrun", "rank0", "rank1"]
ENDLESS = ("--sleep", "0.2", "--max-steps", "100000")  # trains until a test kills or stops it


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def _same_training(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Rank by rank: the same per-batch losses and the same final parameters, bit for bit."""
    for rank, (x, y) in enumerate(zip(a, b)):
        assert sorted(x["losses"]) == sorted(y["losses"]), f"rank {rank} trained other batches"
        for k in x["losses"]:
            assert torch.equal(x["losses"][k], y["losses"][k]), f"rank {rank}: loss of batch {k} differs"
        for i, (p, q) in enumerate(zip(x["params"], y["params"], strict=True)):
            assert torch.equal(p, q), f"rank {rank}: parameter {i} differs"


def uses(*names: str) -> Any:
    """Declare the jobs a test reads (``{param}`` is filled from its parameters); see ``jobs``."""
    def mark(test: Any) -> Any:
        test.ddp_jobs = names
        return test
    return mark


def _job_factories(base: Path) -> dict[str, Any]:
    """How to start each job, by name; each job has its own root (its tag) under ``base``."""
    port, rdzv_id = free_port(), f"loopback-{base.name}"

    def node(rank: int) -> Job:
        return torchrun(base / "multinode", "run", "--devices", "1", "--num-nodes", "2",
                        launcher_args=("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                                       "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                       "--rdzv-id", rdzv_id, "--rdzv-conf", f"is_host={int(rank == 0)}",
                                       "--local-addr", "127.0.0.1"),
                        log=base / f"multinode-node{rank}.log")

    factories: dict[str, Any] = {
        "launcher": lambda: launch(base / "launcher", "run", "--devices", "2"),
        "torchrun": lambda: torchrun(base / "torchrun", "run", "--devices", "2"),
        "node0": lambda: node(0),
        "node1": lambda: node(1),
        "accumulate": lambda: launch(base / "accumulate", "run", "--devices", "2", "--accumulate", "2",
                                     "--max-steps", "12"),
        "mismatch": lambda: torchrun(base / "mismatch", "run", "--devices", "3"),
        # every-n-steps beyond the run: the preemption's save is the only checkpoint
        "preempt": lambda: launch(base / "preempt", "run", "--devices", "2", *ENDLESS,
                                  "--every-n-steps", "1000000"),
    }
    for target in KILL_TARGETS:
        factories[f"kill-{target}"] = (lambda t=target: launch(base / f"kill-{t}", "run", "--devices", "2",
                                                                *ENDLESS))
    return factories


@pytest.fixture(scope="module")
def jobs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    """The jobs the selected tests of this module use (see ``uses``), all started at once."""
    wanted: set[str] = set()
    for item in request.session.items:
        if getattr(item, "module", None) is request.module:
            params = getattr(getattr(item, "callspec", None), "params", {})
            wanted.update(name.format(**params) for name in getattr(item.function, "ddp_jobs", ()))
    factories = _job_factories(tmp_path_factory.mktemp("ddp"))
    started: dict[str, Job] = {}
    try:
        for name, start in factories.items():  # in this order: the jobs meant to finish first
            if name in wanted:
                started[name] = start()
        yield started
    finally:
        for job in started.values():
            job.stop()


def _done(job: Job) -> Path:
    """The run directory of ``job`` once it finished with status 0."""
    status = job.wait()
    assert status == 0, job.output[-4000:]
    return Path(job.tag) / "run"


# -- a job launched with devices=2 -------------------------------------------------------


@uses("launcher")
def test_devices_2_runs_two_ranks_that_each_finish_the_job(jobs):
    run_dir = _done(jobs["launcher"])
    ranks = results(run_dir)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [MAX_STEPS, MAX_STEPS]
    assert "launching 2 processes under torchrun" in jobs["launcher"].output


@uses("launcher")
def test_ddp_keeps_parameters_identical_while_ranks_see_different_data(jobs):
    rank0, rank1 = results(_done(jobs["launcher"]))
    for p0, p1 in zip(rank0["params"], rank1["params"], strict=True):
        assert torch.equal(p0, p1)
    assert not all(torch.equal(rank0["losses"][k], rank1["losses"][k]) for k in rank0["losses"])


@uses("launcher")
def test_sync_dist_metrics_are_the_same_on_every_rank(jobs):
    rank0, rank1 = results(_done(jobs["launcher"]))
    for name in ("train/loss_epoch", "val/loss"):
        assert name in rank0["metrics"], sorted(rank0["metrics"])
        assert rank0["metrics"][name] == rank1["metrics"][name], name


@uses("launcher")
def test_only_rank_0_writes_checkpoints_metrics_and_events(jobs):
    run_dir = _done(jobs["launcher"])
    root = run_dir.parent
    assert [p.relative_to(root).as_posix() for p in root.rglob("metrics.jsonl")] == ["run/metrics.jsonl"]
    assert len(list(root.rglob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"epoch=5-step={MAX_STEPS}.ckpt",
                                                                          "last.ckpt"]
    assert {e["source"] for e in _events(run_dir)} == {"rank0"}
    assert not (run_dir / "failures").exists()
    assert verify(run_dir / "checkpoints" / "last.ckpt")[0]
    assert read_header(run_dir / "checkpoints" / "last.ckpt")["summary"]["world_size"] == 2


@uses("launcher")
def test_the_start_up_summary_is_printed_once(jobs):
    _done(jobs["launcher"])
    lines = jobs["launcher"].output.splitlines()
    assert sum("model: Net" in line for line in lines) == 1
    assert sum("distributed: 2 processes" in line for line in lines) == 1


# -- started by torchrun directly ----------------------------------------------------------


@uses("torchrun", "launcher")
def test_under_torchrun_the_trainer_joins_the_group_instead_of_relaunching(jobs):
    run_dir = _done(jobs["torchrun"])
    assert "launching 2 processes" not in jobs["torchrun"].output
    assert [r["world_size"] for r in results(run_dir)] == [2, 2]
    _same_training(results(run_dir), results(_done(jobs["launcher"])))


@uses("mismatch")
def test_devices_that_disagree_with_torchrun_fail_naming_both_numbers(jobs):
    job = jobs["mismatch"]
    assert job.wait() != 0
    assert "devices=3 but torchrun started 2 processes per node" in job.output, job.output[-3000:]
    assert not list(Path(job.tag).rglob("result-rank*.pt"))


@uses("node0", "node1", "launcher")
def test_two_nodes_on_loopback_train_exactly_like_one_node_with_two_processes(jobs):
    run_dir = _done(jobs["node0"])
    assert _done(jobs["node1"]) == run_dir
    ranks = results(run_dir)
    assert [r["world_size"] for r in ranks] == [2, 2]
    _same_training(ranks, results(_done(jobs["launcher"])))


@uses("accumulate")
def test_gradient_accumulation_under_ddp_keeps_ranks_identical_and_learns(jobs):
    steps = 12
    rank0, rank1 = results(_done(jobs["accumulate"]))
    for p0, p1 in zip(rank0["params"], rank1["params"], strict=True):
        assert torch.equal(p0, p1)
    for rank in (rank0, rank1):
        assert rank["global_step"] == steps
        assert sorted(rank["losses"]) == list(range(1, 2 * steps + 1))  # two batches per optimizer step
        losses = [float(rank["losses"][k]) for k in sorted(rank["losses"])]
        assert sum(losses[-4:]) < sum(losses[:4])


# -- failures, kills, preemption -----------------------------------------------------------


def test_failures_are_reported_first_failure_first_and_only_from_this_run(tmp_path, capsys):
    now = time.time()
    for rank, exc in ((0, ValueError("an earlier run's failure")), (3, RuntimeError("the root cause")),
                      (1, OSError("a consequence"))):
        write_failure(tmp_path, rank, exc)
    before_this_launch = now - 10 * 24 * 3600
    os.utime(tmp_path / "failures" / "rank0.txt", (before_this_launch, before_this_launch))
    os.utime(tmp_path / "failures" / "rank3.txt", (now - 0.2, now - 0.2))
    os.utime(tmp_path / "failures" / "rank1.txt", (now - 0.1, now - 0.1))

    assert report_failures(tmp_path, since=now - 60) == [3, 1]
    err = capsys.readouterr().err
    assert "rank 0 failed" not in err and "an earlier run's failure" not in err
    assert err.index("traindeck: rank 3 failed: RuntimeError: the root cause") \
        < err.index("traindeck: rank 1 failed: OSError: a consequence")


def test_an_exception_in_one_rank_takes_the_group_down_and_is_reported(tmp_path):
    job = launch(tmp_path / "runs", "run", "--devices", "2", "--fail-at", "5")
    try:
        status = job.wait()
        gone, when = job.gone_within(GONE_WITHIN_S)
        failure = tmp_path / "runs" / "run" / "failures" / "rank1.txt"
        assert failure.exists(), job.output[-4000:]
        assert status != 0
        assert gone, f"left behind:\n{describe(job.processes())}"
        assert when - failure.stat().st_mtime < GONE_WITHIN_S, job.output[-4000:]
        output = job.output
        report = output[output.index("traindeck: rank 1 failed"):]
        assert "Traceback (most recent call last)" in report
        assert "RuntimeError: rank 1 fails on purpose at step 5" in report
        if "traindeck: rank 0 failed" in output:  # rank 0 fails because rank 1 did: reported after it
            assert output.index("traindeck: rank 1 failed") < output.index("traindeck: rank 0 failed")
    finally:
        job.stop()


@uses("kill-{target}")
@pytest.mark.parametrize("target", KILL_TARGETS)
def test_sigkill_of_any_process_of_a_job_leaves_no_process_behind(jobs, target):
    job = jobs[f"kill-{target}"]
    wait_for_steps(job, Path(job.tag) / "run", 2)
    job.find(target).send_signal(signal.SIGKILL)
    gone, _ = job.gone_within(GONE_WITHIN_S)
    assert gone, f"{GONE_WITHIN_S:.0f} s after killing the {target}, left behind:\n{describe(job.processes())}"
    assert job.proc.returncode != 0


@uses("preempt")
def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_saves_and_resumes(jobs, tmp_path):
    job = jobs["preempt"]
    root = Path(job.tag)
    run_dir = root / "run"
    wait_for_steps(job, run_dir, 2)
    job.proc.send_signal(signal.SIGTERM)
    assert job.wait() == PREEMPTED_EXIT_CODE, job.output[-4000:]
    stopped = {rank: progress(run_dir, rank)[-1] for rank in (0, 1)}
    step = stopped[0]
    assert stopped == {0: step, 1: step} and step >= 2
    last = run_dir / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert verify(last)[0]
    assert read_header(last)["summary"]["step"] == step
    preempted = [e for e in _events(run_dir) if e["event"] == "preempted"]
    assert [(e["signal"], e["step"], e["path"]) for e in preempted] == [("SIGTERM", step, str(last))]

    until = step + 6
    resumed = launch(root, "run", "--devices", "2", "--max-steps", str(until), "--every-n-steps", "1000000",
                     "--resume", log=tmp_path / "resumed.log")
    try:
        assert resumed.wait() == 0, resumed.output[-4000:]
    finally:
        resumed.stop()
    for rank in results(run_dir):
        assert rank["global_step"] == until
        assert sorted(rank["losses"]) == list(range(step + 1, until + 1))
    assert [e["step"] for e in _events(run_dir) if e["event"] == "resumed"] == [step]
    assert resumed.output.count("resuming from") == 1, resumed.output[-4000:]


def test_max_restarts_restarts_the_group_and_resumes_from_the_last_checkpoint(tmp_path):
    root = tmp_path / "runs"
    traindeck = [sys.executable, "-m", "tui", "run", "--devices", "2", "--max-restarts", "1",
                 "--root-dir", str(root), "--name", "restart"]
    job = Job([*traindeck, str(SCRIPT), str(root), "ignored", "--devices", "2", "--fail-at", "7",
               "--every-n-steps", "3", "--max-steps", "12"], root, tmp_path / "restart.log")
    try:
        status = job.wait()
        assert status == 0, job.output[-4000:]
        events = [json.loads(line) for line in (root / "restart" / "events.jsonl").read_text().splitlines()]
        restarted = [e for e in events if e["event"] == "restarted"]
        resumed = [e for e in events if e["event"] == "resumed"]
        assert len(restarted) == 1 and restarted[0]["restart"] == 1 and restarted[0]["resumed"]
        assert len(resumed) == 1 and resumed[0]["step"] == 6
        assert "group restart 1: resuming from the last valid checkpoint" in job.output
        assert "traindeck: rank 1 failed" not in job.output  # the job succeeded in the end
        final = torch.load(root / "restart" / "result-rank0.pt")
        assert final["global_step"] == 12
        assert sorted(final["losses"]) == list(range(7, 13))  # one batch per step: those after step 6
    finally:
        job.stop()
