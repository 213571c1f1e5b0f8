"""Snapshots of the cockpit's main screens at 80×24 and 120×40, from run directories built by hand."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.test_app import drive, until
from tests.test_app_sweep import NOW, fabricated_sweep
from tui.app import TraindeckApp
from tui.widgets.chart import MetricChart

SIZES = [(80, 24), (120, 40)]


def failed_run(root: Path) -> Path:
    """A finished-and-failed 2-rank run: metrics, events, logs with a traceback; nothing time-dependent."""
    run_dir = root / "snap-run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "name": "snap-run", "state": "failed", "step": 400, "epoch": 6, "attempt": 1, "devices": 2, "nnodes": 1,
        "exit_status": 1, "failure": {"rank": 1, "exit_status": 1, "message": "RuntimeError: CUDA error"},
        "command": ["train.py"], "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:10:00Z"}))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(0, 401, 4):
            values = {"train/loss": 2.0 * math.exp(-step / 120) + 0.1 + (0.8 if step == 200 else 0.0)}
            if step % 80 == 0:
                values["val/loss"] = 2.1 * math.exp(-step / 130) + 0.15
            f.write(json.dumps({"step": step, "time": 1.0e9 + step, "metrics": values}) + "\n")
    events = [{"time": 1.0e9, "event": "rank_up", "rank": r, "pid": 100 + r, "host": "node", "device": "cpu"}
              for r in (0, 1)]
    events += [{"time": 1.0e9 + 50, "event": "command", "action": "set", "args": {"key": "lr", "value": 0.01},
                "client": "cli:me@node", "ok": True, "step": 120, "detail": {"old": 0.1}},
               {"time": 1.0e9 + 90, "event": "failed", "exit_status": 1,
                "failure": {"rank": 1, "message": "RuntimeError: CUDA error"}}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "logs" / "rank0.log").write_text("".join(f"[traindeck] step {s}\n" for s in range(0, 400, 40)))
    (run_dir / "logs" / "rank1.log").write_text(
        "[traindeck] step 0\nTraceback (most recent call last):\n  File \"train.py\", line 9, in training_step\n"
        "    loss = model(x)\nRuntimeError: CUDA error\n")
    return run_dir


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_run_screen_of_a_failed_run(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = TraindeckApp(failed_run(tmp_path), None)
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: pilot.pause(0.5))


def test_help_screen_lists_the_keys(snap_compare, tmp_path: Path) -> None:
    app = TraindeckApp(failed_run(tmp_path), None)
    assert snap_compare(app, terminal_size=(80, 24), press=["question_mark"])


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_run_browser_lists_sweeps_and_runs(snap_compare, tmp_path: Path, size: tuple[int, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINDECK_SOCKET_DIR", str(tmp_path / "no-live-runs"))
    monkeypatch.chdir(tmp_path)
    root = Path("runs")
    failed_run(root)
    finished = json.loads((root / "snap-run" / "run.json").read_text())
    shutil.copytree(root / "snap-run", root / "baseline")
    (root / "baseline" / "run.json").write_text(json.dumps({**finished, "name": "baseline", "state": "finished",
                                                            "exit_status": 0, "failure": None,
                                                            "created": "2025-12-31T20:00:00Z"}))
    fabricated_sweep(root)
    app = TraindeckApp(None, None, root_dir=root, clock=NOW.timestamp)
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: pilot.pause(0.5))


def run_with_lr(root: Path) -> Path:
    """The failed run, with a learning rate logged as well: two metric groups to chart."""
    run_dir = failed_run(root)
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in range(0, 401, 40):
            f.write(json.dumps({"step": step, "time": 1.0e9 + step, "metrics": {"lr": 0.1 * 0.99 ** step}}) + "\n")
    return run_dir


def test_a_pinned_chart_keeps_its_metrics_while_m_moves_the_main_chart(tmp_path: Path) -> None:
    async def body(pilot: Pilot) -> None:
        charts = lambda: [chart.names for chart in pilot.app.screen.query(MetricChart)]  # noqa: E731
        await until(pilot, lambda: charts() == [("train/loss", "val/loss")], timeout=5, what="the main chart")
        await pilot.press("plus")
        await pilot.pause()
        assert charts() == [("train/loss", "val/loss"), ("lr",)]
        await pilot.press("m")
        assert charts() == [("train/loss", "val/loss"), ("train/loss", "val/loss")]
        await pilot.press("minus")
        await pilot.pause()
        assert len(charts()) == 1

    drive(TraindeckApp(run_with_lr(tmp_path), None), body)


def test_run_screen_with_a_pinned_chart(snap_compare, tmp_path: Path) -> None:
    app = TraindeckApp(run_with_lr(tmp_path), None)
    assert snap_compare(app, terminal_size=(120, 40), press=["plus"], run_before=lambda pilot: pilot.pause(0.5))
