"""A small, seeded training job for the preemption tests (tests/test_checkpoint_safety.py).

    python preemptible_train.py LOSS_FILE ROOT NAME [--resume] [--params PATH] [--hold-at STEP]

A two-layer MLP with dropout and Adam trains on shuffled synthetic data for a few epochs.
Each optimizer step appends ``<global_step> <loss as float.hex()>`` to LOSS_FILE (flushed
at once, so a parent process can watch the progress). ``--resume`` continues with
``fit(ckpt_path="last")``. ``--params`` saves the final state_dict with torch.save.
``--hold-at STEP`` waits (up to 30 s) after STEP until a preemption signal has arrived,
so that the step a signal lands on does not depend on the test machine's speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine import Module, Trainer  # noqa: E402
from engine.callbacks import Callback  # noqa: E402

SEED = 1234
SAMPLES, BATCH, EPOCHS = 64, 4, 3  # 16 steps per epoch, 48 in all


class DropoutMLP(Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


class LossWriter(Callback):
    def __init__(self, path: Path, hold_at: int | None) -> None:
        self.file = open(path, "a", buffering=1)
        self.hold_at = hold_at

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.file.write(f"{trainer.global_step} {float(outputs.detach()).hex()}\n")
        self.file.flush()
        if trainer.global_step == self.hold_at:
            deadline = time.monotonic() + 30
            while trainer._preemption.received is None and time.monotonic() < deadline:
                time.sleep(0.005)


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, :3] * 2 + 0.5 * torch.randn(n, 3, generator=g)).argmax(dim=1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("loss_file", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("name")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--params", type=Path)
    parser.add_argument("--hold-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)

    trainer = Trainer(
        max_epochs=EPOCHS, seed=SEED, accelerator="cpu", default_root_dir=args.root, name=args.name,
        logger=False, enable_progress_bar=False, num_sanity_val_steps=1,
        callbacks=[LossWriter(args.loss_file, args.hold_at)],
    )
    module = DropoutMLP()
    train = DataLoader(data(SAMPLES, 0), batch_size=BATCH, shuffle=True)
    val = DataLoader(data(16, 1), batch_size=8)
    trainer.fit(module, train, val, ckpt_path="last" if args.resume else None)
    if args.params is not None:
        torch.save(module.state_dict(), args.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
