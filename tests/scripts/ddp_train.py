"""A tiny job for the distributed tests: `python ddp_train.py ROOT NAME [options]`.

Writes `<run dir>/result-rank<N>.pt` (losses per batch, final parameters) from every rank, and
appends each finished batch's global step to `<run dir>/progress-rank<N>.txt` as it goes (so a
test can watch a running job and see where each rank stopped).

Options that make the ranks want different things (tests/test_distributed_stop.py):
`--stop-at S` sets `trainer.should_stop` on rank 1 only, once it reaches step S;
`--rank-local-metric` logs `rank_local` per epoch without sync_dist (improving on rank 0,
flat on rank 1) and stops early on it; `--max-time-rank1 T` gives only rank 1 a max_time.
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
from engine.callbacks import Callback, EarlyStopping, ModelCheckpoint


class Net(Module):
    def __init__(self, fail_at: int = -1, sleep: float = 0.0, rank_local_metric: bool = False) -> None:
        super().__init__()
        self.fail_at, self.sleep, self.rank_local_metric = fail_at, sleep, rank_local_metric
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
        if self.rank_local_metric:  # rank 0 improves every epoch, rank 1 never does
            value = 1.0 / (self.current_epoch + 1) if self.global_rank == 0 else 1.0
            self.log("rank_local", torch.tensor(value), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StopOnRank1(Callback):
    """Sets should_stop on rank 1 only, at the end of the batch that reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step >= self.step:
            trainer.should_stop = True


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
    parser.add_argument("--pg-timeout", type=float, default=1800.0)
    parser.add_argument("--stop-at", type=int, default=-1)
    parser.add_argument("--rank-local-metric", action="store_true")
    parser.add_argument("--max-time-rank1", type=float, default=None)
    parser.add_argument("--no-val", action="store_true")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(args.samples, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    record = Record()
    callbacks = [record, ModelCheckpoint(every_n_train_steps=args.every_n_steps, save_last=True)]
    if args.stop_at >= 0:
        callbacks.append(StopOnRank1(args.stop_at))
    early = EarlyStopping(monitor="rank_local", patience=2) if args.rank_local_metric else None
    callbacks += [early] if early is not None else []
    rank = int(os.environ.get("RANK", 0))
    max_time = args.max_time_rank1 if rank == 1 else None
    trainer = Trainer(devices=args.devices, num_nodes=args.num_nodes, accelerator=args.accelerator, strategy="ddp",
                      max_steps=args.max_steps, max_time=max_time, seed=11, default_root_dir=args.root,
                      name=args.name, enable_progress_bar=False, num_sanity_val_steps=0,
                      accumulate_grad_batches=args.accumulate, process_group_timeout_s=args.pg_timeout,
                      callbacks=callbacks)
    val = None if args.no_val else DataLoader(TensorDataset(x, y), batch_size=16)
    trainer.fit(Net(args.fail_at, args.sleep, args.rank_local_metric),
                DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), val,
                ckpt_path="last" if args.resume else None)
    torch.save({"losses": record.losses, "params": [p.detach() for p in trainer.module.parameters()],
                "world_size": trainer.world_size, "global_step": trainer.global_step,
                "epoch": trainer.current_epoch, "should_stop": trainer.should_stop,
                "early_stopped_epoch": early.stopped_epoch if early is not None else None,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}},
               Path(trainer.run_dir) / f"result-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
