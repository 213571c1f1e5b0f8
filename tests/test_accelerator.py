"""Moving batches to the training device (it runs on every batch)."""

from __future__ import annotations

from collections import namedtuple

import torch

from engine._accelerator import move_to_device

Pair = namedtuple("Pair", "x y")


def test_a_cpu_batch_on_cpu_keeps_its_tensors_and_container_types():
    x, y, z = torch.ones(2), torch.zeros(2), torch.arange(3)
    batch = [x, (y, "label"), {"z": z}, Pair(x, 7)]
    moved = move_to_device(batch, torch.device("cpu"))
    assert type(moved) is list and type(moved[1]) is tuple and type(moved[3]) is Pair
    assert moved[0] is x and moved[1][0] is y and moved[2]["z"] is z and moved[3].x is x
    assert moved[1][1] == "label" and moved[3].y == 7


def test_tensors_on_another_device_are_moved_and_other_values_kept():
    meta = torch.device("meta")
    batch = ([torch.ones(2), 3.5], {"y": torch.zeros(1)}, Pair(torch.ones(1), "id"))
    moved = move_to_device(batch, meta)
    assert type(moved) is tuple and type(moved[0]) is list and type(moved[2]) is Pair
    assert moved[0][0].device == meta and moved[1]["y"].device == meta and moved[2].x.device == meta
    assert moved[0][1] == 3.5 and moved[2].y == "id"


def test_a_single_tensor_is_moved_only_when_elsewhere():
    x = torch.ones(2)
    assert move_to_device(x, torch.device("cpu")) is x
    assert move_to_device(x, torch.device("meta")).device == torch.device("meta")
