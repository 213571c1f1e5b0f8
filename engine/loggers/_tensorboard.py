"""A logger writing TensorBoard event files, with hparams and (optionally) the model graph."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .._errors import ConfigError
from ._base import Logger

if TYPE_CHECKING:
    from ._event_file import EventFile

__all__ = ["TensorBoardLogger"]

_log = logging.getLogger("traindeck")

FINAL_METRIC_PREFIX = "final/"
# TensorBoard's hparams Status enum has only UNKNOWN, SUCCESS, FAILURE and RUNNING: an
# interrupted (Ctrl-C or preempted) run is recorded as UNKNOWN.
_STATUS = {"success": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}


class TensorBoardLogger(Logger):
    """Write scalars, hparams and the model graph as TensorBoard events in one run directory.

    TensorBoard is imported on first write, so ``import engine.loggers`` stays light. The
    hparams session is written at ``finalize`` into the same directory as the scalars
    (no extra timestamped sub-run) with the run's status; each final metric is also
    written as the scalar ``final/<name>`` at the last logged step, which is the value the
    hparams dashboard shows. After ``load_state_dict`` the next writer purges events past
    the restored step, so a resumed run does not show the abandoned tail twice.
    """

    name = "tensorboard"

    def __init__(
        self,
        save_dir: str | Path | None = None,
        log_graph: bool = False,
        flush_secs: float = 5,
    ) -> None:
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not flush_secs > 0:
            raise ConfigError(
                f"TensorBoardLogger(flush_secs={flush_secs!r}) must be a positive number of "
                "seconds between writes of buffered events to disk."
            )
        self._save_dir = Path(save_dir) if save_dir is not None else None
        self._dir = self._save_dir
        self._log_graph = bool(log_graph)
        self._flush_secs = flush_secs
        self._writer: EventFile | None = None
        self._hparams: dict[str, bool | int | float | str] | None = None
        self._last_step: int | None = None
        self._resume_step: int | None = None
        self._graph_warned = False

    def bind(self, run_dir: Path) -> None:
        """Default the output directory to ``run_dir / "tensorboard"``."""
        if self._save_dir is None:
            new_dir = Path(run_dir) / "tensorboard"
            if self._writer is not None and new_dir != self._dir:
                self._close()
            self._dir = new_dir

    @property
    def log_dir(self) -> Path | None:
        return self._dir

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Keep the flattened hyperparameters; they are written with the final metrics.

        Called before training starts, so it also pays for importing TensorBoard's protos
        there instead of at the first flush, in the middle of the loop.
        """
        importlib.import_module("engine.loggers._event_file")
        self._hparams = {**(self._hparams or {}), **flatten_hparams(params)}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._get_writer().add_scalars(metrics, int(step))  # one event per step, not per value
        self._last_step = int(step) if self._last_step is None else max(self._last_step, int(step))

    def log_graph(self, model: Any, example_input: Any) -> None:
        """Trace ``model`` on ``example_input`` if enabled; a failed trace warns once, never raises."""
        if not self._log_graph or example_input is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event, TaggedRunMetadata
        from torch.utils.tensorboard._pytorch_graph import graph

        captured = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
                warnings.filterwarnings(
                    "ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning
                )
                graph_def, step_stats = graph(model, example_input)
        except Exception as exc:
            if not self._graph_warned:
                self._graph_warned = True
                _log.warning(
                    "TensorBoardLogger could not trace the model graph (%s: %s); no graph "
                    "was logged. Check that example_input matches the model's forward() "
                    "and device, or pass log_graph=False.",
                    type(exc).__name__,
                    exc,
                )
            return
        writer = self._get_writer()
        writer.add(Event(wall_time=time.time(), graph_def=graph_def.SerializeToString()))
        writer.add(Event(wall_time=time.time(), tagged_run_metadata=TaggedRunMetadata(
            tag="step1", run_metadata=step_stats.SerializeToString())))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.write()

    def finalize(self, status: str, final_metrics: Mapping[str, float]) -> None:
        """Write the hparams session with ``final_metrics`` and ``status``, then close the writer."""
        if self._hparams is not None:
            self._write_hparams(status, final_metrics)
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Remember the checkpoint's step so events logged after it are purged on the next write."""
        self._last_step = self._resume_step = state.get("step")

    def _write_hparams(self, status: str, final_metrics: Mapping[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {FINAL_METRIC_PREFIX + str(k): float(v) for k, v in final_metrics.items()}
        exp, ssi, sei = hparams(dict(self._hparams or {}), metrics)
        _set_end_status(sei, status)
        writer = self._get_writer()
        step = self._last_step or 0
        for summary in (exp, ssi, sei):
            writer.add_summary(summary, step)
        if metrics:
            writer.add_scalars(metrics, step)

    def _get_writer(self) -> EventFile:
        if self._writer is None:
            if self._dir is None:
                raise ConfigError(
                    "TensorBoardLogger has no directory: pass save_dir=... or let the "
                    "Trainer call bind(run_dir) before logging."
                )
            from ._event_file import EventFile

            purge_step = None if self._resume_step is None else self._resume_step + 1
            self._writer = EventFile(self._dir, self._flush_secs, purge_step)
            self._resume_step = None
        return self._writer

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flatten_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Flatten nested mappings into "a/b" keys with values TensorBoard's hparams accept."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}/"))
        else:
            flat[name] = _hparam_value(value)
    return flat


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        item = value.item()
        if isinstance(item, (bool, int, float, str)):
            return item
    return str(value)


def _set_end_status(sei: Any, status: str) -> None:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    value = sei.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(_STATUS.get(status, "STATUS_UNKNOWN"))
    data.session_end_info.end_time_secs = time.time()
    value.metadata.plugin_data.content = data.SerializeToString()
