"""The sweep view: trials ranked by their objective, the best one marked, kept up to date from sweep.json,
and the run keys applied to the selected trial's real supervisor.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from engine.runs import read_run_file
from tests.test_app import drive, until
from tests.test_supervisor import TERMINAL, ctl, events, start, wait_running, wait_state
from tui.app import TraindeckApp
from tui.screens.run import RunScreen
from tui.screens.sweep import SweepScreen

SIZES = [(80, 24), (120, 40)]
NOW = datetime(2026, 11, 28, 21, 0, 0, tzinfo=timezone.utc)
SPACE = {"lr": "log:0.0001:0.1", "hidden": "int:32:256", "opt": "cat:adam,sgd"}


def trial(sweep_dir: Path, number: int, state: str, value: float | None = None, lr: float = 1e-3,
          hidden: int = 64, opt: str = "adam", last: tuple[int, float] | None = None,
          duration_s: float | None = None, started: str | None = None, error: str | None = None) -> dict[str, Any]:
    """One trial record as the driver writes it."""
    return {"number": number, "state": state, "params": {"lr": lr, "hidden": hidden, "opt": opt}, "value": value,
            "last": {"step": last[0], "value": last[1]} if last else None,
            "started": started or "2026-11-28T20:00:00+00:00", "finished": None, "duration_s": duration_s,
            "run": f"{sweep_dir.name}/trial-{number}", "run_dir": str(sweep_dir / f"trial-{number}"), "error": error}


def write_sweep(sweep_dir: Path, trials: list[dict[str, Any]], state: str = "running") -> Path:
    """sweep.json with ``trials`` (best from them), and a finished run directory for each complete trial."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in trials if t["state"] == "complete"]
    best = min(complete, key=lambda t: t["value"]) if complete else None
    summary = {"name": sweep_dir.name, "study": sweep_dir.name, "storage": f"sqlite:///{sweep_dir}/study.db",
               "metric": "val/loss", "direction": "minimize", "space": SPACE, "n_trials": 12, "parallel": 2,
               "devices": 1, "command": ["train.py"], "state": state, "error": None,
               "driver": {"host": "box", "pid": 1234}, "updated": NOW.isoformat(),
               "best": best and {"number": best["number"], "value": best["value"], "params": best["params"],
                                 "run": best["run"]},
               "trials": trials}
    for t in complete:
        run_dir = Path(t["run_dir"])
        run_dir.mkdir(exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps({"name": t["run"], "state": "finished", "step": 120}))
    tmp = sweep_dir / ".sweep.json.tmp"
    tmp.write_text(json.dumps(summary))
    tmp.replace(sweep_dir / "sweep.json")
    return sweep_dir


def fabricated_sweep(root: Path) -> Path:
    """A running sweep: complete, pruned, failed, running and waiting trials; fixed values throughout."""
    sweep_dir = root / "lr-search"
    return write_sweep(sweep_dir, [
        trial(sweep_dir, 0, "complete", 0.4213, lr=0.05, hidden=32, opt="sgd", duration_s=62.0),
        trial(sweep_dir, 1, "complete", 0.1275, lr=3.2e-4, hidden=128, duration_s=75.5),
        trial(sweep_dir, 2, "pruned", lr=0.09, hidden=256, opt="sgd", last=(40, 1.9), duration_s=20.0),
        trial(sweep_dir, 3, "complete", 0.2051, lr=1.1e-3, hidden=200, duration_s=71.0),
        trial(sweep_dir, 4, "failed", lr=0.02, hidden=48, error="RuntimeError: CUDA out of memory"),
        trial(sweep_dir, 5, "complete", 0.3309, lr=7.5e-3, hidden=96, opt="sgd", duration_s=68.2),
        trial(sweep_dir, 6, "running", lr=2.4e-4, hidden=160, last=(80, 0.2466), started="2026-11-28T20:58:30+00:00"),
        trial(sweep_dir, 7, "running", lr=0.012, hidden=40, opt="sgd", started="2026-11-28T20:59:45+00:00"),
    ])


def sweep_app(sweep_dir: Path) -> TraindeckApp:
    """The cockpit opened on ``sweep_dir``, its clock stopped at NOW."""
    return TraindeckApp(root_dir=sweep_dir.parent, sweep_dir=sweep_dir, clock=NOW.timestamp)


def table_rows(pilot: Pilot) -> list[list[str]]:
    table = pilot.app.screen.query_one("#trials", DataTable)
    return [[str(cell).strip() for cell in table.get_row(row.key)] for row in table.ordered_rows]


def toasts(pilot: Pilot) -> str:
    """The notifications on screen, one per line."""
    return "\n".join(toast.render().plain for toast in pilot.app.screen.query("Toast"))


def cursor_trial(pilot: Pilot) -> str:
    table = pilot.app.screen.query_one("#trials", DataTable)
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


# -- what the view shows -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_snapshot_of_a_running_sweep(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = sweep_app(fabricated_sweep(tmp_path / "runs"))
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: pilot.pause(0.3))


