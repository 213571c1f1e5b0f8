"""Specification of the run registry (engine.runs): what ``traindeck ls`` and ``logs`` know about runs."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from engine.runs import (
    RunNotFound,
    list_runs,
    load_run,
    read_run_file,
    resolve_run,
    tail_offset,
    update_run_file,
    write_run_file,
)
from engine.supervisor._paths import write_pointer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def socket_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private socket directory, so the user's real one (and its pointers) is never read."""
    path = tmp_path / "sockets"
    monkeypatch.setenv("TRAINDECK_SOCKET_DIR", str(path))
    return path


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass", "engine.supervisor"])
    proc.wait()
    return proc.pid


def make_run(parent: Path, name: str, state: str = "finished", pid: int | None = None,
             age_s: float = 60.0, **fields: Any) -> Path:
    """A run directory with a run.json as the supervisor writes it."""
    run_dir = parent / name
    run_dir.mkdir(parents=True)
    created = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    record = {"name": name, "run_dir": str(run_dir.resolve()), "created": created.isoformat(),
              "host": socket.gethostname(), "command": ["train.py", "--lr", "0.1"], "cwd": str(parent),
              "devices": 1, "nnodes": 1, "torchrun_args": [], "attempt": 1, "state": state,
              "supervisor_pid": pid, "socket": None, "step": None, "epoch": None, "exit_status": None,
              "failure": None, "updated": created.isoformat()}
    (run_dir / "run.json").write_text(json.dumps({**record, **fields}))
    return run_dir


