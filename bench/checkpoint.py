"""Training stall of a checkpoint: synchronous save vs AsyncCheckpointWriter.

A ~200 MB checkpoint (a stack of Linear layers, float32, with Adam's two moment buffers)
is saved repeatedly, alternating the two ways so that drift in disk speed hits both
alike. The stall is the time the training loop is blocked: the whole ``save_checkpoint``
for the synchronous way; ``stage()`` + ``submit()`` for the asynchronous one (measured
with no write in flight, so it excludes back-pressure), whose background write time is
reported beside it. Files go to a temp dir (``--dir`` to pick the filesystem).

    python bench/checkpoint.py [--mb 200] [--reps 5] [--dir /path/on/the/disk/to/test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine._checkpoint_async import AsyncCheckpointWriter  # noqa: E402
from engine._checkpoint_io import load_checkpoint, save_checkpoint  # noqa: E402

WIDTH = 2048


def make_training_state(megabytes: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A Linear stack whose weights plus Adam state come to about ``megabytes`` MB."""
    per_layer = (WIDTH * WIDTH + WIDTH) * 4 * 3
    layers = max(1, round(megabytes * 1e6 / per_layer))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_step(model, opt)
    return model, opt


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, WIDTH)).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def checkpoint_state(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    return {"state_dict": model.state_dict(), "optimizers": [opt.state_dict()], "loop": {"global_step": step}}


def payload_mb(state: dict[str, Any]) -> float:
    total = 0
    stack: list[Any] = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="checkpoint size to aim for, MB")
    parser.add_argument("--reps", type=int, default=5, help="saves of each kind")
    parser.add_argument("--dir", default=None, help="directory for the temp dir (default: the system's)")
    args = parser.parse_args()

    model, opt = make_training_state(args.mb)
    size = payload_mb(checkpoint_state(model, opt, 0))
    print(f"checkpoint: {size:.0f} MB of tensors ({len(model)} x Linear({WIDTH}, {WIDTH}) + Adam), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    sync_s: list[float] = []
    stall_s: list[float] = []
    write_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="traindeck-bench-ckpt-", dir=args.dir) as tmp, \
            AsyncCheckpointWriter() as writer:
        print(f"writing to {tmp}")
        done = threading.Event()
        errors: list[BaseException] = []

        def on_done(path: Path, error: BaseException | None) -> None:
            write_s.append(time.perf_counter() - submitted)
            if error is not None:
                errors.append(error)
            done.set()

        for rep in range(args.reps + 1):
            state = checkpoint_state(model, opt, rep)
            start = time.perf_counter()
            save_checkpoint(state, Path(tmp) / "sync.ckpt", {"step": rep})
            sync = time.perf_counter() - start

            writer.wait()
            done.clear()
            start = time.perf_counter()
            staged = writer.stage(checkpoint_state(model, opt, rep))
            submitted = time.perf_counter()
            writer.submit(staged, Path(tmp) / "async.ckpt", {"step": rep}, on_done)
            stall = time.perf_counter() - start
            del staged
            train_step(model, opt)
            done.wait()
            if errors:
                raise errors[0]
            if rep == 0:
                write_s.clear()
                continue
            sync_s.append(sync)
            stall_s.append(stall)
            print(f"  rep {rep}: sync save {sync * 1e3:7.1f} ms   async stall {stall * 1e3:6.1f} ms   "
                  f"background write {write_s[-1] * 1e3:7.1f} ms")
        file_mb = os.path.getsize(Path(tmp) / "async.ckpt") / 1e6
        loaded = load_checkpoint(Path(tmp) / "async.ckpt")
        assert loaded["loop"]["global_step"] == args.reps

    sync, stall, write = (statistics.median(v) for v in (sync_s, stall_s, write_s))
    print(f"median of {args.reps} (after one warm-up), file {file_mb:.0f} MB:")
    print(f"  synchronous save_checkpoint   {sync * 1e3:8.1f} ms  ({file_mb / sync:6.0f} MB/s)")
    print(f"  async stage()+submit() stall  {stall * 1e3:8.1f} ms")
    print(f"  async background write        {write * 1e3:8.1f} ms")
    print(f"  ratio async_stall / sync_save {stall / sync:8.3f}  (target <= 0.25)")


if __name__ == "__main__":
    main()
