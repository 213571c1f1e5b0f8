"""What the cockpit costs while it watches a live 2-rank job: bytes/s to the terminal, CPU, start-up.

The cockpit runs in a real pseudo-terminal of 120x40 (``traindeck attach``), locally and
as over SSH (``SSH_CONNECTION`` set: 1 frame a second, no animations), while the job logs a
metric every step. Targets: <= 10 KB/s written over SSH, <= 5% of one core, first frame
(the header, with the run's name and state) well under a second; "all panes" is when the
rest of the dashboard is on screen too.

    .venv/bin/python bench/tui.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "tests" / "scripts" / "controlled_train.py"


def cli(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "tui.cli", *args], check=True, cwd=REPO, env=env, capture_output=True)


def state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def watch(run_name: str, root: Path, env: dict[str, str], seconds: float, ssh: bool) -> dict[str, float]:
    """Run the cockpit in a 120x40 pty; count what it writes and the CPU it uses once warmed up."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child_env = {**env, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    if ssh:
        child_env["SSH_CONNECTION"] = "10.0.0.1 50000 10.0.0.2 22"
    else:
        child_env.pop("SSH_CONNECTION", None)
        child_env.pop("SSH_TTY", None)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "tui.cli", "attach", run_name, "--root-dir", str(root)],
                               stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=child_env,
                               start_new_session=True)
    os.close(slave)
    first_frame = dashboard = None
    seen = b""
    total = 0
    warm_until = started + 5.0
    measure_start = cpu_start = None
    deadline = warm_until + seconds
    cockpit = psutil.Process(process.pid)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if dashboard is None:
            seen += data
            if first_frame is None and run_name.encode() in seen:
                first_frame = time.monotonic() - started
            if b"Events" in seen:  # a tab label: the panes are on screen too
                dashboard = time.monotonic() - started
        if measure_start is None and time.monotonic() >= warm_until:
            measure_start, total = time.monotonic(), 0
            times = cockpit.cpu_times()
            cpu_start = times.user + times.system
        total += len(data)
    times = cockpit.cpu_times()
    elapsed = time.monotonic() - (measure_start or warm_until)
    cpu = (times.user + times.system - (cpu_start or 0.0)) / elapsed
    process.terminate()
    process.wait(10)
    os.close(master)
    return {"bytes_per_s": total / elapsed, "cpu_percent": 100 * cpu, "first_frame_s": first_frame or float("nan"),
            "dashboard_s": dashboard or float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per mode (default 20)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="traindeck-tui-bench-"))
    root = tmp / "runs"
    env = {**os.environ, "TRAINDECK_SOCKET_DIR": tempfile.mkdtemp(prefix="td-bench-"), "TRAINDECK_LINGER_S": "0.3"}
    cli("run", "--detach", "--devices", "2", "--root-dir", str(root), "--name", "watched", str(JOB),
        "--max-steps", "1000000", "--sleep", "0.03", "--log-every", "1", env=env)
    try:
        while (state(root / "watched").get("step") or 0) < 20:
            time.sleep(0.2)
        results = {mode: watch("watched", root, env, args.seconds, ssh=mode == "ssh") for mode in ("local", "ssh")}
    finally:
        cli("ctl", "watched", "kill", "--grace", "1", "--root-dir", str(root), env=env)
    steps_per_s = None
    record = state(root / "watched")
    print(f"cockpit watching a live 2-rank job (metric logged every step), 120x40 pty, {args.seconds:g} s each"
          + (f"; job at step {record.get('step')}" if record.get("step") else "") + (steps_per_s or ""))
    print(f"{'mode':<8}{'bytes/s':>12}{'CPU % of a core':>18}{'first frame':>14}{'all panes':>12}")
    for mode, r in results.items():
        print(f"{mode:<8}{r['bytes_per_s']:>12,.0f}{r['cpu_percent']:>18.1f}{r['first_frame_s']:>13.2f}s"
              f"{r['dashboard_s']:>11.2f}s")
    print("targets: ssh <= 10,000 bytes/s; CPU <= 5%; first frame well under 1 s")
    print("command: .venv/bin/python bench/tui.py --seconds", f"{args.seconds:g}")


if __name__ == "__main__":
    main()
