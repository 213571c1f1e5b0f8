"""The cockpit in a real terminal: tmux runs `traindeck demo`, keys go in, the screen is read back.

Closing the terminal (killing the tmux session sends SIGHUP) must leave the job running.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.runs import read_run_file
from tests.test_supervisor import TERMINAL, ctl, wait_for, wait_state

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", "traindeck-test", *args], capture_output=True, text=True, check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", "demo")


def test_demo_in_a_real_terminal_pauses_on_p_and_survives_the_terminal_closing(env: dict[str, str]) -> None:
    command = (f"cd {Path.cwd()} && TRAINDECK_SOCKET_DIR={env['TRAINDECK_SOCKET_DIR']} {sys.executable} -m tui.cli "
               "demo --name tdemo --max-steps 100000 --max-epochs 100000 --n-train 512")
    tmux("new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", command)
    run_dir = Path("runs/tdemo")
    try:
        wait_for(lambda: "RUNNING" in screen(), 90, "the RUNNING badge on screen")
        wait_for(lambda: "train/" in screen() or "loss" in screen(), 60, "a metric on the chart")
        tmux("send-keys", "-t", "demo", "p")
        wait_for(lambda: "PAUSED" in screen(), 20, "the PAUSED badge")
        wait_for(lambda: read_run_file(run_dir)["state"] == "paused", 5, "run.json to say paused")
        tmux("send-keys", "-t", "demo", "p")
        wait_for(lambda: "RUNNING" in screen(), 20, "RUNNING again")
        cockpit = [p for p in psutil.process_iter(["cmdline"]) if "demo" in (p.info["cmdline"] or [])
                   and "tui.cli" in (p.info["cmdline"] or [])]
        assert len(cockpit) == 1
        tmux("kill-session", "-t", "demo")
        wait_for(lambda: not cockpit[0].is_running() or cockpit[0].status() == psutil.STATUS_ZOMBIE, 10,
                 "the cockpit to exit on SIGHUP")
        step = read_run_file(run_dir)["step"]
        # A validation (16 batches every 2 steps) may still be running after the resume: wait for the next step.
        wait_for(lambda: read_run_file(run_dir)["step"] > step, 30, "a step after the terminal closed")
        assert read_run_file(run_dir)["state"] == "running", "the job goes on without its terminal"
    finally:
        subprocess.run(["tmux", "-L", "traindeck-test", "kill-server"], capture_output=True)
        if (run_dir / "run.json").exists() and read_run_file(run_dir).get("state") not in TERMINAL:
            ctl("tdemo", "stop", "--no-checkpoint")
            wait_state(run_dir, TERMINAL)
