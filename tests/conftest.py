"""Shared tiny models, data and helpers for the engine specification tests.

Everything here is small enough that a fit takes milliseconds on a CPU: a linear
classifier on a seeded synthetic TensorDataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engine import Module, Trainer
from engine.callbacks import Callback

N_FEATURES = 4
N_CLASSES = 3


def make_dataset(n: int = 32, seed: int = 0) -> TensorDataset:
    """A seeded, learnable classification problem: the label is the argmax of a fixed projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, N_CLASSES, generator=g)
    return TensorDataset(x, (x @ w).argmax(dim=1))


def make_loader(n: int = 32, batch_size: int = 8, seed: int = 0, shuffle: bool = False) -> DataLoader:
    """``n`` samples in batches of ``batch_size`` (the last one smaller when it does not divide)."""
    return DataLoader(make_dataset(n, seed), batch_size=batch_size, shuffle=shuffle)


class TinyClassifier(Module):
    """A linear classifier logging ``train_loss`` per step and ``val_loss``/``test_loss`` per epoch."""

    def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.loss(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Counter(Callback):
    """Counts train batches, optimizer steps, validation runs and sanity-check batches."""

    def __init__(self) -> None:
        self.train_batches = 0
        self.optimizer_steps = 0
        self.val_runs = 0
        self.val_batches = 0
        self.sanity_batches = 0
        self.epochs_started: list[int] = []

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self.epochs_started.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_batches += 1

    def on_before_zero_grad(self, trainer: Any, module: Any, optimizer: Any) -> None:
        self.optimizer_steps += 1

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.val_batches += 1

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        self.val_runs += 1


class SanityCounter(TinyClassifier):
    """Counts validation_step calls made during the sanity check."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sanity_steps = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking:
            self.sanity_steps += 1
        super().validation_step(batch, batch_idx)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., Trainer]:
    """A Trainer writing under ``tmp_path/run``; quiet and file-free unless a test opts in.

    Defaults: CPU (the same numbers on every machine), no progress bar, no loggers, no
    checkpointing. Pass ``logger=True`` or ``enable_checkpointing=True`` to get the
    engine's default loggers / ModelCheckpoint.
    """

    def factory(**kwargs: Any) -> Trainer:
        kwargs.setdefault("accelerator", "cpu")
        kwargs.setdefault("default_root_dir", tmp_path)
        kwargs.setdefault("name", "run")
        kwargs.setdefault("enable_progress_bar", False)
        kwargs.setdefault("enable_checkpointing", False)
        kwargs.setdefault("logger", False)
        return Trainer(**kwargs)

    return factory


@pytest.fixture
def traindeck_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog that also sees the "traindeck" logger, which may not propagate to the root."""
    logger = logging.getLogger("traindeck")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="traindeck")
    yield caplog
    logger.removeHandler(caplog.handler)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def metric_steps(records: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
    """(step, value) of every record holding ``name``, in file order."""
    return [(r["step"], float(r["metrics"][name])) for r in records if name in r["metrics"]]


def params_of(module: torch.nn.Module) -> list[torch.Tensor]:
    """Detached copies of the module's parameters."""
    return [p.detach().clone() for p in module.parameters()]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private socket directory (short path: unix sockets allow ~108 bytes) and a short linger."""
    sockets = tempfile.mkdtemp(prefix="td-")
    monkeypatch.setenv("TRAINDECK_SOCKET_DIR", sockets)
    monkeypatch.setenv("TRAINDECK_LINGER_S", "0.3")
    monkeypatch.chdir(tmp_path)
    yield dict(os.environ)
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty runs/ directory."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def supervisor_pid() -> Iterator[int]:
    """A live process whose command line names engine.supervisor, as a real supervisor's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "engine.supervisor"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while cmdline.exists() and not cmdline.read_bytes():
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()