def test_snapshot_without_colour_still_marks_the_best_trial(snap_compare, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = sweep_app(fabricated_sweep(tmp_path / "runs"))
    assert snap_compare(app, terminal_size=(80, 24), run_before=lambda pilot: pilot.pause(0.3))


def test_trials_are_ranked_by_objective_and_the_best_is_starred_and_bold(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        rows = table_rows(pilot)
        assert [row[0] for row in rows] == ["★ 1", "3", "5", "0", "2", "4", "6", "7"]
        assert [row[5] for row in rows[:4]] == ["0.1275", "0.2051", "0.3309", "0.4213"]
        assert rows[0][2:5] == ["3.2e-04", "128", "adam"]
        best, second = (pilot.app.screen.query_one("#trials", DataTable).get_row(key) for key in ("1", "3"))
        assert all("bold" in str(cell.style) for cell in best)
        assert not any("bold" in str(cell.style) for cell in second)

    drive(sweep_app(sweep_dir), body)


def test_a_new_complete_trial_in_sweep_json_takes_its_place_and_the_cursor_stays_on_its_trial(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        await pilot.press("down", "down")
        assert cursor_trial(pilot) == "5"
        summary = json.loads((sweep_dir / "sweep.json").read_text())
        summary["trials"][6].update(state="complete", value=0.0999, duration_s=90.0, last=None)
        write_sweep(sweep_dir, summary["trials"])
        await until(pilot, lambda: table_rows(pilot)[0][0] == "★ 6", timeout=5, what="trial 6 ranked first")
        assert [row[0] for row in table_rows(pilot)][:5] == ["★ 6", "1", "3", "5", "0"]
        assert cursor_trial(pilot) == "5"
        assert "#6" in str(pilot.app.screen.query_one("#header").render())

    drive(sweep_app(sweep_dir), body)


def test_a_cursor_on_the_top_row_follows_the_new_best_trial(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        assert cursor_trial(pilot) == "1"
        summary = json.loads((sweep_dir / "sweep.json").read_text())
        summary["trials"][6].update(state="complete", value=0.0999, duration_s=90.0, last=None)
        write_sweep(sweep_dir, summary["trials"])
        await until(pilot, lambda: table_rows(pilot)[0][0] == "★ 6", timeout=5, what="trial 6 ranked first")
        assert cursor_trial(pilot) == "6"

    drive(sweep_app(sweep_dir), body)


def test_keys_on_a_trial_that_is_not_live_say_so(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        await pilot.press("x")
        await until(pilot, lambda: "trial 1 is not live (finished): nothing to prune" in toasts(pilot), timeout=5,
                    what="the notification")

    drive(sweep_app(sweep_dir), body, notifications=True)


def test_enter_opens_the_trials_run_and_escape_comes_back(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen), timeout=5, what="the run screen")
        assert pilot.app.screen.run_dir == sweep_dir / "trial-1"
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, SweepScreen)

    drive(sweep_app(sweep_dir), body)


def test_w_in_the_run_browser_opens_the_sweep_of_a_trial_row(tmp_path: Path) -> None:
    sweep_dir = fabricated_sweep(tmp_path / "runs")

    async def body(pilot: Pilot) -> None:
        table = pilot.app.screen.query_one(DataTable)
        names = [str(table.get_row(row.key)[1]) for row in table.ordered_rows]
        assert names[0] == "lr-search/" and "lr-search/trial-1" in names
        await pilot.press(*["down"] * names.index("lr-search/trial-1"), "w")
        assert isinstance(pilot.app.screen, SweepScreen) and pilot.app.screen.sweep_dir == sweep_dir

    drive(TraindeckApp(root_dir=sweep_dir.parent), body)


# -- commands to a live trial --------------------------------------------------------------------------------


def live_trial_sweep(name: str) -> tuple[Path, Path]:
    """A real supervised run as trial 0 of a sweep (sweep.json lists it running), next to one finished trial."""
    run_dir = start(f"{name}/trial-0", "--max-steps", "100000", "--sleep", "0.01")
    wait_running(run_dir)
    sweep_dir = run_dir.parent.resolve()
    write_sweep(sweep_dir, [trial(sweep_dir, 0, "running", last=(10, 0.5)),
                            trial(sweep_dir, 1, "complete", 0.3, duration_s=10.0)])
    return sweep_dir, run_dir


def select_trial(pilot: Pilot, number: str) -> None:
    table = pilot.app.screen.query_one("#trials", DataTable)
    table.move_cursor(row=table.get_row_index(number))


def test_x_prunes_a_live_trial_stopping_it_without_a_checkpoint_with_reason_pruned(env: dict[str, str]) -> None:
    sweep_dir, run_dir = live_trial_sweep("prune-sweep")

    async def body(pilot: Pilot) -> None:
        select_trial(pilot, "0")
        await pilot.press("x")
        await until(pilot, lambda: "trial 0: prune applied at step" in toasts(pilot), what="the prune reply")

    drive(sweep_app(sweep_dir), body, notifications=True)
    assert wait_state(run_dir, TERMINAL)["state"] == "stopped"
    stops = [e for e in events(run_dir) if e.get("event") == "command" and e.get("action") == "stop"]
    assert stops[0]["args"] == {"checkpoint": False, "reason": "pruned"} and stops[0]["ok"]
    assert not list((run_dir / "checkpoints").glob("*-command.ckpt"))


def test_p_pauses_a_live_trial(env: dict[str, str]) -> None:
    sweep_dir, run_dir = live_trial_sweep("pause-sweep")

    async def body(pilot: Pilot) -> None:
        select_trial(pilot, "0")
        await pilot.press("p")
        await until(pilot, lambda: (read_run_file(run_dir) or {}).get("state") == "paused", what="the paused state")

    drive(sweep_app(sweep_dir), body)
    ctl("pause-sweep/trial-0", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)
