"""Seeding and determinism switches, applied once at start and stated in words."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "enable_determinism"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_determinism() -> None:
    """Make torch pick deterministic kernels (errors on ops that have none)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
