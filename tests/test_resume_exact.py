"""Stop, then resume, must be indistinguishable from never stopping: bitwise, not allclose.

Run A trains uninterrupted; run B saves a checkpoint after training batch k and stops,
then a fresh process-like setup (new module, new Trainer, same seed) resumes from that
file. The per-batch losses after k and the final parameters must be identical.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ddp_jobs import launch
from ddp_jobs import results as ddp_results
from engine import Module, Trainer
from engine._checkpoint_format import read_header
from engine.callbacks import Callback

N_SAMPLES, BATCH = 96, 8  # 12 batches per epoch


class Recipe(Module):
    """Dropout, AdamW with warm-up + cosine, per-step schedule: everything that draws or keeps state."""

    def __init__(self, total_steps: int = 40) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x).float(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x).float(), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=3e-2, weight_decay=0.01)
        total, warm = self.hparams.total_steps, 4

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NoisyIndexDataset(Dataset):
    """Augmentation whose randomness is derived from the index, so workers replay it exactly."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        g = torch.Generator().manual_seed(1_000 + index)
        return x + 0.1 * torch.randn(x.shape, generator=g), y


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N_SAMPLES, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return TensorDataset(x, y)


def loaders(num_workers: int = 0) -> tuple[DataLoader, DataLoader]:
    train = NoisyIndexDataset(dataset()) if num_workers else dataset()
    return (DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=num_workers),
            DataLoader(dataset(), batch_size=32))


class LossRecorder(Callback):
    """Every training batch's loss, keyed by how many batches the run had done."""

    def __init__(self) -> None:
        self.losses: dict[int, torch.Tensor] = {}
        self.validated_after: list[int] = []

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses[trainer.loop.total_batches] = outputs.detach().clone()

    def on_validation_end(self, trainer: Trainer, module: Module) -> None:
        if not trainer.sanity_checking:
            self.validated_after.append(trainer.loop.total_batches)


class StopAfter(Callback):
    """Saves a checkpoint after ``batches`` training batches, then stops the run."""

    def __init__(self, batches: int, path: Path, at_epoch_end: bool = False) -> None:
        self.batches, self.path, self.at_epoch_end = batches, path, at_epoch_end

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.at_epoch_end and trainer.loop.total_batches == self.batches:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Trainer, module: Module) -> None:
        if self.at_epoch_end and trainer.loop.total_batches == self.batches:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def run(tmp_path: Path, name: str, *, max_steps: int, callbacks: tuple[Callback, ...] | list[Callback] = (), ckpt: Path | None = None,
        num_workers: int = 0, **settings: Any) -> tuple[Recipe, LossRecorder]:
    torch.manual_seed(0)
    module = Recipe(total_steps=max_steps)
    recorder = LossRecorder()
    trainer = Trainer(max_steps=max_steps, seed=123, accelerator="cpu", default_root_dir=tmp_path, name=name,
                      enable_progress_bar=False, enable_checkpointing=False, loggers=False,
                      num_sanity_val_steps=1, callbacks=[recorder, *callbacks], **settings)
    train, val = loaders(num_workers)
    trainer.fit(module, train, val, ckpt_path=ckpt)
    return module, recorder


def assert_resume_is_exact(tmp_path: Path, stop_after: int, max_steps: int, at_epoch_end: bool = False,
                           num_workers: int = 0, **settings: Any) -> None:
    full, full_losses = run(tmp_path, "a", max_steps=max_steps, num_workers=num_workers, **settings)
    ckpt = tmp_path / "stop.ckpt"
    run(tmp_path, "b", max_steps=max_steps, callbacks=[StopAfter(stop_after, ckpt, at_epoch_end)],
        num_workers=num_workers, **settings)
    resumed, resumed_losses = run(tmp_path, "b", max_steps=max_steps, ckpt=ckpt, num_workers=num_workers,
                                  **settings)
    expected = {k: v for k, v in full_losses.losses.items() if k > stop_after}
    assert sorted(resumed_losses.losses) == sorted(expected)
    for k, loss in expected.items():
        assert torch.equal(resumed_losses.losses[k], loss), f"loss after batch {k} differs"
    assert resumed_losses.validated_after == [k for k in full_losses.validated_after if k > stop_after]
    for (name, p_full), p_resumed in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p_full, p_resumed), f"parameter {name} differs"


def test_resume_mid_epoch_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=17, max_steps=30)


