"""A small job for the supervisor tests: `traindeck run [--devices N] controlled_train.py [options]`.

Every rank appends one JSON line per finished batch to `<run dir>/steps-rank<N>.jsonl`
(global step, learning rate, the module's `temperature` tunable, the loss), so a test can
see at which step each rank's values changed, and whether the losses match another run.
With `--val-batches N`, fit validates over N batches per rank every `--val-every` steps, each
taking `--val-sleep` s, and every rank appends one line per validation batch to
`<run dir>/val-rank<N>.jsonl` (global step, batch, the temperature it was run with).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Module, Trainer
from engine.callbacks import Callback, ModelCheckpoint


class Net(Module):
    def __init__(self, sleep: float, fail_at: int, val_sleep: float = 0.0) -> None:
        super().__init__()
        self.sleep, self.fail_at, self.val_sleep = sleep, fail_at, val_sleep
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.register_tunable("temperature", 1.0)

    def training_step(self, batch, batch_idx):
        if self.sleep:
            time.sleep(self.sleep)
        if self.global_step == self.fail_at and self.global_rank == self.trainer.world_size - 1:
            raise RuntimeError(f"failing on purpose at step {self.global_step}")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x) / self.tunables["temperature"], y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        time.sleep(self.val_sleep)
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)
        record = {"step": self.global_step, "batch": batch_idx, "temperature": self.tunables["temperature"]}
        with open(Path(self.trainer.run_dir) / f"val-rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Steps(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        record = {"step": trainer.global_step, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                  "temperature": module.tunables["temperature"], "loss": float(outputs.detach())}
        with open(Path(trainer.run_dir) / f"steps-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--pg-timeout", type=float, default=1800.0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--val-batches", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--val-sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    trainer = Trainer(max_steps=args.max_steps, seed=11, enable_progress_bar=False, num_sanity_val_steps=0,
                      accelerator="cpu", process_group_timeout_s=args.pg_timeout, log_every_n_steps=args.log_every,
                      val_check_interval=args.val_every, callbacks=[Steps(), ModelCheckpoint(every_n_train_steps=10)])
    world = trainer.world_size
    val = DataLoader(TensorDataset(x[:1].repeat(8 * args.val_batches * world, 1),
                                   y[:1].repeat(8 * args.val_batches * world)), batch_size=8)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    trainer.fit(Net(args.sleep, args.fail_at, args.val_sleep), train, val if args.val_batches else None)


if __name__ == "__main__":
    main()
