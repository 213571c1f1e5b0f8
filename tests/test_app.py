"""The cockpit driven by Textual's Pilot against a real supervisor and a real small job.

Keys change the job (pause stops its steps, checkpoint writes a file, set lr changes the
ranks' optimizer), and quitting detaches without touching it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from textual.pilot import Pilot

from engine.runs import read_run_file
from tests.test_supervisor import TERMINAL, ctl, start, steps, wait_running, wait_state
from tui.app import TraindeckApp
from tui.screens.run import RunScreen
from tui.widgets.header import RunHeader


def drive(app: TraindeckApp, body: Callable[[Pilot], Awaitable[None]], size: tuple[int, int] = (120, 40),
          notifications: bool = False) -> Any:
    async def main() -> None:
        async with app.run_test(size=size, notifications=notifications) as pilot:
            await body(pilot)

    asyncio.run(main())
    return app.return_value


async def until(pilot: Pilot, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def screen_of(pilot: Pilot) -> RunScreen:
    screen = pilot.app.screen
    assert isinstance(screen, RunScreen), type(screen)
    return screen


def header_text(pilot: Pilot) -> str:
    return pilot.app.screen.query_one(RunHeader).render().plain


def test_pause_key_pauses_every_step_and_the_header_says_paused(env: dict[str, str]) -> None:
    run_dir = start("tui-pause", "--max-steps", "100000", "--sleep", "0.01")
    record = wait_running(run_dir)

    async def body(pilot: Pilot) -> None:
        await until(pilot, lambda: screen_of(pilot).model.status == "running", what="the running state")
        await pilot.press("p")
        await until(pilot, lambda: screen_of(pilot).model.status == "paused", what="the paused state")
        await until(pilot, lambda: "PAUSED" in header_text(pilot), what="the PAUSED badge")
        count = len(steps(run_dir, 0))
        await pilot.pause(1.0)
        assert len(steps(run_dir, 0)) == count, "no step while paused"
        await pilot.press("p")
        await until(pilot, lambda: len(steps(run_dir, 0)) > count, what="steps after resume")

    drive(TraindeckApp(run_dir, record["socket"]), body)
    ctl("tui-pause", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)


def test_checkpoint_key_writes_a_checkpoint_file(env: dict[str, str]) -> None:
    run_dir = start("tui-ckpt", "--max-steps", "100000", "--sleep", "0.01")
    record = wait_running(run_dir)

    async def body(pilot: Pilot) -> None:
        await until(pilot, lambda: screen_of(pilot).model.connected, what="the connection")
        await pilot.press("c")
        await until(pilot, lambda: list((run_dir / "checkpoints").glob("step=*-command.ckpt")),
                    what="the command checkpoint")

    drive(TraindeckApp(run_dir, record["socket"]), body)
    ctl("tui-ckpt", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)


def test_set_lr_dialog_refuses_a_bad_number_then_changes_every_rank(env: dict[str, str]) -> None:
    run_dir = start("tui-lr", "--max-steps", "100000", "--sleep", "0.02", devices=2)
    record = wait_running(run_dir)

    async def body(pilot: Pilot) -> None:
        await until(pilot, lambda: screen_of(pilot).model.connected, what="the connection")
        await pilot.press("l")
        await pilot.press(*"abc", "enter")
        assert "not a number" in str(pilot.app.screen.query_one("#why").render())
        await pilot.press("backspace", "backspace", "backspace", *"0.02", "enter")
        await until(pilot, lambda: all(s and s[-1]["lr"] == 0.02 for s in (steps(run_dir, 0), steps(run_dir, 1))),
                    what="both ranks at lr 0.02")

    drive(TraindeckApp(run_dir, record["socket"]), body)
    changed = [[s["step"] for s in steps(run_dir, r) if s["lr"] == 0.02][0] for r in (0, 1)]
    assert changed[0] == changed[1]
    ctl("tui-lr", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)


def test_quit_then_detach_leaves_the_job_running(env: dict[str, str]) -> None:
    run_dir = start("tui-quit", "--max-steps", "100000", "--sleep", "0.01")
    record = wait_running(run_dir)

    async def body(pilot: Pilot) -> None:
        await until(pilot, lambda: screen_of(pilot).model.connected, what="the connection")
        await pilot.press("q")
        await pilot.press("d")

    assert drive(TraindeckApp(run_dir, record["socket"]), body) == "detached"
    before = len(steps(run_dir, 0))
    time.sleep(1.0)
    assert read_run_file(run_dir)["state"] == "running" and len(steps(run_dir, 0)) > before
    ctl("tui-quit", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)


def test_a_finished_run_opens_from_its_files(env: dict[str, str]) -> None:
    run_dir = start("tui-done", "--max-steps", "120", "--log-every", "1")
    wait_state(run_dir, TERMINAL)

    async def body(pilot: Pilot) -> None:
        screen = screen_of(pilot)
        assert screen.model.status == "finished" and "FINISHED" in header_text(pilot)
        assert "train/loss" in screen.model.history.names()
        metric_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert screen.model.history.step_range("train/loss") == (0, metric_rows[-1]["step"])

    drive(TraindeckApp(Path(run_dir), None), body)


def test_r_resumes_a_stopped_run_and_the_cockpit_follows_the_new_attempt(env: dict[str, str]) -> None:
    run_dir = start("tui-again", "--max-steps", "100000", "--sleep", "0.01")
    wait_running(run_dir)
    stopped = ctl("tui-again", "stop")
    wait_state(run_dir, ("stopped",))

    async def body(pilot: Pilot) -> None:
        assert screen_of(pilot).model.status == "stopped"
        await pilot.press("r")
        await until(pilot, lambda: screen_of(pilot).model.live and screen_of(pilot).model.status == "running",
                    timeout=60, what="the new attempt, live")
        await until(pilot, lambda: (screen_of(pilot).model.state.get("step") or 0) > stopped["step"],
                    what="steps after the stop")

    drive(TraindeckApp(run_dir, None, root_dir=run_dir.parent), body)
    assert read_run_file(run_dir)["attempt"] == 2
    ctl("tui-again", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)
