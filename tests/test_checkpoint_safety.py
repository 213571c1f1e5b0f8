"""Checkpoints under real failures: preemption signals, corrupt files, OS errors, retention, unsafe files.

The preemption tests run ``tests/scripts/preemptible_train.py`` in child processes and
signal them from here; everything else trains a TinyClassifier in-process.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from conftest import TinyClassifier, make_loader
from engine import CheckpointError
from engine._checkpoint_format import read_header, verify
from engine._checkpoint_io import load_checkpoint, save_checkpoint
from engine._preemption import PREEMPTED_EXIT_CODE
from engine.callbacks import Callback, ModelCheckpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "scripts" / "preemptible_train.py"
STEPS_PER_EPOCH, TOTAL_STEPS = 16, 48  # what the script trains: 64 samples in batches of 4, 3 epochs
CHILD_TIMEOUT_S = 120


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def _names(directory: Path) -> list[str]:
    """Every entry of ``directory``, hidden temp files included."""
    return sorted(p.name for p in directory.iterdir())


# -- preemption, with real signals to a real training process ---------------------------


def _child_env() -> dict[str, str]:
    """This environment without anything that would make the child join a process group or a given run."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAINDECK_", "SLURM_", "TORCHELASTIC_")) and k not in launcher}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(loss_file: Path, root: Path, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(loss_file), str(root), name, *args], cwd=ROOT,
                            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(child: subprocess.Popen[str]) -> str:
    try:
        output, _ = child.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return output


def _losses(loss_file: Path) -> list[tuple[int, str]]:
    """(global_step, loss as a hex float) for every complete line the run has written so far."""
    if not loss_file.exists():
        return []
    rows = [line.split() for line in loss_file.read_text().split("\n")[:-1]]
    return [(int(step), loss) for step, loss in rows]


def _wait_until_step(child: subprocess.Popen[str], loss_file: Path, step: int) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not any(s == step for s, _ in _losses(loss_file)):
        if child.poll() is not None:
            pytest.fail(f"the training process ended (status {child.returncode}) before step {step}:\n"
                        + _finish(child))
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the training process did not reach step {step} in {CHILD_TIMEOUT_S} s")
        time.sleep(0.01)


