"""The supervisor end to end: real `traindeck run` jobs, real sockets, real torchrun groups.

Each test starts a job through the CLI (detached), talks to it as a user would (`traindeck
ctl`, the client library) and checks the run directory, the rank logs and the processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from engine import protocol
from engine.client import Client
from engine.runs import read_run_file

SCRIPT = Path(__file__).parent / "scripts" / "controlled_train.py"
TERMINAL = ("finished", "failed", "stopped", "killed")


def traindeck(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"traindeck {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def start(name: str, *script_args: str, devices: int = 1) -> Path:
    traindeck("run", "--detach", "--devices", str(devices), "--name", name, str(SCRIPT), *script_args)
    return Path("runs") / name


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_state(run_dir: Path, states: tuple[str, ...], timeout: float = 90.0) -> dict[str, Any]:
    return wait_for(lambda: (r := read_run_file(run_dir)) and r.get("state") in states and r,
                    timeout, f"{run_dir.name} to reach {states}")


def wait_running(run_dir: Path) -> dict[str, Any]:
    return wait_for(lambda: (r := read_run_file(run_dir)) and r.get("step") is not None and r, 60,
                    f"{run_dir.name} to take its first steps")


def ctl(name: str, *words: str, check: bool = True) -> dict[str, Any]:
    result = traindeck("ctl", name, *words, "--json", check=check)
    return json.loads(result.stdout) if result.stdout.strip() else {"stderr": result.stderr}


def steps(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    path = run_dir / f"steps-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def job_pids(run_dir: Path) -> set[int]:
    """Every pid the run's events and run.json name: supervisor, launcher, ranks."""
    pids = {e["pid"] for e in events(run_dir) if e.get("event") in ("started", "rank_up")}
    record = read_run_file(run_dir) or {}
    return pids | ({record["supervisor_pid"]} if record.get("supervisor_pid") else set())


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


def test_a_finished_run_leaves_its_record_logs_and_metrics(env: dict[str, str]) -> None:
    run_dir = start("plain", "--max-steps", "60")
    record = wait_state(run_dir, TERMINAL)
    assert record["state"] == "finished" and record["exit_status"] == 0 and record["step"] == 60
    kinds = [e["event"] for e in events(run_dir)]
    assert kinds[:3] == ["created", "started", "rank_up"] and kinds[-1] == "finished"
    assert "[traindeck] model: Net" in (run_dir / "logs" / "rank0.log").read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 50] and "train/loss" in metrics[0]["metrics"]
    wait_for(lambda: not list(Path(env["TRAINDECK_SOCKET_DIR"]).iterdir()), 10,
             "the supervisor to remove its socket and pointer after its linger")


def test_every_rank_applies_commands_at_the_step_in_the_reply(env: dict[str, str]) -> None:
    run_dir = start("group", "--max-steps", "60", "--sleep", "0.05", "--pg-timeout", "3", devices=2)
    wait_running(run_dir)
    paused = ctl("group", "pause")
    pause_started = time.monotonic()
    set_lr = ctl("group", "set", "lr=0.02")
    set_t = ctl("group", "set", "temperature=2")
    saved = ctl("group", "checkpoint")
    time.sleep(max(0.0, 7.0 - (time.monotonic() - pause_started)))  # twice the process-group timeout
    resumed = ctl("group", "resume")
    assert all(r["ok"] for r in (paused, set_lr, set_t, saved, resumed))
    step = paused["step"]
    assert set_lr["step"] == set_t["step"] == saved["step"] == resumed["step"] == step
    assert Path(saved["detail"]["path"]).is_file()
    record = wait_state(run_dir, TERMINAL)
    assert record["state"] == "finished" and record["step"] == 60
    for rank in (0, 1):
        log = (run_dir / "logs" / f"rank{rank}.log").read_text()
        assert f"rank {rank} applied set key=lr value=0.02 at step {step}" in log
        by_step = {s["step"]: s for s in steps(run_dir, rank)}
        assert by_step[step]["lr"] == 0.1 and by_step[step + 1]["lr"] == 0.02
        assert by_step[step]["temperature"] == 1.0 and by_step[step + 1]["temperature"] == 2.0
    commands = [e for e in events(run_dir) if e["event"] == "command"]
    assert [(c["action"], c["step"], c["client"].startswith("cli:")) for c in commands] == [
        ("pause", step, True), ("set", step, True), ("set", step, True), ("checkpoint", step, True),
        ("resume", step, True)]