def write_metrics(run_dir: Path, steps: range, epoch_every: int = 0, start_time: float | None = None) -> None:
    """metrics.jsonl lines as JSONLinesLogger writes them; every ``epoch_every`` steps one carries an epoch."""
    start_time = start_time if start_time is not None else 1_700_000_000.0
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in steps:
            metrics: dict[str, Any] = {"train_loss": 1.0 / (step + 1)}
            if epoch_every and step % epoch_every == 0:
                metrics["epoch"] = float(step // epoch_every)
            f.write(json.dumps({"step": step, "time": start_time + step, "metrics": metrics}) + "\n")


def write_events(run_dir: Path, *kinds: str) -> None:
    with open(run_dir / "events.jsonl", "a") as f:
        for i, kind in enumerate(kinds):
            f.write(json.dumps({"time": 1_700_000_000.0 + i, "event": kind, "source": "rank0"}) + "\n")


# run.json


def test_read_run_file_is_none_when_the_run_has_no_run_json(tmp_path: Path) -> None:
    assert read_run_file(tmp_path) is None


def test_corrupt_run_json_reads_as_state_unknown_with_a_reason(root: Path) -> None:
    run_dir = root / "broken"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"state": "runn')

    run = load_run(run_dir)

    assert (run.state, run.live) == ("unknown", False)
    assert "run.json is not valid JSON" in run.reason


def test_run_json_holding_a_list_reads_as_state_unknown(root: Path) -> None:
    run_dir = root / "odd"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("[1, 2]")

    assert load_run(run_dir).state == "unknown"


def test_write_run_file_writes_the_record_stamped_with_updated_and_leaves_no_temp_file(tmp_path: Path) -> None:
    written = write_run_file(tmp_path, {"name": "a", "state": "running"})

    assert read_run_file(tmp_path) == written
    assert written["state"] == "running" and datetime.fromisoformat(written["updated"]).tzinfo is not None
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_update_run_file_changes_only_the_given_fields(tmp_path: Path) -> None:
    write_run_file(tmp_path, {"name": "a", "state": "running", "step": 3})

    update_run_file(tmp_path, state="finished", exit_status=0)

    assert {k: v for k, v in read_run_file(tmp_path).items() if k != "updated"} == \
        {"name": "a", "state": "finished", "step": 3, "exit_status": 0}


def test_update_run_file_without_run_json_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        update_run_file(tmp_path, state="running")


# states of supervised runs


def test_finished_run_has_the_state_step_epoch_and_attempt_of_its_run_json(root: Path) -> None:
    make_run(root, "done", state="finished", step=500, epoch=4, attempt=2)

    run = load_run(root / "done")

    assert (run.name, run.state, run.live, run.step, run.epoch, run.attempt) == ("done", "finished", False, 500, 4, 2)
    assert run.command == ["train.py", "--lr", "0.1"]


def test_running_run_whose_supervisor_is_alive_is_live(root: Path, supervisor_pid: int) -> None:
    make_run(root, "live", state="running", pid=supervisor_pid)

    run = load_run(root / "live")

    assert (run.state, run.live, run.supervisor_pid) == ("running", True, supervisor_pid)


def test_running_run_whose_supervisor_died_is_lost(root: Path, dead_pid: int) -> None:
    make_run(root, "gone", state="running", pid=dead_pid)

    run = load_run(root / "gone")

    assert (run.state, run.live) == ("lost", False)
    assert f"pid {dead_pid}" in run.reason


def test_running_run_whose_pid_now_belongs_to_another_program_is_lost(root: Path) -> None:
    make_run(root, "reused", state="checkpointing", pid=os.getpid())

    assert load_run(root / "reused").state == "lost"


def test_running_run_without_a_supervisor_pid_is_lost(root: Path) -> None:
    make_run(root, "nopid", state="starting", pid=None)

    assert load_run(root / "nopid").state == "lost"


def test_failed_run_keeps_its_failure_record(root: Path) -> None:
    failure = {"rank": 1, "exit_status": 1, "message": "CUDA out of memory"}
    make_run(root, "oom", state="failed", failure=failure, exit_status=1)

    assert load_run(root / "oom").failure == failure


def test_a_metrics_line_newer_than_run_json_gives_the_step(root: Path, supervisor_pid: int) -> None:
    run_dir = make_run(root, "live", state="running", pid=supervisor_pid, age_s=3600, step=10, epoch=0)
    write_metrics(run_dir, range(0, 250), epoch_every=100, start_time=datetime.now(timezone.utc).timestamp() - 300)

    run = load_run(run_dir)

    assert (run.step, run.epoch) == (249, 2)


def test_run_json_newer_than_the_last_metrics_line_gives_the_step(root: Path) -> None:
    run_dir = make_run(root, "done", state="finished", age_s=10, step=300, epoch=3)
    write_metrics(run_dir, range(0, 250), epoch_every=100)

    assert (load_run(run_dir).step, load_run(run_dir).epoch) == (300, 3)


# runs started without the supervisor (no run.json)


def test_plain_run_takes_its_step_from_the_last_metrics_line_and_epoch_from_the_last_one_with_an_epoch(
        root: Path) -> None:
    run_dir = root / "plain"
    run_dir.mkdir()
    write_metrics(run_dir, range(0, 20_000), epoch_every=1000)

    run = load_run(run_dir)

    assert (run.step, run.epoch, run.live) == (19_999, 19, False)


def test_plain_run_ignores_a_half_written_last_metrics_line(root: Path) -> None:
    run_dir = root / "plain"
    run_dir.mkdir()
    write_metrics(run_dir, range(0, 10))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "ti')

    assert load_run(run_dir).step == 9


def test_plain_run_whose_last_event_is_preempted_is_preempted(root: Path) -> None:
    run_dir = root / "plain"
    run_dir.mkdir()
    write_events(run_dir, "checkpoint", "preempted")

    assert load_run(run_dir).state == "preempted"


def test_plain_run_with_a_rank_failure_file_is_failed_with_its_last_traceback_line(root: Path) -> None:
    run_dir = root / "plain"
    (run_dir / "failures").mkdir(parents=True)
    write_metrics(run_dir, range(0, 5))
    (run_dir / "failures" / "rank1.txt").write_text("Traceback...\nValueError: bad batch\n")

    run = load_run(run_dir)

    assert (run.state, run.failure) == ("failed", {"rank": 1, "message": "ValueError: bad batch"})


def test_plain_run_whose_failure_predates_its_last_metrics_is_not_failed(root: Path) -> None:
    run_dir = root / "plain"
    (run_dir / "failures").mkdir(parents=True)
    (run_dir / "failures" / "rank0.txt").write_text("ValueError: first attempt\n")
    os.utime(run_dir / "failures" / "rank0.txt", (1_699_000_000, 1_699_000_000))
    write_metrics(run_dir, range(0, 5))

    assert load_run(run_dir).state == "unknown"


def test_plain_run_without_an_end_marker_is_unknown(root: Path) -> None:
    run_dir = root / "plain"
    run_dir.mkdir()
    write_events(run_dir, "resumed", "checkpoint")
    write_metrics(run_dir, range(0, 5))

    run = load_run(run_dir)

    assert run.state == "unknown" and "no run.json" in run.reason
    assert run.created == datetime.fromtimestamp(1_700_000_000.0, timezone.utc)


# listing


def test_list_runs_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert list_runs(tmp_path / "nowhere") == []


def test_list_runs_lists_runs_newest_first(root: Path) -> None:
    make_run(root, "old", age_s=7200)
    make_run(root, "new", age_s=10)
    make_run(root, "middle", age_s=600)

    assert [r.name for r in list_runs(root)] == ["new", "middle", "old"]


def test_list_runs_finds_sweep_trials_one_level_down(root: Path) -> None:
    make_run(root / "sweep", "trial-0")
    make_run(root / "sweep", "trial-1")

    assert sorted(r.name for r in list_runs(root)) == ["sweep/trial-0", "sweep/trial-1"]


def test_list_runs_skips_directories_that_are_not_runs(root: Path) -> None:
    (root / "notes" / "deeper").mkdir(parents=True)
    make_run(root, "real")

    assert [r.name for r in list_runs(root)] == ["real"]


def test_list_runs_includes_live_runs_started_elsewhere(root: Path, tmp_path: Path, supervisor_pid: int) -> None:
    far = make_run(tmp_path / "elsewhere", "far", state="running", pid=supervisor_pid)
    write_pointer(far, supervisor_pid)

    runs = list_runs(root)

    assert [(r.name, r.run_dir, r.live) for r in runs] == [("far", far, True)]


def test_list_runs_skips_pointers_whose_supervisor_is_gone(root: Path, tmp_path: Path, dead_pid: int) -> None:
    far = make_run(tmp_path / "elsewhere", "far", state="running", pid=dead_pid)
    write_pointer(far, dead_pid)

    assert list_runs(root) == []


def test_list_runs_lists_a_run_under_root_once_when_a_pointer_also_names_it(root: Path, supervisor_pid: int) -> None:
    run_dir = make_run(root, "live", state="running", pid=supervisor_pid)
    write_pointer(run_dir, supervisor_pid)

    assert [r.name for r in list_runs(root)] == ["live"]


# resolving what the user typed


def test_resolve_run_prefers_an_exact_name_over_longer_names_it_prefixes(root: Path) -> None:
    make_run(root, "a")
    make_run(root, "ab")

    assert resolve_run("a", root).name == "a"


def test_resolve_run_accepts_a_unique_prefix(root: Path) -> None:
    make_run(root, "resnet-20240501")
    make_run(root, "gpt-20240502")

    assert resolve_run("res", root).name == "resnet-20240501"


def test_resolve_run_names_the_matches_of_an_ambiguous_prefix(root: Path) -> None:
    make_run(root, "gpt-small")
    make_run(root, "gpt-large")

    with pytest.raises(RunNotFound, match=r"^'gpt' is ambiguous: matches gpt-large, gpt-small$"):
        resolve_run("gpt", root)


def test_resolve_run_of_an_unknown_name_lists_the_runs(root: Path) -> None:
    for name in ("c", "a", "b"):
        make_run(root, name)

    with pytest.raises(RunNotFound) as caught:
        resolve_run("x", root)
    assert str(caught.value) == f"no run named 'x' under {root}/ (runs: a, b, c)"


def test_resolve_run_accepts_a_run_directory_path(root: Path, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "archive", "kept")

    assert resolve_run(str(run_dir), root).run_dir == run_dir


def test_resolve_run_of_nothing_is_the_single_live_run(root: Path, supervisor_pid: int) -> None:
    make_run(root, "done")
    make_run(root, "live", state="running", pid=supervisor_pid)

    assert resolve_run(None, root).name == "live"


def test_resolve_run_of_nothing_with_two_live_runs_asks_for_one(root: Path, supervisor_pid: int) -> None:
    make_run(root, "b", state="running", pid=supervisor_pid)
    make_run(root, "a", state="paused", pid=supervisor_pid)

    with pytest.raises(RunNotFound, match=r"^2 live runs \(a, b\): name one$"):
        resolve_run(None, root)


def test_resolve_run_of_nothing_without_live_runs_lists_the_runs(root: Path) -> None:
    make_run(root, "b")
    make_run(root, "a")

    with pytest.raises(RunNotFound, match=r"^no live run; name one: a, b$"):
        resolve_run(None, root)


def test_resolve_run_live_only_refuses_a_finished_run(root: Path) -> None:
    make_run(root, "done", state="finished")

    with pytest.raises(RunNotFound, match=r"^run 'done' is not live \(state finished\)$"):
        resolve_run("done", root, live_only=True)


# reading tails


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb", buffering=0)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def close(self) -> None:
        self.file.close()


def test_tail_offset_finds_the_last_lines_of_a_large_file_reading_only_its_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"line %07d\n" % i for i in range(300_000)))
    reader = CountingReader(path)

    offset = tail_offset(reader, 3)

    reader.seek(offset)
    assert reader.file.read() == b"line 0299997\nline 0299998\nline 0299999\n"
    assert reader.bytes_read < 200_000
    reader.close()


def test_tail_offset_counts_an_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"a\nb\nc")

    with open(path, "rb") as f:
        assert tail_offset(f, 2) == 2


def test_tail_offset_of_more_lines_than_the_file_has_is_its_start(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"a\nb\n")

    with open(path, "rb") as f:
        assert tail_offset(f, 10) == 0


def test_the_registry_and_its_commands_import_without_torch() -> None:
    code = "import sys, engine.runs, tui.cli_runs; print('torch' in sys.modules)"

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"
