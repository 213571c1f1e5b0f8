"""The supervisor's metrics path in one process: on disk, then to clients, then into the history."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from engine.runs import write_run_file
from engine.supervisor._supervisor import Supervisor

POINTS = {"type": "metrics", "points": [{"step": 5, "time": 100.0, "values": {"loss": 0.5, "lr": 0.01}},
                                        {"step": 6, "time": 100.5, "values": {"loss": 0.25, "lr": 0.01}}]}


class Conn:
    """Stands in for a client connection: keeps what the supervisor sends it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.subscriptions: set[str] = set()

    def send(self, message: dict[str, Any], live: bool = False) -> None:
        self.sent.append(message)


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_file(run_dir, {"name": "run", "command": ["python", "train.py"]})
    return Supervisor(run_dir)


def test_metrics_are_in_metrics_jsonl_before_any_client_is_sent_them(supervisor: Supervisor) -> None:
    on_disk_at_broadcast: list[list[int]] = []

    def broadcast(topic: str, message: dict[str, Any]) -> None:
        lines = (supervisor.run_dir / "metrics.jsonl").read_text().splitlines()
        on_disk_at_broadcast.append([json.loads(line)["step"] for line in lines])

    supervisor.server.broadcast = broadcast  # type: ignore[method-assign]

    async def receive() -> None:
        supervisor._on_metrics(None, POINTS)  # type: ignore[arg-type]

    asyncio.run(receive())
    assert on_disk_at_broadcast == [[5, 6]]


def test_a_client_subscribing_right_after_a_metrics_message_finds_its_points_in_the_snapshot(
        supervisor: Supervisor) -> None:
    async def receive_then_subscribe() -> Conn:
        supervisor._on_metrics(None, POINTS)  # type: ignore[arg-type]
        conn = Conn()
        supervisor._on_subscribe(conn, {"type": "subscribe", "id": 1, "topics": ["metrics"]})  # type: ignore[arg-type]
        return conn

    conn = asyncio.run(receive_then_subscribe())
    snapshot = conn.sent[1]
    assert snapshot["type"] == "snapshot"
    assert snapshot["history"]["loss"]["recent"] == [[5, 100.0, 0.5], [6, 100.5, 0.25]]


def test_the_history_takes_the_points_once_the_loop_runs_on(supervisor: Supervisor) -> None:
    async def receive_then_yield() -> dict[str, Any]:
        supervisor._on_metrics(None, POINTS)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return supervisor.history.snapshot()

    history = asyncio.run(receive_then_yield())
    assert history["lr"]["recent"] == [[5, 100.0, 0.01], [6, 100.5, 0.01]]