def val_records(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    path = run_dir / f"val-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_commands_during_a_validation_act_on_every_rank_at_the_same_validation_batch(env: dict[str, str]) -> None:
    run_dir = start("validating", "--max-steps", "8", "--val-every", "4", "--val-batches", "40", "--val-sleep", "0.1",
                    "--pg-timeout", "3", devices=2)
    wait_for(lambda: len(val_records(run_dir, 0)) >= 2, 90, "the first validation to begin")
    paused = ctl("validating", "pause")
    time.sleep(7.0)  # twice the process-group timeout, inside a validation
    set_t = ctl("validating", "set", "temperature=2")
    resumed = ctl("validating", "resume")
    saved = ctl("validating", "checkpoint")
    at_checkpoint = [r for r in val_records(run_dir, 0) if r["step"] == 4]
    assert all(r["ok"] for r in (paused, set_t, resumed, saved))
    assert paused["step"] == set_t["step"] == resumed["step"] == saved["step"] == 4
    assert len(at_checkpoint) == 40  # the checkpoint waited for the validation's end
    assert Path(saved["detail"]["path"]).name == "step=4-command.ckpt"
    record = wait_state(run_dir, TERMINAL)
    assert record["state"] == "finished" and record["step"] == 8
    changed_at = []
    for rank in (0, 1):
        first = [r for r in val_records(run_dir, rank) if r["step"] == 4]
        assert [r["batch"] for r in first] == list(range(40))
        changed_at.append(next(r["batch"] for r in first if r["temperature"] == 2.0))
        log = (run_dir / "logs" / f"rank{rank}.log").read_text()
        assert f"rank {rank} applied set key=temperature value=2 at step 4 (validation batch {changed_at[-1]})" in log
    assert changed_at[0] == changed_at[1] < 40


def test_stop_while_paused_saves_a_checkpoint_and_ends_the_run(env: dict[str, str]) -> None:
    run_dir = start("stopper", "--max-steps", "400", "--sleep", "0.02")
    wait_running(run_dir)
    paused = ctl("stopper", "pause")
    stopped = ctl("stopper", "stop")
    assert stopped["ok"] and stopped["step"] == paused["step"]
    record = wait_state(run_dir, TERMINAL)
    assert record["state"] == "stopped" and record["exit_status"] == 0
    assert Path(stopped["detail"]["path"]).name == f"step={paused['step']}-command.ckpt"
    assert steps(run_dir, 0)[-1]["step"] == paused["step"]


def test_resume_continues_a_stopped_run_with_the_values_set_before(env: dict[str, str]) -> None:
    run_dir = start("again", "--max-steps", "80", "--sleep", "0.02")
    wait_running(run_dir)
    ctl("again", "set", "lr=0.03")
    ctl("again", "set", "temperature=3")
    stopped = ctl("again", "stop")
    wait_state(run_dir, ("stopped",))
    traindeck("resume", "again", "--detach")
    record = wait_state(run_dir, ("finished", "failed"))
    assert record["state"] == "finished" and record["attempt"] == 2
    after = [s for s in steps(run_dir, 0)[stopped["step"]:]]
    assert after and all(s["lr"] == 0.03 and s["temperature"] == 3.0 for s in after)
    assert after[-1]["step"] == 80
    assert (run_dir / "logs" / "rank0.log").read_text().count("resuming from") == 1


def test_bad_commands_are_refused_with_the_reason(env: dict[str, str]) -> None:
    run_dir = start("picky", "--max-steps", "300", "--sleep", "0.02")
    wait_running(run_dir)
    unknown = ctl("picky", "set", "warp=9", check=False)
    assert not unknown["ok"] and "unknown key 'warp'" in unknown["error"] and "lr" in unknown["error"]
    assert ctl("picky", "resume", check=False)["error"] == "not paused"
    bad_value = traindeck("ctl", "picky", "set", "lr=fast", check=False)
    assert bad_value.returncode == 2 and "'fast' is not a number" in bad_value.stderr
    unknown_run = traindeck("ctl", "nosuch", "pause", check=False)
    assert unknown_run.returncode == 2 and "no run named 'nosuch'" in unknown_run.stderr
    ctl("picky", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)
    finished = traindeck("ctl", "picky", "pause", check=False)
    assert finished.returncode == 2 and "not live" in finished.stderr


def test_kill_takes_down_every_process_of_the_group(env: dict[str, str]) -> None:
    run_dir = start("doomed", "--max-steps", "100000", "--sleep", "0.02", devices=2)
    wait_running(run_dir)
    pids = job_pids(run_dir)
    assert ctl("doomed", "kill", "--grace", "2")["ok"]
    record = wait_state(run_dir, TERMINAL, timeout=30)
    assert record["state"] == "killed"
    wait_for(lambda: not alive(pids), 10, "every process of the run to exit")


def test_a_killed_supervisor_takes_its_job_with_it(env: dict[str, str]) -> None:
    run_dir = start("orphan", "--max-steps", "100000", "--sleep", "0.02", devices=2)
    record = wait_running(run_dir)
    pids = job_pids(run_dir)
    assert len(pids) == 4  # supervisor, torchrun, two ranks
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(pids), 10, "every process of the run to exit")
    listed = json.loads(traindeck("ls", "--json").stdout)
    assert [r["state"] for r in listed if r["name"] == "orphan"] == ["lost"]