def test_resume_at_an_epoch_boundary_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=12, max_steps=30, at_epoch_end=True)


def test_resume_inside_an_accumulation_window_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=13, max_steps=10, accumulate_grad_batches=3)


def test_resume_of_the_full_recipe_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=20, max_steps=12, accumulate_grad_batches=3,
                           gradient_clip_val=0.5, val_check_interval=0.25)


def test_resume_with_two_dataloader_workers_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=17, max_steps=26, num_workers=2)


def test_resume_with_bf16_mixed_precision_on_cpu_is_bitwise_identical(tmp_path: Path) -> None:
    assert_resume_is_exact(tmp_path, stop_after=17, max_steps=30, precision="bf16-mixed")


def test_resumed_epoch_reports_the_full_epoch_mean(tmp_path: Path) -> None:
    class EpochMeans(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_epoch_end(self, trainer: Trainer, module: Module) -> None:
            self.values.append(float(trainer.callback_metrics["train/loss_epoch"]))

    full_means = EpochMeans()
    run(tmp_path, "a", max_steps=24, callbacks=[full_means])
    ckpt = tmp_path / "stop.ckpt"
    run(tmp_path, "b", max_steps=24, callbacks=[StopAfter(17, ckpt)])
    resumed_means = EpochMeans()
    run(tmp_path, "b", max_steps=24, ckpt=ckpt, callbacks=[resumed_means])
    assert resumed_means.values == full_means.values[1:]


def test_resumed_epoch_skips_consumed_batches_without_loading_them(tmp_path: Path) -> None:
    class CountingDataset(TensorDataset):
        loaded: list[int] = []

        def __getitem__(self, index: int) -> Any:
            CountingDataset.loaded.append(index)
            return super().__getitem__(index)

    base = dataset()
    ckpt = tmp_path / "stop.ckpt"
    torch.manual_seed(0)
    first = Trainer(max_steps=30, seed=1, accelerator="cpu", default_root_dir=tmp_path, name="c",
                    enable_progress_bar=False, enable_checkpointing=False, loggers=False,
                    callbacks=[StopAfter(5, ckpt)])
    first.fit(Recipe(), DataLoader(CountingDataset(*base.tensors), batch_size=BATCH, shuffle=True))
    CountingDataset.loaded = []
    second = Trainer(max_steps=7, seed=1, accelerator="cpu", default_root_dir=tmp_path, name="c",
                     enable_progress_bar=False, enable_checkpointing=False, loggers=False)
    second.fit(Recipe(), DataLoader(CountingDataset(*base.tensors), batch_size=BATCH, shuffle=True),
               ckpt_path=ckpt)
    assert len(CountingDataset.loaded) == 2 * BATCH


def test_resume_with_two_ranks_on_gloo_is_bitwise_identical(tmp_path: Path) -> None:
    """Two DDP ranks (real processes, gloo): run A uninterrupted; in run B rank 1 crashes at step 7,
    after the step-6 checkpoint (mid-epoch: 4 batches per rank and epoch), and B is resumed."""
    every = ("--devices", "2", "--every-n-steps", "3")
    full = launch(tmp_path / "a", "run", *every)
    crashed = launch(tmp_path / "b", "run", *every, "--fail-at", "7")
    resumed = None
    try:
        assert full.wait() == 0, full.output[-4000:]
        assert crashed.wait() != 0, crashed.output[-4000:]
        last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
        summary = read_header(last)["summary"]
        assert (summary["step"], summary["batches_done"]) == (6, 2)
        resumed = launch(tmp_path / "b", "run", *every, "--resume", log=tmp_path / "b-resumed.log")
        assert resumed.wait() == 0, resumed.output[-4000:]
    finally:
        for job in (full, crashed, resumed):
            if job is not None:
                job.stop()
    for rank, (a, b) in enumerate(zip(ddp_results(tmp_path / "a" / "run"), ddp_results(tmp_path / "b" / "run"))):
        expected = {k: v for k, v in a["losses"].items() if k > 6}
        assert sorted(b["losses"]) == sorted(expected), f"rank {rank}"
        for k, loss in expected.items():
            assert torch.equal(b["losses"][k], loss), f"rank {rank}: loss after batch {k} differs"
        for i, (p_full, p_resumed) in enumerate(zip(a["params"], b["params"], strict=True)):
            assert torch.equal(p_full, p_resumed), f"rank {rank}: parameter {i} differs"
