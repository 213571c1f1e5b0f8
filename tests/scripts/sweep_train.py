"""A tiny regression trained in sweep tests: `traindeck sweep sweep_train.py --param lr=log:...`.

Its parameters come from engine.trial_params: lr, hidden, opt, offset (added to val/loss, to
make a trial bad on purpose), fail (raise in the first step). val/loss is logged every epoch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import DataModule, Module, Trainer, trial_params

DEFAULTS = {"lr": 0.05, "hidden": 8, "opt": "sgd", "offset": 0.0, "fail": False}


class Regression(Module):
    def __init__(self, params: dict, sleep: float) -> None:
        super().__init__()
        self.params, self.sleep = params, sleep
        self.net = nn.Sequential(nn.Linear(2, int(params["hidden"])), nn.Tanh(), nn.Linear(int(params["hidden"]), 1))

    def training_step(self, batch, batch_idx):
        if self.params["fail"]:
            raise RuntimeError("this trial fails on purpose")
        if self.sleep:
            time.sleep(self.sleep)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y) + float(self.params["offset"]))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam if self.params["opt"] == "adam" else torch.optim.SGD
        return optimizer(self.parameters(), lr=self.params["lr"])


class RegressionData(DataModule):
    """256 seeded points of a linear target; 192 to train on, 64 to validate."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 2, generator=generator)
        self.y = self.x[:, :1] * 2.0 - self.x[:, 1:] * 0.5

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:192], self.y[:192]), batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[192:], self.y[192:]), batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=args.epochs, enable_progress_bar=False, enable_checkpointing=False,
                      log_every_n_steps=4)
    trainer.fit(Regression(trial_params(DEFAULTS), args.sleep), datamodule=RegressionData())


if __name__ == "__main__":
    main()
