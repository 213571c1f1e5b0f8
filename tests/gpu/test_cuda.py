"""The CUDA paths: run on a machine with NVIDIA GPUs (`pytest -m gpu tests/gpu`); skipped elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Module, Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


class Net(Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
        self.dtypes: list[torch.dtype] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.dtypes.append(logits.dtype)
        loss = nn.functional.cross_entropy(logits.float(), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, shuffle=True)


def fit(tmp_path: Path, **settings) -> tuple[Net, Trainer]:
    module = Net()
    trainer = Trainer(max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False, **settings)
    trainer.fit(module, loader())
    return module, trainer


def test_auto_accelerator_picks_cuda_and_moves_the_model(tmp_path: Path) -> None:
    module, trainer = fit(tmp_path)
    assert trainer.device.type == "cuda"
    assert next(module.parameters()).is_cuda


def test_16_mixed_runs_float16_forward_with_a_grad_scaler(tmp_path: Path) -> None:
    module, trainer = fit(tmp_path, precision="16-mixed")
    assert torch.float16 in module.dtypes
    assert trainer._precision.scaler is not None and trainer._precision.scaler.get_scale() > 0
    assert next(module.parameters()).dtype == torch.float32


def test_bf16_mixed_runs_bfloat16_forward(tmp_path: Path) -> None:
    module, _ = fit(tmp_path, precision="bf16-mixed")
    assert torch.bfloat16 in module.dtypes


def test_metrics_from_the_gpu_come_back_exact_in_one_transfer_per_device() -> None:
    from engine._metrics import materialise

    values = [torch.tensor(0.1, device="cuda"), 0.5, torch.tensor([2**40 + 1], device="cuda"),
              torch.tensor(0.1, dtype=torch.bfloat16, device="cuda"), torch.tensor(0.3)]
    assert materialise(values) == [float(torch.tensor(0.1).double()), 0.5, float(2**40 + 1),
                                   float(torch.tensor(0.1, dtype=torch.bfloat16).double()),
                                   float(torch.tensor(0.3).double())]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for NCCL")
def test_two_gpus_train_with_ddp_over_nccl(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / "ddp_train.py"), str(tmp_path), "nccl",
                             "--devices", "2", "--accelerator", "cuda"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP over NCCL" in result.stderr
    ranks = [torch.load(tmp_path / "nccl" / f"result-rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
