"""traindeck demo: a small transformer learns to sort digits.

Each example is a row of 16 random digits; the target is the same digits in
ascending order:

    input   7 3 9 0 3 1 8 8 2 5 0 6 4 9 3 1
    target  0 0 1 1 2 3 3 3 4 5 6 7 8 8 9 9

A 2-layer transformer encoder (about 100k parameters) reads the whole row and
predicts every output digit at once. Guessing scores 10% per digit; within about
a minute on two CPU cores the model gets over 99% of the digits right, and most
whole rows exactly right. Nothing is downloaded: the data is generated from
``--seed``, so two runs with the same seed train on the same rows.

Run it:

    python examples/demo.py                  # about a minute on 2 CPU cores
    traindeck demo                           # the same run, in the terminal cockpit
    python examples/demo.py --max-steps 20   # a few seconds: a smoke test
    traindeck sweep --trials 8 --parallel 2 --param lr=log:3e-4:3e-2 --param batch_size=cat:32,64,128 \
        --metric val/acc --direction maximize examples/demo.py --max-steps 300   # a sweep: any option by its name

Logged metrics: ``train/loss``, ``val/loss``, ``val/acc`` (per-digit accuracy) and
``val/seq_acc`` (whole row exactly right), plus the learning rate. The run
directory (metrics, TensorBoard events, checkpoints) is ``<root-dir>/<name>``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import DataModule, Module, Trainer, trial_params
from engine.callbacks import LearningRateMonitor, ModelCheckpoint

NUM_DIGITS = 10  # the vocabulary: digits 0-9, so chance accuracy is 1/10


# -- the data -------------------------------------------------------------------------


def make_sort_examples(n: int, seq_len: int, generator: torch.Generator) -> TensorDataset:
    """``n`` rows of random digits (inputs) and the same rows sorted (targets)."""
    inputs = torch.randint(0, NUM_DIGITS, (n, seq_len), generator=generator)
    targets = inputs.sort(dim=1).values
    return TensorDataset(inputs, targets)


class SortDataModule(DataModule):
    """Train and validation sets generated from ``seed``; no files, no download."""

    def __init__(self, seq_len: int = 16, n_train: int = 4096, n_val: int = 1024,
                 batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        generator = torch.Generator().manual_seed(h.seed)
        # Drawn from one stream, so train and validation rows differ (16 digits give
        # 10^16 possible rows; a repeat between the two sets is vanishingly unlikely).
        self.train_set = make_sort_examples(h.n_train, h.seq_len, generator)
        self.val_set = make_sort_examples(h.n_val, h.seq_len, generator)

    def train_dataloader(self) -> DataLoader:
        shuffle_generator = torch.Generator().manual_seed(self.hparams.seed + 1)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          generator=shuffle_generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


# -- the model ------------------------------------------------------------------------


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of output digits predicted correctly."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def sequence_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows with every digit correct."""
    return (logits.argmax(dim=-1) == targets).all(dim=-1).float().mean()


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1, then a cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class SortDigits(Module):
    """Token + position embeddings, a pre-norm transformer encoder, one digit out per position."""

    def __init__(self, seq_len: int = 16, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                 dropout: float = 0.05, lr: float = 3e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 40, total_steps: int = 640) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.token_embedding = nn.Embedding(NUM_DIGITS, d_model)
        self.position_embedding = nn.Parameter(torch.randn(1, seq_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, NUM_DIGITS)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len) digits -> (batch, seq_len, 10) logits for the sorted row."""
        hidden = self.token_embedding(digits) + self.position_embedding
        return self.head(self.norm(self.encoder(hidden)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, NUM_DIGITS), targets.reshape(-1))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = self.loss(self(inputs), targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        logits = self(inputs)
        self.log("val/loss", self.loss(logits, targets))
        self.log("val/acc", token_accuracy(logits, targets), prog_bar=True)
        self.log("val/seq_acc", sequence_accuracy(logits, targets))

    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(h.warmup_steps, h.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# -- putting it together --------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A small transformer learns to sort digits.")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=4096, help="training rows (one epoch)")
    parser.add_argument("--root-dir", default="runs", help="where run directories go")
    parser.add_argument("--name", default=None, help="run directory name (default: demo-<date>-<time>)")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch CPU threads; 1 suits this small model and leaves a core for the "
                             "cockpit (0: torch's default)")
    # In a sweep trial (`traindeck sweep`), the sampled values replace the options of the same name.
    return argparse.Namespace(**trial_params(vars(parser.parse_args(argv))))


def build(args: argparse.Namespace) -> tuple[SortDigits, SortDataModule]:
    """The module and data module for ``args``; the LR schedule is sized to the run's length."""
    datamodule = SortDataModule(seq_len=args.seq_len, n_train=args.n_train, batch_size=args.batch_size,
                                seed=args.seed)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    total_steps = steps_per_epoch * args.max_epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    module = SortDigits(seq_len=args.seq_len, lr=args.lr, total_steps=total_steps,
                        warmup_steps=max(1, total_steps // 16))
    return module, datamodule


def main(argv: list[str] | None = None) -> Trainer:
    args = parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    module, datamodule = build(args)
    trainer = Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        seed=args.seed,
        default_root_dir=args.root_dir,
        name=args.name,
        gradient_clip_val=1.0,
        val_check_interval=0.25,  # validate 4 times per epoch: ~40 points on the charts
        log_every_n_steps=10,
        callbacks=[
            LearningRateMonitor(logging_interval="step"),
            ModelCheckpoint(monitor="val/acc", mode="max", save_last=True),
        ],
    )
    start = time.monotonic()
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    summary = ", ".join(f"{key} {float(metrics[key]):.4f}"
                        for key in ("val/acc", "val/seq_acc", "val/loss") if key in metrics)
    print(f"done in {time.monotonic() - start:.1f}s: {summary or 'no validation metrics'} "
          f"(chance: val/acc 0.10)")
    return trainer


if __name__ == "__main__":
    main()
