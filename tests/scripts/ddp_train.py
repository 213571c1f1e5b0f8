"""A tiny job for the distributed tests: `python ddp_train.py ROOT NAME [options]`.

Writes `<run dir>/result-rank<N>.pt` (losses per batch, final parameters) from every rank, and
appends each finished batch's global step to `<run dir>/progress-rank<N>.txt` as it goes (so a
test can watch a running job and see where each rank stopped).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Module, Trainer
from engine.callbacks import Callback, ModelCheckpoint


class Net(Module):
    def __init__(self, fail_at: int = -1, sleep: float = 0.0) -> None:
        super().__init__()
        self.fail_at, self.sleep = fail_at, sleep
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        if self.sleep:
            time.sleep(self.sleep)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        if self.global_rank == 1 and self.global_step == self.fail_at and restart == 0:
            raise RuntimeError(f"rank 1 fails on purpose at step {self.global_step}")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, sync_dist=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(Callback):
    def __init__(self) -> None:
        self.losses: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.loop.total_batches] = outputs.detach().clone()
        with open(Path(trainer.run_dir) / f"progress-rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("name")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--every-n-steps", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    record = Record()
    trainer = Trainer(devices=args.devices, num_nodes=args.num_nodes, accelerator=args.accelerator, strategy="ddp",
                      max_steps=args.max_steps, seed=11, default_root_dir=args.root, name=args.name,
                      enable_progress_bar=False, num_sanity_val_steps=0, accumulate_grad_batches=args.accumulate,
                      callbacks=[record, ModelCheckpoint(every_n_train_steps=args.every_n_steps, save_last=True)])
    trainer.fit(Net(args.fail_at, args.sleep), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
                DataLoader(TensorDataset(x, y), batch_size=16), ckpt_path="last" if args.resume else None)
    torch.save({"losses": record.losses, "params": [p.detach() for p in trainer.module.parameters()],
                "world_size": trainer.world_size, "global_step": trainer.global_step,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}},
               Path(trainer.run_dir) / f"result-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
