"""The checkpoint file layer: format, atomic writes under crashes and OS errors, async writes, inspect CLI."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import engine
from engine import CheckpointError
from engine._checkpoint_async import AsyncCheckpointWriter
from engine._checkpoint_format import FORMAT_VERSION, MAGIC, read_header, verify
from engine._checkpoint_io import load_checkpoint, save_checkpoint
from tui.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, **kwargs)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _sample_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 6, generator=g)
    return {
        "f32": base,
        "view": base[:, ::2],
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "f64_nan": torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.float64),
        "i64": torch.arange(-3, 3),
        "bool": torch.tensor([True, False]),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(7),
        "nested": {"list": [1, 2.5, "x", None, (3, torch.ones(2))], "rng": torch.get_rng_state()},
    }


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "last.ckpt"
    save_checkpoint(_sample_state(), path, {"step": 12, "epoch": 2, "metrics": {"loss": 0.25}, "world_size": 1})
    return path


def _payload_span(path: Path) -> tuple[int, int]:
    header = read_header(path)
    return header["payload_offset"], header["payload_bytes"]


# -- format ---------------------------------------------------------------------------


def test_round_trip_is_bitwise_and_the_header_holds_the_summary(ckpt):
    _assert_same(_sample_state(), load_checkpoint(ckpt))
    header = read_header(ckpt)
    assert ckpt.read_bytes().startswith(MAGIC)
    assert header["format_version"] == FORMAT_VERSION
    assert header["summary"] == {"step": 12, "epoch": 2, "metrics": {"loss": 0.25}, "world_size": 1}
    assert header["created"].endswith("Z")
    assert header["payload_offset"] + header["payload_bytes"] == ckpt.stat().st_size
    assert verify(ckpt) == (True, f"sha256 of the {header['payload_bytes']}-byte payload verified")
    assert _temps(ckpt.parent) == []


def test_summary_values_become_strict_json(tmp_path):
    path = tmp_path / "a.ckpt"
    save_checkpoint({}, path, {"metrics": {"nan": float("nan"), "t": torch.tensor(0.5), "i": torch.tensor(3)}})
    assert read_header(path)["summary"] == {"metrics": {"nan": "nan", "t": 0.5, "i": 3}}
    json.loads(path.read_bytes().split(b"\n")[1])


def test_a_truncated_file_names_how_much_payload_is_there(ckpt):
    offset, size = _payload_span(ckpt)
    with open(ckpt, "r+b") as f:
        f.truncate(offset + 100)
    with pytest.raises(CheckpointError, match=rf"{ckpt}.*truncated: payload is 100 of {size} bytes"):
        load_checkpoint(ckpt)
    with open(ckpt, "r+b") as f:
        f.truncate(len(MAGIC) + 10)
    with pytest.raises(CheckpointError, match="truncated: the file ends inside the header"):
        load_checkpoint(ckpt)


def test_a_flipped_payload_byte_is_a_checksum_mismatch(ckpt):
    offset, size = _payload_span(ckpt)
    data = bytearray(ckpt.read_bytes())
    data[offset + size // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{ckpt} is corrupt: checksum mismatch"):
        load_checkpoint(ckpt)
    valid, reason = verify(ckpt)
    assert not valid and "checksum mismatch" in reason


def test_bytes_after_the_payload_are_corruption(ckpt):
    with open(ckpt, "ab") as f:
        f.write(b"xx")
    with pytest.raises(CheckpointError, match="2 unexpected bytes after"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(("content", "message"), [
    (b"hello world, this is not it\n" * 10, "not a traindeck checkpoint"),
    (b"", "truncated: the file ends inside the magic line"),
    (MAGIC + b"{not json\n", "corrupt header"),
    (MAGIC + b'{"format_version": 1}\n', "'payload_bytes' is missing"),
])
def test_files_that_are_not_checkpoints_say_why(tmp_path, content, message):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert verify(path)[0] is False


def test_a_plain_torch_save_file_is_recognised(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="not a traindeck checkpoint.*plain torch.save file"):
        load_checkpoint(path)


def test_a_newer_format_version_is_refused_clearly(ckpt):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data.replace(b'"format_version": 1', b'"format_version": 3', 1))
    message = rf"format version 3, which is newer than this traindeck understands \({FORMAT_VERSION}\)"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=message):
        read_header(ckpt)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    save_checkpoint({"obj": _RunsCode()}, path)
    assert verify(path)[0]
    with pytest.raises(CheckpointError, match="intact payload that torch cannot load safely"):
        load_checkpoint(path)


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_header(tmp_path / "nope.ckpt")


def test_header_and_verify_work_without_importing_torch(ckpt):
    result = _python("""
        import json, sys
        from engine._checkpoint_format import read_header, verify
        header = read_header(sys.argv[1])
        print(json.dumps([header["summary"]["step"], verify(sys.argv[1])[0], "torch" in sys.modules]))
    """, str(ckpt))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [12, True, False]


def test_the_engine_package_imports_lazily():
    assert {"Module", "Trainer", "DataModule", "seed_everything", "CheckpointError"} <= set(dir(engine))
    result = _python("""
        import sys, engine
        before = "torch" in sys.modules
        from engine import Trainer, Module
        print(before, "torch" in sys.modules, Trainer.__name__, Module.__name__)
    """)
    assert result.stdout.split() == ["False", "True", "Trainer", "Module"], result.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engine.Nope  # noqa: B018


# -- atomic writes --------------------------------------------------------------------

_SAVER = """
    import sys, time, torch
    from engine._checkpoint_io import save_checkpoint
    blocks = [torch.empty(6_250_000) for _ in range(4)]
    i = 0
    while True:
        i += 1
        for block in blocks:
            block.fill_(i)
        print(f"begin {i}", flush=True)
        start = time.perf_counter()
        save_checkpoint({"i": i, "blocks": blocks}, sys.argv[1], {"step": i})
        print(f"saved {i} {time.perf_counter() - start:.4f}", flush=True)
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_valid(tmp_path):
    """A 100 MB state is saved over and over; the saver is SIGKILLed at a random moment of a later save."""
    path = tmp_path / "last.ckpt"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SAVER), str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        lines = iter(child.stdout.readline, "")
        duration = next(float(line.split()[2]) for line in lines if line.startswith("saved 1 "))
        assert next(lines) == "begin 2\n"
        fraction = random.uniform(0.05, 0.9)
        time.sleep(fraction * duration)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    state = load_checkpoint(path)
    i = state["i"]
    assert i >= 1 and all(torch.all(block == i) for block in state["blocks"]), f"killed at {fraction:.2f}"
    assert read_header(path)["summary"] == {"step": i}
    leftovers = _temps(tmp_path)
    assert len(leftovers) <= 1 and all(n.startswith(".last.ckpt.") for n in leftovers), leftovers
    save_checkpoint({"i": 0}, path)
    assert _temps(tmp_path) == [], "the next save removes the dead writer's temp file"


