"""Specification of ``traindeck ls`` and ``traindeck logs``, driven through their argument parser."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

import tui.cli_runs as cli_runs
from engine.runs import update_run_file
from engine.supervisor._paths import write_pointer
from tui.cli import CLIError
from tui.cli_runs import add_run_commands

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = """import argparse, sys
from tui.cli_runs import add_run_commands
parser = argparse.ArgumentParser(prog="traindeck")
add_run_commands(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def traindeck(*argv: str) -> int:
    """Run ``traindeck ARGV`` as tui.cli.main does: a CLIError prints one line and exits 2."""
    parser = argparse.ArgumentParser(prog="traindeck")
    add_run_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"traindeck: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture(autouse=True)
def socket_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sockets"
    monkeypatch.setenv("TRAINDECK_SOCKET_DIR", str(path))
    monkeypatch.setattr(cli_runs, "POLL_INTERVAL_S", 0.02)
    return path


def make_run(parent: Path, name: str, state: str = "finished", pid: int | None = None,
             age_s: float = 60.0, **fields: Any) -> Path:
    """A run directory with a run.json as the supervisor writes it."""
    run_dir = parent / name
    (run_dir / "logs").mkdir(parents=True)
    created = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat()
    record = {"name": name, "run_dir": str(run_dir.resolve()), "created": created, "host": socket.gethostname(),
              "command": ["train.py"], "cwd": str(parent), "devices": 1, "nnodes": 1, "torchrun_args": [],
              "attempt": 1, "state": state, "supervisor_pid": pid, "socket": None, "step": None, "epoch": None,
              "exit_status": None, "failure": None, "updated": created}
    (run_dir / "run.json").write_text(json.dumps({**record, **fields}))
    return run_dir


def write_log(run_dir: Path, rank: int, lines: list[str] | range) -> Path:
    path = run_dir / "logs" / f"rank{rank}.log"
    with open(path, "a") as f:
        f.writelines(f"{line}\n" for line in lines)
    return path


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Follower:
    """``traindeck logs ... -f`` running in a thread, with everything it has printed so far."""

    def __init__(self, capsys: pytest.CaptureFixture[str], *argv: str) -> None:
        self.capsys, self.out, self.err, self.status = capsys, "", "", None
        self.thread = threading.Thread(target=lambda: setattr(self, "status", traindeck("logs", *argv, "-f")))
        self.thread.start()

    def read(self) -> str:
        captured = self.capsys.readouterr()
        self.out, self.err = self.out + captured.out, self.err + captured.err
        return self.out

    def wait_for(self, text: str) -> None:
        wait_for(lambda: text in self.read())

    def join(self) -> int | None:
        self.thread.join(timeout=10)
        self.read()
        return self.status


# ls


def test_ls_prints_name_state_step_epoch_and_age_of_each_run_newest_first(
        root: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "done", state="finished", age_s=2 * 3600, step=1200, epoch=3)
    make_run(root, "live", state="running", pid=supervisor_pid, age_s=180, step=40, epoch=0)
    make_run(root, "crashed", state="failed", age_s=3 * 86400)

    status = traindeck("ls", "--root-dir", str(root))

    assert status == 0
    assert table(capsys.readouterr().out) == [
        ["NAME", "STATE", "STEP", "EPOCH", "AGE"],
        ["live", "running", "40", "0", "3", "min"],
        ["done", "finished", "1200", "3", "2", "h"],
        ["crashed", "failed", "-", "-", "3", "days"],
    ]


def test_ls_shows_a_run_whose_supervisor_died_as_lost(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass", "engine.supervisor"])
    dead.wait()
    make_run(root, "gone", state="running", pid=dead.pid)

    traindeck("ls", "--root-dir", str(root))

    assert table(capsys.readouterr().out)[1][:2] == ["gone", "lost"]


def test_ls_shows_a_corrupt_run_json_as_unknown(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json")

    assert traindeck("ls", "--root-dir", str(root)) == 0

    assert table(capsys.readouterr().out)[1][:2] == ["broken", "unknown"]


def test_ls_adds_the_directory_of_a_live_run_started_elsewhere(
        root: Path, tmp_path: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "here", age_s=600)
    far = make_run(tmp_path / "elsewhere", "far", state="running", pid=supervisor_pid, age_s=5)
    write_pointer(far, supervisor_pid)

    traindeck("ls", "--root-dir", str(root))

    rows = table(capsys.readouterr().out)
    assert rows[0] == ["NAME", "STATE", "STEP", "EPOCH", "AGE", "DIR"]
    assert rows[1][:4] + rows[1][-2:] == ["far", "running", "-", "-", "s", str(far)]
    assert rows[2] == ["here", "finished", "-", "-", "10", "min"]


def test_ls_json_prints_every_run_as_a_list_of_objects(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "done", step=7, epoch=1, attempt=2)

    assert traindeck("ls", "--root-dir", str(root), "--json") == 0

    [run] = json.loads(capsys.readouterr().out)
    assert {k: run[k] for k in ("name", "state", "live", "step", "epoch", "attempt", "command")} == \
        {"name": "done", "state": "finished", "live": False, "step": 7, "epoch": 1, "attempt": 2,
         "command": ["train.py"]}
    assert run["run_dir"] == str(root / "done")
    assert datetime.fromisoformat(run["created"]) < datetime.now(timezone.utc)


def test_ls_without_runs_says_so_and_succeeds(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert traindeck("ls", "--root-dir", str(root)) == 0

    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"no runs under {root}/ and no live runs elsewhere\n")


def test_ls_shows_the_newest_runs_and_all_of_them_with_all(
        root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_runs, "NEWEST_SHOWN", 2)
    for i in range(4):
        make_run(root, f"run{i}", age_s=100 * (i + 1))

    traindeck("ls", "--root-dir", str(root))
    short = capsys.readouterr()
    traindeck("ls", "--root-dir", str(root), "--all")
    full = capsys.readouterr()

    assert [row[0] for row in table(short.out)[1:]] == ["run0", "run1"]
    assert short.err == "(2 older runs not shown; --all lists them)\n"
    assert [row[0] for row in table(full.out)[1:]] == ["run0", "run1", "run2", "run3"]


# logs


def test_logs_prints_the_last_100_lines_of_rank_0_by_default(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(make_run(root, "done"), 0, range(1000))

    assert traindeck("logs", "done", "--root-dir", str(root)) == 0

    assert capsys.readouterr().out.splitlines() == [str(i) for i in range(900, 1000)]


def test_logs_n_prints_that_many_lines_and_0_the_whole_file(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(make_run(root, "done"), 0, range(500))

    traindeck("logs", "done", "-n", "3", "--root-dir", str(root))
    three = capsys.readouterr().out
    traindeck("logs", "done", "-n", "0", "--root-dir", str(root))
    whole = capsys.readouterr().out

    assert three == "497\n498\n499\n"
    assert whole.splitlines() == [str(i) for i in range(500)]


def test_logs_of_a_50_mb_log_prints_exactly_its_last_lines(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "big")
    line = b"step %07d " + b"x" * 88 + b"\n"
    (run_dir / "logs" / "rank0.log").write_bytes(b"".join(line % i for i in range(500_000)))

    assert traindeck("logs", "big", "-n", "5", "--root-dir", str(root)) == 0

    assert capsys.readouterr().out.encode() == b"".join(line % i for i in range(499_995, 500_000))


def test_logs_prints_an_unfinished_last_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "done")
    (run_dir / "logs" / "rank0.log").write_text("one\ntwo\nthree")

    traindeck("logs", "done", "-n", "2", "--root-dir", str(root))

    assert capsys.readouterr().out == "two\nthree\n"


def test_logs_rank_prints_that_ranks_log(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "ddp")
    write_log(run_dir, 0, ["zero"])
    write_log(run_dir, 1, ["one"])

    traindeck("logs", "ddp", "--rank", "1", "--root-dir", str(root))

    assert capsys.readouterr().out == "one\n"


def test_logs_rank_all_prints_each_ranks_lines_prefixed_rank_by_rank(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "ddp")
    write_log(run_dir, 1, ["b1", "b2"])
    write_log(run_dir, 0, ["a1", "a2", "a3"])

    traindeck("logs", "ddp", "--rank", "all", "-n", "2", "--root-dir", str(root))

    assert capsys.readouterr().out == "[rank 0] a2\n[rank 0] a3\n[rank 1] b1\n[rank 1] b2\n"


def test_logs_without_a_run_name_prints_the_only_live_runs_log(
        root: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(make_run(root, "done"), 0, ["old"])
    write_log(make_run(root, "live", state="running", pid=supervisor_pid), 0, ["new"])

    traindeck("logs", "--root-dir", str(root))

    assert capsys.readouterr().out == "new\n"


def test_logs_accepts_a_unique_prefix_of_the_run_name(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(make_run(root, "resnet-20240501"), 0, ["hello"])

    traindeck("logs", "res", "--root-dir", str(root))

    assert capsys.readouterr().out == "hello\n"


def test_logs_of_an_unknown_run_fails_listing_the_runs(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "a")
    make_run(root, "b")

    assert traindeck("logs", "x", "--root-dir", str(root)) == 2

    assert capsys.readouterr().err == f"traindeck: error: no run named 'x' under {root}/ (runs: a, b)\n"


def test_logs_of_an_ambiguous_prefix_fails_naming_the_matches(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "gpt-small")
    make_run(root, "gpt-large")

    assert traindeck("logs", "gpt", "--root-dir", str(root)) == 2

    assert capsys.readouterr().err == "traindeck: error: 'gpt' is ambiguous: matches gpt-large, gpt-small\n"


def test_logs_of_a_rank_without_a_log_fails_listing_the_ranks_that_have_one(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "ddp")
    write_log(run_dir, 0, ["a"])
    write_log(run_dir, 1, ["b"])

    assert traindeck("logs", "ddp", "--rank", "5", "--root-dir", str(root)) == 2

    assert capsys.readouterr().err == "traindeck: error: run 'ddp' has no log for rank 5 (ranks with logs: 0, 1)\n"


def test_logs_of_a_run_without_logs_fails_saying_none_exist_yet(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(root, "fresh")

    assert traindeck("logs", "fresh", "--root-dir", str(root)) == 2

    assert "traindeck: error: run 'fresh' has no logs yet" in capsys.readouterr().err


def test_logs_rejects_a_rank_that_is_not_a_number_or_all(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        traindeck("logs", "x", "--rank", "first")

    assert caught.value.code == 2
    assert "expected a rank number or 'all'" in capsys.readouterr().err


# logs -f


def test_logs_follow_prints_appended_lines_and_stops_when_the_run_ends(
        root: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "live", state="running", pid=supervisor_pid)
    log = write_log(run_dir, 0, ["before"])
    follower = Follower(capsys, "live", "--root-dir", str(root))
    follower.wait_for("before\n")

    write_log(run_dir, 0, ["after 1", "after 2"])
    follower.wait_for("after 2\n")
    with open(log, "a") as f:
        f.write("last words")
    update_run_file(run_dir, state="finished", exit_status=0)

    assert follower.join() == 0
    assert follower.out == "before\nafter 1\nafter 2\nlast words\n"


def test_logs_follow_reads_a_truncated_log_again_from_its_start(
        root: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "live", state="running", pid=supervisor_pid)
    log = write_log(run_dir, 0, ["a long first line", "another long line"])
    follower = Follower(capsys, "live", "--root-dir", str(root))
    follower.wait_for("another long line\n")

    log.write_text("fresh\n")
    follower.wait_for("fresh\n")
    update_run_file(run_dir, state="stopped")

    assert follower.join() == 0
    assert follower.out.endswith("another long line\nfresh\n")
    assert "was truncated or replaced; reading it from the start" in follower.err


def test_logs_follow_rank_all_picks_up_ranks_whose_logs_appear_later(
        root: Path, supervisor_pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(root, "live", state="running", pid=supervisor_pid)
    write_log(run_dir, 0, ["zero"])
    follower = Follower(capsys, "live", "--rank", "all", "--root-dir", str(root))
    follower.wait_for("[rank 0] zero\n")

    write_log(run_dir, 1, ["one"])
    follower.wait_for("[rank 1] one\n")
    update_run_file(run_dir, state="finished")

    assert follower.join() == 0


def test_logs_follow_of_a_finished_run_prints_its_tail_and_returns(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(make_run(root, "done"), 0, ["end"])

    assert traindeck("logs", "done", "-f", "--root-dir", str(root)) == 0

    captured = capsys.readouterr()
    assert captured.out == "end\n"
    assert "run 'done' is finished, not live: printing its log without following" in captured.err


def test_logs_follow_exits_130_on_ctrl_c(root: Path, supervisor_pid: int, socket_dir: Path) -> None:
    write_log(make_run(root, "live", state="running", pid=supervisor_pid), 0, ["hello"])
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, "logs", "live", "-f", "--root-dir", str(root)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TRAINDECK_SOCKET_DIR": str(socket_dir)})
    try:
        assert proc.stdout.readline() == b"hello\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        proc.kill()
        proc.wait()