def test_sigterm_to_the_supervisor_stops_the_job_with_a_checkpoint(env: dict[str, str]) -> None:
    run_dir = start("polite", "--max-steps", "100000", "--sleep", "0.02")
    record = wait_running(run_dir)
    os.kill(record["supervisor_pid"], signal.SIGTERM)
    record = wait_state(run_dir, TERMINAL, timeout=60)
    assert record["state"] == "stopped" and record["exit_status"] == 75
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_failing_rank_is_named_with_its_error(env: dict[str, str]) -> None:
    run_dir = start("broken", "--max-steps", "100", "--fail-at", "5", devices=2)
    record = wait_state(run_dir, TERMINAL)
    assert record["state"] == "failed" and record["exit_status"] != 0
    assert record["failure"]["rank"] == 1 and "failing on purpose at step 5" in record["failure"]["message"]
    failed = [e for e in events(run_dir) if e["event"] == "failed"]
    assert failed and failed[0]["failure"]["rank"] == 1
    assert "RuntimeError: failing on purpose" in (run_dir / "logs" / "rank1.log").read_text()


def test_a_client_gets_a_snapshot_then_live_metrics_logs_state_and_telemetry(env: dict[str, str]) -> None:
    run_dir = start("watched", "--max-steps", "100000", "--sleep", "0.02")
    record = wait_running(run_dir)
    seen: dict[str, int] = {}
    with Client(record["socket"], name="test-watcher") as client:
        snapshot = client.subscribe(["metrics", "telemetry", "logs", "events", "state"])
        assert snapshot["state"]["run"] == "watched" and "0" in snapshot["logs"]
        assert any(e["event"] == "rank_up" for e in snapshot["events"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not {"metrics", "telemetry", "state"} <= set(seen):
            message = client.recv(timeout=1)
            if message is not None:
                seen[message["type"]] = seen.get(message["type"], 0) + 1
                if message["type"] == "telemetry":
                    assert message["sample"]["ranks"][0]["rank"] == 0
        tail = client.tail(0, 5)
    assert {"metrics", "telemetry", "state"} <= set(seen)
    assert tail["ok"] and len(tail["lines"]) == 5
    ctl("watched", "stop", "--no-checkpoint")
    wait_state(run_dir, TERMINAL)


def test_a_client_attaching_again_sees_every_step_logged_while_it_was_away(env: dict[str, str]) -> None:
    run_dir = start("gapless", "--max-steps", "100000", "--sleep", "0.005", "--log-every", "1")
    try:
        record = wait_running(run_dir)
        with Client(record["socket"], name="first") as client:
            first = wait_for(lambda: client.subscribe(["metrics"])["history"].get("train/loss"), 30, "the first losses")
        time.sleep(2.0)
        with Client(record["socket"], name="second") as client:
            history = client.subscribe(["metrics"])["history"]["train/loss"]
    finally:  # never leave the job running, also when the test fails
        ctl("gapless", "stop", "--no-checkpoint", check=False)
        wait_state(run_dir, TERMINAL)
    buckets, recent = history["buckets"], history["recent"]
    assert buckets[0][0] == 0 and recent[-1][0] > first["recent"][-1][0] + 50
    covered = sorted({step for b in buckets for step in range(b[0], b[1] + 1)} | {p[0] for p in recent})
    assert covered == list(range(recent[-1][0] + 1)), "no step missing between the two attachments"
    assert sum(b[7] for b in buckets) >= recent[-1][0]


def _fuzz(path: str, stop: threading.Event, seed: int) -> int:
    """Random bytes and mutated messages from several connections; never a valid command with an effect."""
    rng = random.Random(seed)
    valid = [{"type": "hello", "version": 1, "role": "client"}, {"type": "subscribe", "id": 1, "topics": ["logs"]},
             {"type": "tail", "id": 2, "rank": 0, "lines": 3}, {"type": "command", "id": 3, "action": "set",
                                                                 "args": {"key": "nope", "value": 1}}]
    sent = 0
    while not stop.is_set():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(path)
                sock.sendall(protocol.encode(valid[0]))
                for _ in range(50):
                    choice = rng.random()
                    if choice < 0.3:
                        line = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) + b"\n"
                    else:
                        message = json.loads(json.dumps(rng.choice(valid)))
                        key = rng.choice(list(message))
                        message[key] = rng.choice([None, 1e308, -1, "x" * 50, [1, {}], {"a": []}, True])
                        if isinstance(message.get("action"), str) and message["action"] in protocol.ACTIONS:
                            message["action"] = "explode"
                        line = protocol.encode(message) if choice < 0.9 else protocol.encode(message)[:-5] + b"\n"
                    sock.sendall(line)
                    sent += 1
            except OSError:
                pass
    return sent


def test_fuzzing_the_socket_does_not_change_training(env: dict[str, str]) -> None:
    quiet = start("quiet", "--max-steps", "120", "--sleep", "0.01")
    wait_state(quiet, TERMINAL)
    noisy = start("noisy", "--max-steps", "120", "--sleep", "0.01")
    record = wait_for(lambda: (r := read_run_file(noisy)) and r.get("socket") and r, 30, "the socket")
    stop = threading.Event()
    counts: list[int] = []
    threads = [threading.Thread(target=lambda s=s: counts.append(_fuzz(record["socket"], stop, s))) for s in range(3)]
    for thread in threads:
        thread.start()
    final = wait_state(noisy, TERMINAL)
    stop.set()
    for thread in threads:
        thread.join()
    assert sum(counts) > 1000 and final["state"] == "finished"
    assert [s["loss"] for s in steps(noisy, 0)] == [s["loss"] for s in steps(quiet, 0)]


def test_run_in_the_foreground_prints_the_logs_and_returns_the_exit_status(env: dict[str, str]) -> None:
    result = traindeck("run", "--name", "fg", str(SCRIPT), "--max-steps", "30", check=False)
    assert result.returncode == 0, result.stderr
    assert "[traindeck] model: Net" in result.stdout
    assert "run fg finished" in result.stderr
    failing = traindeck("run", "--name", "fg-fail", str(SCRIPT), "--max-steps", "30", "--fail-at", "3", check=False)
    assert failing.returncode == 1 and "failing on purpose" in failing.stdout + failing.stderr


def test_run_refuses_a_missing_script_and_a_taken_name(env: dict[str, str]) -> None:
    missing = traindeck("run", "--detach", "nosuch.py", check=False)
    assert missing.returncode == 2 and "no such script: nosuch.py" in missing.stderr
    Path("runs/taken").mkdir(parents=True)
    Path("runs/taken/run.json").write_text("{}")
    taken = traindeck("run", "--detach", "--name", "taken", str(SCRIPT), check=False)
    assert taken.returncode == 2 and "traindeck resume taken" in taken.stderr
