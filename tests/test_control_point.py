"""The agreement at control points, on a real two-process gloo group.

A scheduled agreement is started at one batch and finished at the next: starting must not
wait for the other ranks (the all-gather runs while a batch computes), and finishing gives
every rank the same flags and the same next control batch.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ddp_jobs import free_port

LATE_RANK_DELAY_S = 1.5


def _rank(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    from engine._distributed import ControlPoint

    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=30))
    try:
        point = ControlPoint(dist.group.WORLD, rank)
        if rank == 1:
            time.sleep(LATE_RANK_DELAY_S)
        began = time.monotonic()
        point.start(10, [0, int(rank == 1), 0])
        started = time.monotonic()
        pending = point.pending
        flags = point.finish(11)
        finished = time.monotonic()
        results.put({"rank": rank, "start_s": started - began, "finish_s": finished - started, "pending": pending,
                     "flags": flags, "next_batch": point.next_batch, "pending_after": point.pending})
    finally:
        dist.destroy_process_group()


def _gloo_event_loops() -> int:
    """How many gloo event-loop threads this process runs (one per gloo process group; Linux names them)."""
    tasks = Path("/proc/self/task")
    return sum((task / "comm").read_text().strip() == "gloo_tcp_loop" for task in tasks.iterdir())


def _rank_on_the_control_group(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    from engine._distributed import ControlPoint, control_group

    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=30))
    try:
        loops_before = _gloo_event_loops()
        point = ControlPoint(control_group(), rank)
        point.start(1, [int(rank == 0), int(rank == 1), 0])
        flags = point.finish(2)
        results.put({"rank": rank, "flags": flags, "loops_before": loops_before, "loops_after": _gloo_event_loops()})
    finally:
        dist.destroy_process_group()


def _run_two_ranks(target: Any) -> dict[int, dict[str, Any]]:
    context = multiprocessing.get_context("fork")  # torch is imported already: no second import
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=target, args=(rank, port, results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        found = {}
        for _ in procs:
            record = results.get(timeout=120)
            found[record["rank"]] = record
        return found
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def test_starting_an_agreement_does_not_wait_for_a_late_peer_and_finishing_does():
    results = _run_two_ranks(_rank)

    early = results[0]
    assert early["pending"] and not early["pending_after"]
    assert early["start_s"] < LATE_RANK_DELAY_S / 3
    assert early["finish_s"] > LATE_RANK_DELAY_S / 3
    assert results[0]["flags"] == results[1]["flags"] == [0, 1, 0]
    assert results[0]["next_batch"] == results[1]["next_batch"] >= 12


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads by their Linux names")
def test_agreements_of_a_cpu_group_add_no_gloo_event_loop_and_merge_every_ranks_flags():
    results = _run_two_ranks(_rank_on_the_control_group)

    assert results[0]["loops_before"] >= 1
    assert [results[r]["loops_after"] for r in (0, 1)] == [results[r]["loops_before"] for r in (0, 1)]
    assert results[0]["flags"] == results[1]["flags"] == [1, 1, 0]