def test_a_live_writers_temp_file_is_not_removed(tmp_path):
    import fcntl

    path = tmp_path / "last.ckpt"
    dead, live = tmp_path / ".last.ckpt.dead0000.tmp", tmp_path / ".last.ckpt.live0000.tmp"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        save_checkpoint({"a": 1}, path)
        assert _temps(tmp_path) == [live.name]


_EFBIG = """
    import json, os, resource, signal, sys, torch
    from engine import CheckpointError
    from engine._checkpoint_io import load_checkpoint, save_checkpoint
    path = sys.argv[1]
    save_checkpoint({"w": torch.ones(10)}, path)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint({"w": torch.zeros(1_000_000)}, path)
        out = {"error": None}
    except CheckpointError as exc:
        out = {"error": str(exc), "errno": getattr(exc.__cause__, "errno", None)}
    out["files"] = sorted(os.listdir(os.path.dirname(path)))
    out["intact"] = torch.equal(load_checkpoint(path)["w"], torch.ones(10))
    print(json.dumps(out))
"""


def test_file_too_large_is_a_checkpoint_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.ckpt"
    result = _python(_EFBIG, str(path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["errno"] == errno.EFBIG
    assert out["error"].startswith(f"could not write checkpoint {path}: File too large (EFBIG)")
    assert out["files"] == ["last.ckpt"] and out["intact"]


def test_disk_full_is_a_checkpoint_error_and_keeps_the_old_file(ckpt, monkeypatch):
    before = ckpt.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match=rf"{ckpt}: No space left on device \(ENOSPC\)") as info:
        save_checkpoint({"w": torch.zeros(10)}, ckpt)
    assert isinstance(info.value.__cause__, OSError)
    assert ckpt.read_bytes() == before
    assert _temps(ckpt.parent) == []


def test_a_file_in_place_of_the_directory_is_a_checkpoint_error(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(CheckpointError, match="could not write checkpoint .*blocker/x.ckpt"):
        save_checkpoint({}, tmp_path / "blocker" / "x.ckpt")


# -- async writer ---------------------------------------------------------------------


def test_staged_state_is_a_snapshot(tmp_path):
    weight = torch.zeros(1000)
    source = {"w": weight, "tied": weight, "nested": [{"step": torch.tensor(1)}], "n": 3}
    with AsyncCheckpointWriter() as writer:
        staged = writer.stage(source)
        weight.add_(1)
        source["nested"][0]["step"].add_(1)
        source["nested"].append("later")
        assert staged["tied"] is staged["w"]
        done: list[tuple[Path, BaseException | None]] = []
        writer.submit(staged, tmp_path / "a.ckpt", {"step": 1}, on_done=lambda p, e: done.append((p, e)))
        writer.wait()
    assert done == [(tmp_path / "a.ckpt", None)]
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded["w"], torch.zeros(1000)) and loaded["nested"] == [{"step": torch.tensor(1)}]
    assert read_header(tmp_path / "a.ckpt")["summary"] == {"step": 1}


def test_submits_wait_for_the_write_in_flight(tmp_path, monkeypatch):
    import engine._checkpoint_async as ca

    spans: list[tuple[str, float, float]] = []

    def slow_save(state: Any, path: Path, summary: Any = None) -> Path:
        start = time.monotonic()
        time.sleep(0.2)
        spans.append((path.name, start, time.monotonic()))
        return path

    monkeypatch.setattr(ca, "save_checkpoint", slow_save)
    order: list[str] = []
    with AsyncCheckpointWriter() as writer:
        start = time.monotonic()
        writer.submit({}, tmp_path / "a", on_done=lambda p, e: order.append(p.name))
        assert time.monotonic() - start < 0.15, "an idle writer does not block submit"
        assert writer.busy
        writer.submit({}, tmp_path / "b", on_done=lambda p, e: order.append(p.name))
        returned = time.monotonic()
        writer.wait()
        assert not writer.busy
    assert order == ["a", "b"]
    (_, _, a_end), (_, b_start, _) = spans
    assert a_end <= b_start and a_end <= returned


def test_a_background_write_error_goes_to_on_done_and_the_writer_goes_on(tmp_path):
    (tmp_path / "blocker").write_text("")
    results: list[tuple[Path, BaseException | None]] = []
    with AsyncCheckpointWriter() as writer:
        writer.submit(writer.stage({"w": torch.ones(3)}), tmp_path / "blocker" / "a.ckpt",
                      on_done=lambda p, e: results.append((p, e)))
        writer.submit(writer.stage({"w": torch.ones(3)}), tmp_path / "b.ckpt",
                      on_done=lambda p, e: 1 / 0)
        writer.save({"w": torch.ones(3)}, tmp_path / "c.ckpt", on_done=lambda p, e: results.append((p, e)))
        writer.wait()
    (bad_path, error), (good_path, no_error) = results
    assert isinstance(error, CheckpointError) and "blocker/a.ckpt" in str(error)
    assert good_path == tmp_path / "c.ckpt" and no_error is None
    assert verify(tmp_path / "b.ckpt")[0] and verify(tmp_path / "c.ckpt")[0]
    with pytest.raises(RuntimeError, match="after close"):
        writer.submit({}, tmp_path / "d.ckpt")


# -- traindeck ckpt inspect -----------------------------------------------------------


def test_inspect_prints_the_summary_without_importing_torch(ckpt):
    result = _python("""
        import sys
        from tui.cli import main
        code = main(["ckpt", "inspect", sys.argv[1]])
        print("torch loaded:", "torch" in sys.modules, "exit:", code)
    """, str(ckpt))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "torch loaded: False exit: 0" in out
    for expected in ("version 1", "step        12", "epoch       2", "loss 0.25", "world size  1",
                     f"({ckpt.stat().st_size} bytes)", "valid       yes: sha256"):
        assert expected in out, out


def test_inspect_exit_status_and_json(ckpt, capsys):
    assert cli_main(["ckpt", "inspect", str(ckpt), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["step"] == 12 and report["metrics"] == {"loss": 0.25}
    assert report["size_bytes"] == ckpt.stat().st_size and report["format_version"] == FORMAT_VERSION

    with open(ckpt, "r+b") as f:
        f.truncate(ckpt.stat().st_size - 1)
    assert cli_main(["ckpt", "inspect", str(ckpt)]) == 1
    assert "valid       NO: " in capsys.readouterr().out
    assert cli_main(["ckpt", "inspect", str(ckpt), "--json"]) == 1
    assert "truncated" in json.loads(capsys.readouterr().out)["reason"]

    assert cli_main(["ckpt", "inspect", str(ckpt.parent / "missing.ckpt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
