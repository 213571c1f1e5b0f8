"""Moving metrics from the collector to the loggers, and checking the training loss on the way."""

from __future__ import annotations

import math
import time
from typing import Any, Iterator, Sequence

import torch

from engine._announce import log
from engine._errors import NonFiniteLossError
from engine._metrics import MetricCollector, materialise
from engine.loggers._jsonl import encode_float

__all__ = ["MetricPublisher", "FLUSH_INTERVAL_S", "FLUSH_AT_VALUES", "MESSAGE_VALUES"]

FLUSH_INTERVAL_S = 0.25
FLUSH_AT_VALUES = 4096  # a flush comes sooner when this many step values are waiting
MESSAGE_VALUES = 1024  # at most this many values in one message to the supervisor (lines stay far below its limit)


class MetricPublisher:
    """Materialises pending values every ``FLUSH_INTERVAL_S`` (sooner when ``FLUSH_AT_VALUES`` are
    waiting) and at epoch ends; feeds the loggers.

    The training losses it is handed stay on the device until a flush, where they are
    checked for NaN/Inf in one transfer (``on_nonfinite`` "raise" or "warn").
    """

    def __init__(self, collector: MetricCollector, on_nonfinite: str) -> None:
        self.collector = collector
        self.on_nonfinite = on_nonfinite
        self.loggers: list[Any] = []
        self.logged: dict[str, float] = {}
        self.losses: list[tuple[int, torch.Tensor]] = []
        self.next_flush = 0.0
        self.channel: Any = None

    def due(self) -> bool:
        return time.monotonic() >= self.next_flush or self.collector.pending_values >= FLUSH_AT_VALUES

    def flush(self) -> None:
        """Check pending losses, then hand every pending step value to the supervisor and the loggers."""
        self.next_flush = time.monotonic() + FLUSH_INTERVAL_S
        self.check_losses()
        self.send_many(self.collector.flush())

    def publish_epoch(self, stage: str, epoch: int, step: int) -> dict[str, float]:
        """Reduce ``stage``'s epoch values, send those marked for loggers; returns all of them."""
        values, logged = self.collector.end_epoch(stage)
        if logged and stage in ("train", "validate"):
            logged["epoch"] = float(epoch)
        self.send(logged, step, stage)
        return values

    def send(self, values: dict[str, float], step: int, stage: str | None = None) -> None:
        self.send_many([(step, values)], stage)

    def send_many(self, records: Sequence[tuple[int, dict[str, float]]], stage: str | None = None) -> None:
        """One message to the supervisor for all ``records`` (it is live first), then each to the loggers.

        ``stage`` marks epoch-end reductions, so readers of metrics.jsonl know when a validation ended.
        """
        records = [(step, values) for step, values in records if values]
        if not records:
            return
        if self.channel is not None:
            now = time.time()
            marked = {"stage": stage} if stage else {}
            for chunk in _chunks(records, MESSAGE_VALUES):
                self.channel.send({"type": "metrics", "points": [
                    {"step": step, "time": now, "values": {k: encode_float(v) for k, v in values.items()}, **marked}
                    for step, values in chunk]})
        for step, values in records:
            self.logged.update(values)
            for logger in self.loggers:
                logger.log_metrics(values, step)

    def check_losses(self) -> None:
        if not self.losses:
            return
        entries, self.losses = self.losses, []
        for (step, _), value in zip(entries, materialise(loss for _, loss in entries)):
            if not math.isfinite(value):
                message = (f"the training loss became {value} at global step {step}; lower the learning "
                           "rate, enable gradient_clip_val, or set on_nonfinite_loss='skip'")
                if self.on_nonfinite == "raise":
                    raise NonFiniteLossError(message, step)
                log.warning(message)
                return


def _chunks(records: Sequence[tuple[int, dict[str, float]]],
            limit: int) -> Iterator[list[tuple[int, dict[str, float]]]]:
    """``records`` in runs of at most ``limit`` values; only a step with more than that is split."""
    chunk: list[tuple[int, dict[str, float]]] = []
    size = 0
    for step, values in records:
        if chunk and size + len(values) > limit:
            yield chunk
            chunk, size = [], 0
        if len(values) <= limit:
            chunk.append((step, values))
            size += len(values)
            continue
        items = list(values.items())
        for start in range(0, len(items), limit):
            yield [(step, dict(items[start:start + limit]))]
    if chunk:
        yield chunk
