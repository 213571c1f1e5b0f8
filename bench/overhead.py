"""Framework overhead per training step: raw PyTorch vs traindeck vs PyTorch Lightning.

The same tiny MLP (32→128→2), the same data (batch 64) and the same number of steps run
side by side in one process, one thread, alternating rounds so that drift in machine
speed hits every contender alike. Prints time per step and each ratio to raw, then the
import cost of ``engine`` (and ``lightning``) beyond ``import torch``.

    python bench/overhead.py [--steps 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 64


def make_data(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, 32, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 2))


def run_raw(loader: DataLoader) -> float:
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, y in loader:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def traindeck_net() -> "torch.nn.Module":
    """The tiny MLP as a traindeck Module that logs its loss every step (shared with ddp_overhead.py)."""
    from engine import Module

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Net()


def run_traindeck(loader: DataLoader) -> float:
    from engine import Trainer

    import tempfile

    with tempfile.TemporaryDirectory() as root:
        timer = _EpochTimer()
        trainer = Trainer(max_epochs=1, default_root_dir=root, enable_progress_bar=False,
                          enable_checkpointing=False, accelerator="cpu", callbacks=[timer])
        trainer.fit(traindeck_net(), loader)
    return timer.elapsed


def run_lightning(loader: DataLoader) -> float | None:
    try:
        import lightning.pytorch as pl
    except ImportError:
        return None

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.elapsed = time.perf_counter() - self.start

    import logging
    import tempfile

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    timer = Timer()
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(max_epochs=1, default_root_dir=root, accelerator="cpu", devices=1,
                             callbacks=[timer], enable_model_summary=False)
        trainer.fit(Net(), loader)
    return timer.elapsed


class _EpochTimer:
    """Times the training epoch only, as the Lightning timer does (start-up excluded)."""

    def __new__(cls):
        from engine.callbacks import Callback

        class Timer(Callback):
            elapsed = 0.0

            def on_train_epoch_start(self, trainer, module):
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                self.elapsed = time.perf_counter() - self.start

        return Timer()


def import_cost(module: str) -> float:
    """Seconds ``import module`` adds beyond ``import torch`` (best of 5 fresh interpreters)."""
    code = ("import time, torch; t = time.perf_counter(); {m}; "
            "print(time.perf_counter() - t)").format(m=module)
    runs = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            return float("nan")
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loader = make_data(args.steps)
    contenders = {"raw": run_raw, "traindeck": run_traindeck, "lightning": run_lightning}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, fn in contenders.items():
        fn(make_data(50))
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            elapsed = fn(loader)
            if elapsed is not None:
                times[name].append(elapsed)
    raw = statistics.median(times["raw"]) / args.steps
    print(f"tiny MLP 32-128-2, batch {BATCH}, {args.steps} steps x {args.rounds} rounds, 1 thread, "
          f"torch {torch.__version__}")
    raw_best = min(times["raw"]) / args.steps
    print(f"{'contender':<12}{'median us/step':>16}{'ratio':>8}{'best us/step':>14}{'ratio':>8}")
    for name, samples in times.items():
        if not samples:
            print(f"{name:<12}  skipped: lightning not installed (pip install lightning)")
            continue
        median = statistics.median(samples) / args.steps
        best = min(samples) / args.steps
        print(f"{name:<12}{median * 1e6:>16.1f}{median / raw:>8.3f}{best * 1e6:>14.1f}{best / raw_best:>8.3f}")
    print()
    engine = import_cost("from engine import Module, Trainer, DataModule")
    print(f"import engine (Module, Trainer) beyond torch: {engine:.3f} s")
    lightning = import_cost("import lightning.pytorch")
    print(f"import lightning.pytorch beyond torch:        {lightning:.3f} s" if lightning == lightning
          else "import lightning: not installed")


if __name__ == "__main__":
    main()
