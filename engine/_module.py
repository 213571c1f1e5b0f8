"""Module: the user's model plus the steps and optimizers the Trainer drives."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from engine._errors import ModuleError
from engine._hparams import AttributeDict, collect_init_args

if TYPE_CHECKING:
    from engine._trainer import Trainer

__all__ = ["Module"]


class Module(nn.Module):
    """Subclass this instead of ``nn.Module``; port a LightningModule by changing the base.

    Required: ``training_step`` and ``configure_optimizers``. Optional:
    ``validation_step``, ``test_step``, ``predict_step`` and the ``on_*`` hooks.
    """

    automatic_optimization: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hparams = AttributeDict()
        self._trainer: Trainer | None = None
        self.example_input_array: Any = None
        self._tunables: dict[str, float] = {}

    # -- hyperparameters -------------------------------------------------------------

    def save_hyperparameters(self, *names: str, ignore: list[str] | str | None = None) -> None:
        """Store the calling ``__init__``'s arguments (or just ``names``) in ``self.hparams``."""
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        init_args = collect_init_args(frame.f_back, ignored)
        if names:
            missing = [n for n in names if n not in init_args]
            if missing:
                raise ModuleError(f"save_hyperparameters: {missing} are not arguments of __init__")
            init_args = {n: init_args[n] for n in names}
        self._hparams.update(init_args)

    @property
    def hparams(self) -> AttributeDict:
        return self._hparams

    def register_tunable(self, name: str, value: float) -> None:
        """Declare a number that ``traindeck ctl RUN set NAME=VALUE`` may change while training.

        Read it back as ``self.tunables[name]`` where it is used; changed values are saved
        in checkpoints and restored on resume.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModuleError(f"register_tunable({name!r}, {value!r}): a tunable must be a number")
        self._tunables[name] = value

    @property
    def tunables(self) -> dict[str, float]:
        """The values registered with ``register_tunable``, as changed at run time."""
        return self._tunables

    # -- what the Trainer provides -------------------------------------------------------

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise ModuleError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(module) first")
        return self._trainer

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer else 0

    def log(
        self,
        name: str,
        value: Any,
        *,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        prog_bar: bool = False,
        logger: bool = True,
        reduce_fx: str | Callable[..., Any] = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
    ) -> None:
        """Record a scalar; never syncs the device (see docs/metrics.md)."""
        if self._trainer is None:
            return
        self._trainer._metrics.log(
            name,
            value,
            on_step=on_step,
            on_epoch=on_epoch,
            prog_bar=prog_bar,
            logger=logger,
            reduce_fx=reduce_fx,
            sync_dist=sync_dist,
            batch_size=batch_size,
        )

    def log_dict(self, values: Mapping[str, Any], **kwargs: Any) -> None:
        """``self.log`` for each item of ``values``, with the same options."""
        for name, value in values.items():
            self.log(name, value, **kwargs)

    def optimizers(self) -> Any:
        """The optimizer (or list of them) from ``configure_optimizers``, for manual optimization."""
        opts = self.trainer.optimizers
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor) -> None:
        """Backward with the Trainer's precision (grad scaling) applied."""
        self.trainer._precision.backward(loss)

    # -- the steps -----------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise ModuleError(f"{type(self).__name__} must define training_step(self, batch, batch_idx)")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        pass

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        pass

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise ModuleError(
            f"{type(self).__name__} must define configure_optimizers() returning an optimizer, "
            "a list of them, (optimizers, schedulers) or a dict with 'optimizer' and 'lr_scheduler'"
        )

    def configure_callbacks(self) -> list[Any]:
        return []

    # -- hooks (all no-ops; order in docs/hooks.md) --------------------------------------

    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
