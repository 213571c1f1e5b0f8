"""A stop one rank decides alone ends training on every rank at the same step, without a hang.

Each test runs ``tests/scripts/ddp_train.py`` under torchrun (2 ranks on gloo) with a 5 s
process-group timeout: a rank leaving the loop alone would leave
its peer blocked in the next DDP all-reduce, which then fails the job within 5 s instead of
the default 30 minutes. The three jobs start together (start-up is most of their time) and
are all killed at the end, whatever happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ddp_jobs import Job, progress, results, torchrun

PG_TIMEOUT_S = 5.0
FAST_FAIL = ("--pg-timeout", str(PG_TIMEOUT_S), "--every-n-steps", "1000000")
STOP_AT = 10  # rank 1 sets should_stop at the end of the batch that reaches step 10
LONG_EPOCH = 64  # batches per rank in the should_stop job's epochs (the others have 4)
MAX_TIME_RANK1_S = 2.0


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    base = tmp_path_factory.mktemp("ddp-stop")
    factories = {
        # steps of 10-20 ms: control points (~0.1 s apart) fall some batches apart, well inside the epoch
        "should-stop": lambda: torchrun(base / "should-stop", "run", *FAST_FAIL, "--sleep", "0.01", "--samples",
                                        str(16 * LONG_EPOCH), "--max-steps", "1000", "--stop-at", str(STOP_AT)),
        "early-stopping": lambda: torchrun(base / "early-stopping", "run", *FAST_FAIL, "--rank-local-metric",
                                           "--no-val"),
        "max-time": lambda: torchrun(base / "max-time", "run", *FAST_FAIL, "--sleep", "0.05",
                                     "--max-steps", "100000", "--max-time-rank1", str(MAX_TIME_RANK1_S)),
    }
    started: dict[str, Job] = {}
    try:
        for name, start in factories.items():
            started[name] = start()
        yield started
    finally:
        for job in started.values():
            job.stop()


def _finished(job: Job) -> Path:
    """The run directory of ``job``, once it exited with status 0."""
    status = job.wait()
    assert status == 0, job.output[-4000:]
    return Path(job.tag) / "run"


def _last_steps(run_dir: Path) -> list[int]:
    """The global step after the last batch each rank trained."""
    return [progress(run_dir, rank)[-1] for rank in (0, 1)]


def test_should_stop_set_on_one_rank_mid_epoch_stops_every_rank_at_the_same_step(jobs):
    run_dir = _finished(jobs["should-stop"])
    rank0, rank1 = results(run_dir)
    step = rank1["global_step"]
    assert rank0["global_step"] == step, (rank0["global_step"], step)
    assert _last_steps(run_dir) == [step, step]
    assert STOP_AT <= step < LONG_EPOCH, f"the stop was agreed at step {step}, not inside the first epoch"
    assert rank0["should_stop"] and rank1["should_stop"]
    assert rank0["epoch"] == rank1["epoch"] == 0  # the cut-short epoch is not counted as finished
    for p0, p1 in zip(rank0["params"], rank1["params"], strict=True):
        assert (p0 == p1).all()


def test_early_stopping_on_a_metric_that_differs_per_rank_stops_every_rank_at_the_same_epoch(jobs):
    run_dir = _finished(jobs["early-stopping"])
    rank0, rank1 = results(run_dir)
    # rank 1's value never improves: patience 2 runs out at the end of epoch 2; rank 0 would go on
    assert rank1["early_stopped_epoch"] == 2
    assert rank0["early_stopped_epoch"] == -1
    assert rank0["metrics"]["rank_local"] != rank1["metrics"]["rank_local"]
    assert [rank0["epoch"], rank1["epoch"]] == [3, 3]
    assert [rank0["global_step"], rank1["global_step"]] == [12, 12]
    assert _last_steps(run_dir) == [12, 12]


def test_max_time_reached_on_one_rank_first_stops_every_rank_at_the_same_step(jobs):
    run_dir = _finished(jobs["max-time"])
    rank0, rank1 = results(run_dir)
    step = rank1["global_step"]
    assert rank0["global_step"] == step
    assert _last_steps(run_dir) == [step, step]
    # 0.05 s steps: rank 1's 2 s limit trips after some 40 steps, far before max_steps
    assert 10 <= step <= 200, step