def _preempt(tmp_path: Path, signal_name: str, at_step: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the script under ``tmp_path/runs/job``, send ``signal_name`` once it logged ``at_step``."""
    loss_file = tmp_path / "before.loss"
    child = _start(loss_file, tmp_path / "runs", "job", "--hold-at", str(at_step))
    _wait_until_step(child, loss_file, at_step)
    child.send_signal(signal.Signals[signal_name])
    output = _finish(child)
    return subprocess.CompletedProcess(child.args, child.returncode, output), tmp_path / "runs" / "job"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], tuple[list, dict]]]:
    """The same script run start to end, started at once so it runs alongside the first test's child."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    child = _start(tmp / "all.loss", tmp / "runs", "job", "--params", str(tmp / "params.pt"))

    @functools.cache
    def result() -> tuple[list[tuple[int, str]], dict[str, torch.Tensor]]:
        output = _finish(child)
        assert child.returncode == 0, output
        return _losses(tmp / "all.loss"), torch.load(tmp / "params.pt")

    yield result
    if child.poll() is None:
        child.kill()
        child.communicate()


def test_sigterm_mid_epoch_saves_exits_75_and_the_resumed_run_is_bit_for_bit_the_uninterrupted_one(
        tmp_path, uninterrupted):
    step = STEPS_PER_EPOCH + 5  # the 5th batch of the second epoch
    done, run_dir = _preempt(tmp_path, "SIGTERM", step)

    assert done.returncode == PREEMPTED_EXIT_CODE, done.stdout
    last = run_dir / "checkpoints" / "last.ckpt"
    preempted = [e for e in _events(run_dir) if e["event"] == "preempted"]
    assert [(e["signal"], e["step"], e["path"]) for e in preempted] == [("SIGTERM", step, str(last))]
    assert verify(last)[0]
    assert read_header(last)["summary"]["step"] == step
    assert load_checkpoint(last)["loop"]["batches_done"] == 5
    before = _losses(tmp_path / "before.loss")
    assert [s for s, _ in before] == list(range(1, step + 1))

    resumed = _start(tmp_path / "after.loss", tmp_path / "runs", "job", "--resume",
                     "--params", str(tmp_path / "params.pt"))
    output = _finish(resumed)
    assert resumed.returncode == 0, output
    after = _losses(tmp_path / "after.loss")
    assert [s for s, _ in after] == list(range(step + 1, TOTAL_STEPS + 1)), "resumes after the saved step"
    assert [e["path"] for e in _events(run_dir) if e["event"] == "resumed"] == [str(last)]

    reference_losses, reference_params = uninterrupted()
    assert before + after == reference_losses
    params = torch.load(tmp_path / "params.pt")
    assert params.keys() == reference_params.keys()
    assert all(torch.equal(params[k], reference_params[k]) for k in params)


def test_sigusr1_also_saves_last_ckpt_records_the_event_and_exits_75(tmp_path):
    step = 10
    done, run_dir = _preempt(tmp_path, "SIGUSR1", step)

    assert done.returncode == PREEMPTED_EXIT_CODE, done.stdout
    assert f"preempted by SIGUSR1, checkpoint at step {step}" in done.stdout
    last = run_dir / "checkpoints" / "last.ckpt"
    assert [(e["signal"], e["step"]) for e in _events(run_dir) if e["event"] == "preempted"] == [("SIGUSR1", step)]
    assert verify(last)[0]
    loop = load_checkpoint(last)["loop"]
    assert (loop["epoch"], loop["global_step"], loop["batches_done"]) == (0, step, step)


# -- ckpt_path="last" with a corrupt newest file ------------------------------------------


def test_ckpt_path_last_skips_a_corrupt_newest_file_and_warns_why(make_trainer, tmp_path, traindeck_log):
    directory = tmp_path / "ckpt"
    make_trainer(max_epochs=3, callbacks=[ModelCheckpoint(dirpath=directory, save_top_k=-1)]).fit(
        TinyClassifier(), make_loader(16))
    newest, previous = directory / "epoch=2-step=6.ckpt", directory / "epoch=1-step=4.ckpt"
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    traindeck_log.clear()

    starts = []

    class Start(Callback):
        def on_train_start(self, trainer, module):
            starts.append((trainer.current_epoch, trainer.global_step))

    trainer = make_trainer(max_epochs=4, callbacks=[Start(), ModelCheckpoint(dirpath=directory, save_top_k=-1)])
    trainer.fit(TinyClassifier(), make_loader(16), ckpt_path="last")

    assert starts == [(2, 4)]
    assert trainer.global_step == 8
    warnings = [r.getMessage() for r in traindeck_log.records if r.levelno == logging.WARNING]
    assert any(f"skipping {newest}" in w and "truncated" in w for w in warnings), warnings
    assert any(f"using {previous}" in w for w in warnings), warnings


# -- OS errors while saving ---------------------------------------------------------------


def test_a_save_failing_with_an_os_error_is_logged_and_recorded_and_training_runs_to_the_end(
        make_trainer, tmp_path, traindeck_log):
    good = tmp_path / "good" / "epoch=0-step=2.ckpt"
    make_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=good.parent)]).fit(
        TinyClassifier(), make_loader(16))
    good_bytes = good.read_bytes()
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where the checkpoint directory should be")

    trainer = make_trainer(max_epochs=3, callbacks=[ModelCheckpoint(dirpath=blocker / "ckpt")])
    trainer.fit(TinyClassifier(), make_loader(16))

    assert (trainer.current_epoch, trainer.global_step) == (3, 6)
    errors = [r.getMessage() for r in traindeck_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 3, errors
    assert all(str(blocker / "ckpt") in e and "Not a directory (ENOTDIR)" in e for e in errors), errors
    failed = [e for e in _events(tmp_path / "run") if e["event"] == "checkpoint_failed"]
    assert [e["step"] for e in failed] == [2, 4, 6]
    assert all("ENOTDIR" in e["error"] for e in failed)
    assert good.read_bytes() == good_bytes and verify(good)[0]


def test_after_a_failed_save_the_next_trigger_saves_again(make_trainer, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where the checkpoint directory should be")
    directory = blocker / "ckpt"

    class RemoveBlockerAfterFirstSave(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                trainer.wait_for_checkpoints()
                blocker.unlink()

    ckpt = ModelCheckpoint(dirpath=directory, save_top_k=-1)
    make_trainer(max_epochs=3, callbacks=[RemoveBlockerAfterFirstSave(), ckpt]).fit(
        TinyClassifier(), make_loader(16))

    events = [(e["event"], e["step"]) for e in _events(tmp_path / "run") if e["event"].startswith("checkpoint")]
    assert events == [("checkpoint_failed", 2), ("checkpoint", 4), ("checkpoint", 6)]
    assert _names(directory) == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]
    assert all(verify(directory / name)[0] for name in _names(directory))
    assert ckpt.best_model_path == str(directory / "epoch=2-step=6.ckpt")


# -- retention ----------------------------------------------------------------------------


def test_save_top_k_2_keeps_the_newest_two_files_and_last_ckpt_is_a_link_to_the_newest(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=2, save_last=True)
    make_trainer(max_steps=10, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(48))

    assert _names(directory) == ["epoch=1-step=10.ckpt", "epoch=1-step=9.ckpt", "last.ckpt"]
    newest, last = directory / "epoch=1-step=10.ckpt", directory / "last.ckpt"
    assert last.stat().st_ino == newest.stat().st_ino or last.read_bytes() == newest.read_bytes()
    assert load_checkpoint(last)["loop"]["global_step"] == 10
    assert load_checkpoint(directory / "epoch=1-step=9.ckpt")["loop"]["global_step"] == 9


def test_when_the_new_save_fails_the_files_it_would_replace_are_kept(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "epoch=0-step=4.ckpt").mkdir(parents=True)  # the step-4 save cannot replace a directory

    ckpt = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=2, save_last=True)
    make_trainer(max_steps=4, callbacks=[ckpt]).fit(TinyClassifier(), make_loader(48))

    assert [(e["event"], e["step"]) for e in _events(tmp_path / "run")][-1] == ("checkpoint_failed", 4)
    assert _names(directory) == ["epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    assert load_checkpoint(directory / "epoch=0-step=2.ckpt")["loop"]["global_step"] == 2
    assert load_checkpoint(directory / "epoch=0-step=3.ckpt")["loop"]["global_step"] == 3
    assert load_checkpoint(directory / "last.ckpt")["loop"]["global_step"] == 3


def test_after_a_failed_save_retention_still_keeps_exactly_the_newest_k(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "epoch=0-step=4.ckpt").mkdir(parents=True)

    class Unblock(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 5:
                trainer.wait_for_checkpoints()
                (directory / "epoch=0-step=4.ckpt").rmdir()

    ckpt = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=2, save_last=True)
    make_trainer(max_steps=8, callbacks=[Unblock(), ckpt]).fit(TinyClassifier(), make_loader(48))

    assert _names(directory) == ["epoch=1-step=7.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]


class _Scored(TinyClassifier):
    """Logs ``score = scores[current_epoch]`` in validation."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def validation_step(self, batch, batch_idx):
        self.log("score", self.scores[self.current_epoch])


def test_after_a_failed_save_a_monitored_top_k_still_keeps_exactly_the_k_best(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "epoch=1-step=4.ckpt").mkdir(parents=True)

    class Unblock(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                trainer.wait_for_checkpoints()
                (directory / "epoch=1-step=4.ckpt").rmdir()

    ckpt = ModelCheckpoint(dirpath=directory, monitor="score", save_top_k=1)
    make_trainer(max_epochs=4, num_sanity_val_steps=0, callbacks=[Unblock(), ckpt]).fit(
        _Scored([5, 4, 3, 2]), make_loader(16), make_loader(8))

    assert _names(directory) == ["epoch=3-step=8.ckpt"]
    assert (ckpt.best_model_path, ckpt.best_model_score) == (str(directory / "epoch=3-step=8.ckpt"), 2.0)


# -- resuming into something else ---------------------------------------------------------


def test_resuming_with_a_different_world_size_is_a_checkpoint_error_naming_both_sizes(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    make_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=directory)]).fit(TinyClassifier(), make_loader(16))
    # What a 2-process run leaves (a real one needs a process group): the same file, saved with world_size 2.
    single = directory / "epoch=0-step=2.ckpt"
    path = tmp_path / "two-processes.ckpt"
    save_checkpoint({**load_checkpoint(single), "world_size": 2}, path,
                    {**read_header(single)["summary"], "world_size": 2})

    with pytest.raises(CheckpointError, match=rf"{path} was saved by 2 processes but this run has 1"):
        make_trainer(max_epochs=2).fit(TinyClassifier(), make_loader(16), ckpt_path=path)


class _TwoLayers(TinyClassifier):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


def test_resuming_a_model_with_a_changed_layer_size_is_a_checkpoint_error_naming_the_file(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    make_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=directory)]).fit(_TwoLayers(8), make_loader(16))
    path = directory / "epoch=0-step=2.ckpt"

    changed = _TwoLayers(6)
    before = [p.detach().clone() for p in changed.parameters()]
    with pytest.raises(CheckpointError, match=rf"(?s)checkpoint {path} does not match _TwoLayers.*different shapes: layer.0.weight: checkpoint \(8, 4\) vs model \(6, 4\)"):
        make_trainer(max_epochs=2).fit(changed, make_loader(16), ckpt_path=path)
    assert all(torch.equal(a, b) for a, b in zip(before, changed.parameters()))


# -- unsafe files -------------------------------------------------------------------------


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(make_trainer, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "downloaded.ckpt"
    state = {"state_dict": TinyClassifier().state_dict(), "loop": {"epoch": 0, "global_step": 0},
             "extra": _RunsCodeWhenUnpickled(marker)}
    save_checkpoint(state, path, {"step": 0, "epoch": 0})
    assert verify(path)[0], "a correct checksum says nothing about what the payload does"

    with pytest.raises(CheckpointError, match=rf"{path} has an intact payload that torch cannot load safely"):
        make_trainer(max_epochs=1).fit(TinyClassifier(), make_loader(16), ckpt_path=path)
    assert not marker.exists()

    header = read_header(path)  # control: an unsafe torch.load of the same payload does run it
    with open(path, "rb") as f:
        f.seek(header["payload_offset"])
        torch.load(io.BytesIO(f.read()), weights_only=False)
    assert marker.read_text() == "the payload ran"


# -- traindeck ckpt inspect ---------------------------------------------------------------


def test_ckpt_inspect_shows_the_step_epoch_and_metrics_of_a_real_fit(make_trainer, tmp_path):
    directory = tmp_path / "ckpt"
    trainer = make_trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[ModelCheckpoint(dirpath=directory)])
    trainer.fit(TinyClassifier(), make_loader(16), make_loader(8))
    path = directory / "epoch=1-step=4.ckpt"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert set(metrics) == {"train_loss", "val_loss"}

    traindeck = Path(sys.executable).with_name("traindeck")
    command = [str(traindeck)] if traindeck.exists() else [sys.executable, "-m", "tui"]
    table = subprocess.run([*command, "ckpt", "inspect", str(path)], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in table.stdout.splitlines()
             if line and not line.startswith(("world", "batches"))}
    assert lines["step"] == "4" and lines["epoch"] == "1"
    assert f"val_loss {metrics['val_loss']:.6g}" in lines["metrics"]
    assert f"train_loss {metrics['train_loss']:.6g}" in lines["metrics"]
    assert lines["valid"].startswith("yes: sha256")

    report = json.loads(subprocess.run([*command, "ckpt", "inspect", str(path), "--json"], capture_output=True,
                                       text=True, timeout=60).stdout)
    assert (report["step"], report["epoch"], report["valid"]) == (4, 1, True)
    assert report["metrics"] == pytest.approx(metrics)
