"""Checkpoints that cost the training loop only a memory copy.

``stage`` snapshots every tensor of a state into CPU memory (the loop blocks on this
only); ``submit`` serialises and writes that snapshot on one background thread. At most
one write is in flight: a new submit first waits for the previous one, so a loop that
saves faster than the disk can write is slowed down instead of piling up copies.
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from engine._checkpoint_io import save_checkpoint

__all__ = ["AsyncCheckpointWriter", "OnDone"]

log = logging.getLogger("traindeck")

OnDone = Callable[[Path, "BaseException | None"], None]
"""Called on the writer thread when a write ends: ``(path, None)`` or ``(path, the error)``."""

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


class _Stager:
    """One snapshot of a nested state: containers rebuilt, tensors copied to CPU.

    Tensors that are the same view of the same storage (tied weights) stay one tensor in
    the snapshot. CUDA tensors are copied into pinned memory without blocking and waited
    for once, at the end.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], torch.Tensor] = {}
        self._devices: set[torch.device] = set()

    def run(self, state: Any) -> Any:
        staged = self._copy(state)
        for device in self._devices:
            torch.cuda.synchronize(device)
        return staged

    def _copy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, _IMMUTABLE):
            return value
        if isinstance(value, dict):
            out = copy.copy(value)
            for key, item in value.items():
                out[key] = self._copy(item)
            return out
        if isinstance(value, list):
            return [self._copy(item) for item in value]
        if isinstance(value, tuple):
            items = [self._copy(item) for item in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        return copy.deepcopy(value)

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        key = self._alias_key(tensor)
        if key is not None and key in self._memo:
            return self._memo[key]
        if tensor.device.type == "cpu":
            staged = tensor.clone()
        elif tensor.device.type == "cuda" and tensor.layout == torch.strided:
            staged = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
            staged.copy_(tensor, non_blocking=True)
            self._devices.add(tensor.device)
        else:
            staged = tensor.to("cpu", copy=True)
        if key is not None:
            self._memo[key] = staged
        return staged

    @staticmethod
    def _alias_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
        if tensor.layout != torch.strided or tensor.is_meta:
            return None
        try:
            pointer = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):
            return None
        return (pointer, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
                tensor.dtype, tensor.device)


class AsyncCheckpointWriter:
    """Writes checkpoints on one background thread; see the module docstring for the contract.

    Errors of a background write go to that submit's ``on_done`` (or the log when none
    was given); they never stop the thread or the training. ``on_done`` runs on the writer
    thread and must not call ``submit``/``wait``. A write still in flight when the
    interpreter exits is finished first (the thread pool joins its worker at exit).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traindeck-ckpt-writer")
        self._lock = threading.RLock()
        self._in_flight: Future[None] | None = None
        self._closed = False
        self._writer_thread: int | None = None

    @staticmethod
    def stage(state: Any) -> Any:
        """A snapshot of ``state`` in CPU memory that later in-place updates cannot change."""
        with torch.no_grad():
            return _Stager().run(state)

    def submit(self, staged: Any, path: str | Path, summary: dict[str, Any] | None = None,
               on_done: OnDone | None = None) -> None:
        """Write ``staged`` to ``path`` in the background, after waiting for any write in flight."""
        path = Path(path)
        with self._lock:
            if self._closed:
                raise RuntimeError("AsyncCheckpointWriter.submit() after close()")
            self._wait_in_flight()
            self._in_flight = self._executor.submit(self._write, staged, path, summary, on_done)

    def save(self, state: Any, path: str | Path, summary: dict[str, Any] | None = None,
             on_done: OnDone | None = None) -> None:
        """Wait for the write in flight, then stage and submit: never two snapshots in memory at once."""
        self.wait()
        self.submit(self.stage(state), path, summary, on_done)

    def wait(self) -> None:
        """Block until no write is in flight (end of fit, before exiting on preemption)."""
        with self._lock:
            self._wait_in_flight()

    @property
    def busy(self) -> bool:
        """Whether a write is in flight now."""
        future = self._in_flight
        return future is not None and not future.done()

    def close(self) -> None:
        """Finish the write in flight and stop the thread; later submits raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wait_in_flight()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> AsyncCheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_in_flight(self) -> None:
        if threading.get_ident() == self._writer_thread:
            raise RuntimeError("an on_done callback cannot submit to or wait for its own checkpoint writer")
        if self._in_flight is not None:
            self._in_flight.result()
            self._in_flight = None

    def _write(self, staged: Any, path: Path, summary: dict[str, Any] | None, on_done: OnDone | None) -> None:
        self._writer_thread = threading.get_ident()
        error: BaseException | None = None
        try:
            save_checkpoint(staged, path, summary)
        except Exception as exc:
            error = exc
        del staged
        if on_done is None:
            if error is not None:
                log.error(f"background checkpoint write failed: {error}")
            return
        try:
            on_done(path, error)
        except Exception:
            log.exception(f"the on_done callback of the checkpoint write to {path} raised")
