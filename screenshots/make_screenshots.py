"""Regenerate the pictures in screenshots/ from real runs of the demo (``make screenshots``).

The dashboard during a run, the paused state, a failed rank's traceback in the log pane,
the run browser comparing two runs, and the sweep view of a small sweep of the demo while
two of its trials run; each as SVG (Textual's own export) and PNG (when cairosvg is
installed). Takes about two minutes on two cores, half of it the sweep.

    python screenshots/make_screenshots.py          # every picture
    python screenshots/make_screenshots.py sweep    # only sweep.png; `runs` only the other five
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "screenshots"
DEMO = REPO / "examples" / "demo.py"
FAILING = REPO / "tests" / "scripts" / "controlled_train.py"
SIZE = (120, 40)


def traindeck(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tui.cli", *args], check=True, cwd=REPO, capture_output=True)


def record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(predicate: Callable[[], Any], what: str, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def save(app: Any, name: str) -> None:
    svg = OUT / f"{name}.svg"
    app.save_screenshot(filename=svg.name, path=str(OUT))
    try:
        import cairosvg
    except ImportError:
        print(f"wrote {svg} (install cairosvg for PNG)")
        return
    cairosvg.svg2png(url=str(svg), write_to=str(svg.with_suffix(".png")), output_width=1400)
    print(f"wrote {svg} and {svg.with_suffix('.png')}")


async def shoot(run_dir: Path | None, socket: str | None, root: Path, scenes: Callable[[Any], Any],
                sweep_dir: Path | None = None) -> None:
    from tui.app import TraindeckApp

    app = TraindeckApp(run_dir, socket, root_dir=root, sweep_dir=sweep_dir)
    async with app.run_test(size=SIZE) as pilot:
        await scenes(pilot)


async def until(pilot: Any, predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the screen")
        await pilot.pause(0.2)


def runs(root: Path) -> None:
    """dashboard, paused, failure, browser and compare: three runs, two of the demo and one that fails."""
    for name, lr in (("demo-lr3e-3", "3e-3"), ("demo-lr1e-3", "1e-3")):
        traindeck("run", "--detach", "--root-dir", str(root), "--name", name, str(DEMO), "--max-steps", "450",
                  "--lr", lr)
    traindeck("run", "--detach", "--root-dir", str(root), "--name", "failing", "--devices", "2", str(FAILING),
              "--max-steps", "200", "--sleep", "0.01", "--fail-at", "40")
    live = root / "demo-lr3e-3"
    wait(lambda: (record(live).get("step") or 0) >= 150, "the demo's first 150 steps")

    async def dashboard(pilot: Any) -> None:
        screen = pilot.app.screen
        await until(pilot, lambda: screen.model.connected and screen.model.history.names())
        await pilot.pause(2.0)
        save(pilot.app, "dashboard")
        await pilot.press("p")
        await until(pilot, lambda: screen.model.status == "paused")
        await pilot.pause(1.5)
        save(pilot.app, "paused")
        await pilot.press("p")
        await until(pilot, lambda: screen.model.status == "running")

    asyncio.run(shoot(live, record(live)["socket"], root, dashboard))
    for name in ("demo-lr3e-3", "demo-lr1e-3", "failing"):
        wait(lambda n=name: record(root / n).get("state") in ("finished", "failed", "stopped", "killed"),
             f"run {name} to end")

    async def failure(pilot: Any) -> None:
        await pilot.pause(1.5)
        save(pilot.app, "failure")

    asyncio.run(shoot(root / "failing", None, root, failure))

    async def browser(pilot: Any) -> None:
        await pilot.pause(1.0)
        table = pilot.app.screen.query_one("DataTable")
        for name in ("demo-lr3e-3", "demo-lr1e-3"):
            table.move_cursor(row=table.get_row_index(str(root / name)))
            await pilot.press("space")
        await pilot.pause(1.0)
        save(pilot.app, "browser")
        await pilot.press("v")
        await pilot.pause(1.0)
        save(pilot.app, "compare")

    asyncio.run(shoot(None, None, root, browser))


def sweep(root: Path) -> None:
    """sweep: six trials of the demo, two at a time, taken once three are complete and two run (or at its end)."""
    traindeck("sweep", "--detach", "--root-dir", str(root), "--name", "demo-sweep", "--trials", "6", "--parallel",
              "2", "--seed", "1", "--param", "lr=log:3e-4:3e-2", "--param", "batch_size=cat:32,64,128",
              "--metric", "val/acc", "--direction", "maximize", str(DEMO), "--max-steps", "150")
    sweep_dir = root / "demo-sweep"

    def summary() -> dict[str, Any]:
        try:
            return json.loads((sweep_dir / "sweep.json").read_text())
        except (OSError, ValueError):
            return {}

    wait(summary, "the sweep to start")

    async def trials(pilot: Any) -> None:
        screen = pilot.app.screen

        def ready() -> bool:  # some trials complete and two running; or, had that passed unseen, the sweep over
            states = [t.get("state") for t in (screen.summary or {}).get("trials") or []]
            return (states.count("complete") >= 3 and states.count("running") == 2) or \
                (screen.summary or {}).get("state") not in (None, "running")

        await until(pilot, ready, timeout=300.0)
        await pilot.pause(1.5)
        save(pilot.app, "sweep")

    asyncio.run(shoot(None, None, root, trials, sweep_dir=sweep_dir))
    wait(lambda: summary().get("state") not in (None, "running"), "the sweep to end")


PARTS = {"runs": runs, "sweep": sweep}


def main() -> None:
    wanted = sys.argv[1:] or list(PARTS)
    if not set(wanted) <= set(PARTS):
        raise SystemExit(f"usage: {Path(__file__).name} [runs] [sweep]  (default: both; runs makes dashboard, "
                         "paused, failure, browser and compare)")
    root = Path(tempfile.mkdtemp(prefix="traindeck-shots-")) / "runs"
    os.environ["TRAINDECK_SOCKET_DIR"] = tempfile.mkdtemp(prefix="td-shots-")
    os.environ["TRAINDECK_LINGER_S"] = "0.3"
    for part in PARTS:  # in this order: the browser picture shows only the three runs
        if part in wanted:
            PARTS[part](root)


if __name__ == "__main__":
    main()
