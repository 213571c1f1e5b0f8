"""The metrics path inside a rank: ``self.log`` → device-side buffers → plain floats.

``log`` only detaches and appends (no device sync, no allocation beyond a list slot).
Values become Python floats in ``flush`` (called on a time interval and at epoch ends)
and in ``end_epoch``; both do one stacked transfer per device instead of one per value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from engine._errors import MetricError

__all__ = ["MetricCollector", "StepRecord"]

_REDUCTIONS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_FX_NAMES = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}
_FOLD_AT = 1024

StepRecord = tuple[int, dict[str, float]]


def _reduction_name(reduce_fx: str | Callable[..., Any]) -> str:
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCTIONS:
        return _REDUCTIONS[reduce_fx.lower()]
    if reduce_fx in _FX_NAMES:
        return _FX_NAMES[reduce_fx]  # type: ignore[index]
    raise MetricError(f"reduce_fx={reduce_fx!r} is not supported; use 'mean', 'sum', 'max' or 'min'")


def _as_scalar(name: str, value: Any) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MetricError(
                f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; "
                "log a scalar (e.g. value.mean()) or log each element under its own name"
            )
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise MetricError(f"self.log({name!r}, ...) got {type(value).__name__}; log a number or a scalar tensor")
    return float(value)


def materialise(values: Iterable[torch.Tensor | float]) -> list[float]:
    """Floats for ``values`` with one transfer per accelerator device (the only place metrics sync).

    A CPU tensor is read directly (no sync to wait for); accelerator tensors are stacked per
    (device, dtype), converted once and copied over in one transfer per device.
    """
    values = list(values)
    out: list[float | None] = [None] * len(values)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, v in enumerate(values):
        if not isinstance(v, torch.Tensor):
            out[i] = float(v)
        elif v.is_cpu:
            x = v.tolist()
            while isinstance(x, list):  # a one-element tensor of shape (1,), (1, 1), ...
                x = x[0]
            out[i] = float(x)
        else:
            groups.setdefault((v.device, v.dtype), []).append(i)
    by_device: dict[torch.device, list[tuple[list[int], torch.Tensor]]] = {}
    for (device, _), idx in groups.items():
        scalars = [values[i].reshape(()) for i in idx]  # type: ignore[union-attr]
        by_device.setdefault(device, []).append((idx, torch.stack(scalars).to(torch.float64)))
    for parts in by_device.values():
        floats = torch.cat([stacked for _, stacked in parts]).tolist()
        for i, f in zip((i for idx, _ in parts for i in idx), floats):
            out[i] = f
    return out  # type: ignore[return-value]


@dataclass
class _Spec:
    reduce: str
    reduce_arg: Any
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    sync_dist: bool


@dataclass
class _EpochBuffer:
    """Values of one metric in the current epoch, folded on device when the list grows."""

    reduce: str
    to_logger: bool
    plain_name: str | None = None
    sync: bool = False
    values: list[torch.Tensor | float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    folded: torch.Tensor | None = None
    folded_weight: float = 0.0

    def add(self, value: torch.Tensor | float, weight: float) -> None:
        self.values.append(value)
        self.weights.append(weight)
        if len(self.values) >= _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        parts = [v if isinstance(v, torch.Tensor) else torch.tensor(v) for v in self.values]
        device = next((p.device for p in parts if p.device.type != "cpu"), torch.device("cpu"))
        stacked = torch.stack([p.to(device, torch.float64).reshape(()) for p in parts])
        if self.reduce == "mean":
            w = torch.tensor(self.weights, dtype=torch.float64, device=device)
            part = (stacked * w).sum()
            self.folded_weight += float(sum(self.weights))
        elif self.reduce == "sum":
            part = stacked.sum()
        elif self.reduce == "max":
            part = stacked.max()
        else:
            part = stacked.min()
        if self.folded is not None:
            part = torch.stack([self.folded.to(part.device), part])
            part = {"mean": part.sum, "sum": part.sum, "max": part.max, "min": part.min}[self.reduce]()
        self.folded = part
        self.values.clear()
        self.weights.clear()

    def partial(self) -> torch.Tensor | None:
        """The reduction so far (a weighted sum for "mean"), for checkpoints."""
        if self.values:
            self._fold()
        return self.folded

    def result(self) -> torch.Tensor | None:
        if self.values:
            self._fold()
        if self.folded is None:
            return None
        if self.reduce == "mean":
            return self.folded / max(self.folded_weight, 1e-300)
        return self.folded


class MetricCollector:
    """Collects what a Module logs; the Trainer reads floats out at its own pace."""

    def __init__(self, log_every_n_steps: int) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.stage = "train"
        self.step = 0
        self.enabled = True
        self.dataloader_suffix = ""
        self._batch: Any = None
        self._batch_size: int | None = None
        self._specs: dict[tuple[str, str], _Spec] = {}
        self._latest: dict[str, torch.Tensor | float] = {}
        self._pending: list[tuple[int, str, torch.Tensor | float]] = []
        self._epoch: dict[str, dict[str, _EpochBuffer]] = {}
        self._epoch_values: dict[str, float] = {}

    # -- called by the Trainer -----------------------------------------------------------

    def set_stage(self, stage: str) -> None:
        """"train", "validate", "test" or "predict": decides on_step/on_epoch defaults."""
        self.stage = stage

    def set_batch(self, batch: Any) -> None:
        """Remember the batch so a weighted mean can infer its size only if needed."""
        self._batch = batch
        self._batch_size = None

    def begin_epoch(self, stage: str) -> None:
        self._epoch[stage] = {}

    def end_epoch(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """Reduce ``stage``'s on_epoch values to floats (one sync): (all, those for loggers)."""
        buffers = self._epoch.pop(stage, {})
        _sync_across_ranks([b for b in buffers.values() if b.sync])
        results = {name: buf.result() for name, buf in buffers.items()}
        results = {name: r for name, r in results.items() if r is not None}
        out = dict(zip(results.keys(), materialise(results.values())))
        self._epoch_values.update(out)
        for key, value in out.items():
            plain = buffers[key].plain_name
            if plain is not None:
                self._latest.pop(plain, None)
                self._epoch_values[plain] = value
        return out, {name: v for name, v in out.items() if buffers[name].to_logger}

    @property
    def pending_values(self) -> int:
        """Step values logged since the last flush."""
        return len(self._pending)

    def flush(self) -> list[StepRecord]:
        """Materialise the step values waiting for the loggers, grouped by step."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        floats = materialise(v for _, _, v in pending)
        records: dict[int, dict[str, float]] = {}
        for (step, key, _), f in zip(pending, floats):
            records.setdefault(step, {})[key] = f
        return sorted(records.items())

    def latest(self, keys: Iterable[str] | None = None) -> dict[str, float]:
        """The newest step values (all, or ``keys``) as floats, plus finished epoch values."""
        if keys is None:
            out = dict(self._epoch_values)
            wanted = self._latest
        else:
            keys = list(keys)
            out = {k: self._epoch_values[k] for k in keys if k in self._epoch_values}
            wanted = {k: self._latest[k] for k in keys if k in self._latest}
        out.update(zip(wanted.keys(), materialise(wanted.values())))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's partial reductions, so a mid-epoch resume reports the full epoch."""
        buffers = {k: b for k, b in self._epoch.get("train", {}).items() if b.partial() is not None}
        values = materialise(b.folded for b in buffers.values())  # type: ignore[misc]
        return {"train_epoch": {key: [b.reduce, b.to_logger, b.plain_name, v, b.folded_weight]
                                for (key, b), v in zip(buffers.items(), values)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = self._epoch.setdefault("train", {})
        for key, (reduce, to_logger, plain, value, weight) in state.get("train_epoch", {}).items():
            buf = buffers[key] = _EpochBuffer(reduce, to_logger, plain)
            buf.folded = torch.tensor(value, dtype=torch.float64)
            buf.folded_weight = weight

    def progress_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for (_, name), spec in self._specs.items():
            if spec.prog_bar:
                if spec.on_step and spec.on_epoch:
                    keys.update(dict.fromkeys([f"{name}_step", f"{name}_epoch"]))
                else:
                    keys[name] = None
        return list(keys)

    # -- called from Module.log ----------------------------------------------------------

    def log(
        self,
        name: str,
        value: Any,
        *,
        on_step: bool | None,
        on_epoch: bool | None,
        prog_bar: bool,
        logger: bool,
        reduce_fx: str | Callable[..., Any],
        sync_dist: bool,
        batch_size: int | None,
    ) -> None:
        if not self.enabled:
            return
        spec = self._specs.get((self.stage, name))
        if spec is None:
            in_train = self.stage == "train"
            spec = _Spec(
                reduce=_reduction_name(reduce_fx),
                reduce_arg=reduce_fx,
                on_step=in_train if on_step is None else on_step,
                on_epoch=(not in_train) if on_epoch is None else on_epoch,
                prog_bar=prog_bar,
                logger=logger,
                sync_dist=sync_dist,
            )
            self._specs[(self.stage, name)] = spec
        elif reduce_fx is not spec.reduce_arg and _reduction_name(reduce_fx) != spec.reduce:
            reduce = _reduction_name(reduce_fx)
            raise MetricError(
                f"metric {name!r} was logged with reduce_fx={spec.reduce!r} and now with {reduce!r}; "
                "one name must keep one reduction — log the other one under a different name"
            )
        scalar = _as_scalar(name, value)
        both = spec.on_step and spec.on_epoch
        suffix = self.dataloader_suffix
        if spec.on_step:
            key = (f"{name}_step" if both else name) + suffix
            self._latest[key] = scalar
            if both:
                self._latest[name + suffix] = scalar
            if spec.logger and (self.stage != "train" or self.step % self.log_every_n_steps == 0):
                self._pending.append((self.step, key, scalar))
        if spec.on_epoch:
            key = (f"{name}_epoch" if both else name) + suffix
            buffers = self._epoch.setdefault(self.stage, {})
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = _EpochBuffer(spec.reduce, spec.logger, name + suffix if both else None,
                                                  spec.sync_dist)
            weight = 1.0
            if spec.reduce == "mean":
                weight = float(batch_size) if batch_size is not None else float(self._infer_batch_size())
            buf.add(scalar, weight)

    def _infer_batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = _batch_size_of(self._batch)
        return self._batch_size


def _sync_across_ranks(buffers: list[_EpochBuffer]) -> None:
    """Reduce ``sync_dist`` epoch values over all ranks: one all-reduce per reduction kind."""
    import torch.distributed as dist

    if not buffers or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    ops = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    for reduce, op in ops.items():
        group = [b for b in buffers if b.reduce == reduce]
        if not group:
            continue
        partials = [b.partial() for b in group]
        device = next((p.device for p in partials if p is not None), torch.device("cpu"))
        values = [p.to(device, torch.float64) if p is not None else torch.zeros((), dtype=torch.float64,
                                                                              device=device) for p in partials]
        if reduce == "mean":
            values += [torch.tensor(b.folded_weight, dtype=torch.float64, device=device) for b in group]
        packed = torch.stack(values)
        dist.all_reduce(packed, op=op)
        for i, buf in enumerate(group):
            buf.folded = packed[i]
            if reduce == "mean":
                buf.folded_weight = float(packed[len(group) + i])


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size_of(item)
            if size:
                return size
    return 1

