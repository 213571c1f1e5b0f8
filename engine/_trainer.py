"""Trainer: runs fit / validate / test / predict for a Module.

The training path reads top to bottom in ``fit`` → ``_run_train_epoch`` →
``_train_batch`` → ``_optimizer_step``. The metrics path is ``engine._metrics`` and
``engine._publish``; the control path (commands, pause, agreement across ranks) is
``engine._control``; the checkpoint path is ``engine._trainer_checkpoints`` (save,
restore, resume, preemption) over ``engine._checkpointing`` and ``engine._checkpoint_io``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from engine._accelerator import choose_device, move_to_device
from engine._announce import fit_summary, log, start_summary
from engine._checkpointing import CheckpointSaver
from engine._config import TrainerConfig
from engine._data import batch_limit, resolve_loaders
from engine._control import Controller
from engine._distributed import (
    ControlPoint,
    broadcast_object,
    check_launch_matches,
    control_group,
    control_store,
    init_group,
    launch_group,
    needs_launch,
    read_launch_env,
    set_parent_death_signal,
)
from engine._launcher import STARTUP_PARENT
from engine._failures import write_failure
from engine._errors import ConfigError, ModuleError, NonFiniteLossError
from engine._heap import HeapFreezer
from engine._hooks import HookDispatcher
from engine._loop_state import LoopState
from engine._metrics import MetricCollector
from engine._module import Module
from engine._optim import LRSchedulerConfig, clip_gradients, parse_optimizers, step_schedulers
from engine._precision import Precision
from engine._preemption import PreemptionWatch
from engine._publish import FLUSH_INTERVAL_S, MetricPublisher
from engine._rank_channel import connect_from_env
from engine._rng import restore_rng
from engine._run_dir import choose_run_dir
from engine._sampling import ResumableSampler, make_resumable, reseed_workers, with_own_generator
from engine._seed import enable_determinism, seed_everything
from engine._step_runner import StepRunner
from engine._trainer_checkpoints import TrainerCheckpoints
from engine.callbacks._base import Callback

__all__ = ["Trainer"]

class Trainer(TrainerCheckpoints):
    """Runs the loops; everything configurable is a keyword argument (see TrainerConfig)."""

    def __init__(
        self,
        *,
        callbacks: list[Callback] | Callback | None = None,
        logger: Any = None,
        loggers: Any = None,
        **settings: Any,
    ) -> None:
        try:
            self.config = TrainerConfig(**settings)
        except TypeError as exc:
            raise ConfigError(f"Trainer got an unknown argument: {exc}") from None
        if logger is not None and loggers is not None:
            raise ConfigError("pass either logger= or loggers=, not both")
        self._user_callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        self._logger_arg = loggers if loggers is not None else logger
        if self.config.seed is not None:
            seed_everything(self.config.seed)
        self._launch = read_launch_env()
        self.global_rank = self._launch.rank
        self.local_rank = self._launch.local_rank
        self.world_size = self._launch.world_size
        check_launch_matches(self.config, self._launch)
        if self._launch.source == "torchrun":
            set_parent_death_signal(parent=STARTUP_PARENT)
        self.loop = LoopState()
        self.should_stop = False
        self.sanity_checking = False
        self.stage: str | None = None
        self.callbacks: list[Callback] = []
        self._default_checkpoint: Callback | None = None
        self.loggers: list[Any] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.module: Module | None = None
        self.datamodule: Any = None
        self.run_dir: Path | None = None
        self._metrics = MetricCollector(self.config.log_every_n_steps)
        self._publisher = MetricPublisher(self._metrics, self.config.on_nonfinite_loss)
        self._precision: Precision | None = None
        self._device = torch.device("cpu")
        self._announced = False
        self._connected = False
        self._fit_start_time = 0.0
        self._saver = CheckpointSaver()
        self._data_seed: int | None = None
        self._announced_data = ""
        self._preemption = PreemptionWatch(())
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self._controller = Controller(self, None, None)
        self._heap = HeapFreezer()

    # -- attributes users reach for ------------------------------------------------------

    @property
    def current_epoch(self) -> int:
        return self.loop.epoch

    @property
    def global_step(self) -> int:
        return self.loop.global_step

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def lr_schedulers(self) -> list[Any]:
        return [c.scheduler for c in self.lr_scheduler_configs]

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """The values last sent to the loggers, as CPU tensors."""
        return {k: torch.tensor(v) for k, v in self._publisher.logged.items()}

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Latest value of every logged metric, as CPU tensors (materialises pending values)."""
        return {k: torch.tensor(v) for k, v in self._metrics.latest().items()}

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.latest(self._metrics.progress_keys())

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_training_batches(self) -> float:
        return self._num_train_batches

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from engine.callbacks import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def log_dir(self) -> Path | None:
        return self.run_dir

    # -- the four entry points -----------------------------------------------------------

    def fit(
        self,
        module: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | Path | None = None,
    ) -> None:
        """Train ``module`` until max_epochs / max_steps / max_time or a stop request.

        With ``devices``/``num_nodes`` asking for more than one process and no launcher
        around, this re-runs the script under torchrun and exits with the group's status.
        """
        if needs_launch(self.config, self._launch):
            launch_group(self.config)
        signals = self.config.preemption_signals
        if self.world_size > 1 and "SIGINT" not in signals:
            signals = (*signals, "SIGINT")
        with self._session(module, "fit", datamodule), PreemptionWatch(signals) as watch:
            self._preemption = watch
            self._train_loaders = resolve_loaders("fit", train_dataloaders, datamodule, module)
            if not self._train_loaders:
                raise ModuleError("fit needs training data: pass train_dataloaders, a datamodule, "
                                  "or define train_dataloader() on the module")
            self._val_loaders = resolve_loaders("validate", val_dataloaders, datamodule, module)
            self._setup_optimizers(module)
            self._wrap_for_distributed(module)
            ckpt_path = ckpt_path if ckpt_path is not None else self._restart_checkpoint()
            rng_state = self._restore(ckpt_path) if ckpt_path is not None else None
            self._prepare_data_order()
            self._num_train_batches = batch_limit(self._train_loaders[0], self.config.limit_train_batches,
                                                  "limit_train_batches")
            self._announce_fit(module)
            self._start_loggers(module)
            self._hooks("on_fit_start")
            self._run_sanity_check()
            if rng_state is not None:
                restore_rng(rng_state)
            self._hooks("on_train_start")
            self._controller.begin_fit()
            self._controller.agree_now()
            self._heap.start()
            while not self._fit_done():
                self._run_train_epoch()
            self._controller.progress(force=True)
            self._hooks("on_train_end")
            self._hooks("on_fit_end")

    def validate(self, module: Module, dataloaders: Any = None, datamodule: Any = None,
                 ckpt_path: str | Path | None = None) -> list[dict[str, float]]:
        """Run one pass over the validation data; returns the epoch metrics per dataloader."""
        return self._evaluate(module, "validate", dataloaders, datamodule, ckpt_path)

    def test(self, module: Module, dataloaders: Any = None, datamodule: Any = None,
             ckpt_path: str | Path | None = None) -> list[dict[str, float]]:
        """Run one pass over the test data; returns the epoch metrics per dataloader."""
        return self._evaluate(module, "test", dataloaders, datamodule, ckpt_path)

    def predict(self, module: Module, dataloaders: Any = None, datamodule: Any = None,
                ckpt_path: str | Path | None = None) -> list[Any]:
        """Outputs of ``predict_step`` for every batch (a list per dataloader if several)."""
        with self._session(module, "predict", datamodule):
            loaders = self._require_loaders("predict", dataloaders, datamodule, module)
            if ckpt_path is not None:
                self._restore(ckpt_path, weights_only=True)
            self._announce_start(module)
            outputs = self._run_eval_loop("predict", loaders, self.config.limit_predict_batches, collect=True)
        return outputs[0] if len(outputs) == 1 else outputs

    def _evaluate(self, module: Module, stage: str, dataloaders: Any, datamodule: Any,
                  ckpt_path: str | Path | None) -> list[dict[str, float]]:
        with self._session(module, stage, datamodule):
            loaders = self._require_loaders(stage, dataloaders, datamodule, module)
            if ckpt_path is not None:
                self._restore(ckpt_path, weights_only=True)
            self._announce_start(module)
            limit = self.config.limit_val_batches if stage == "validate" else self.config.limit_test_batches
            results = self._run_eval_loop(stage, loaders, limit)
        for i, values in enumerate(results):
            text = "  ".join(f"{k} {v:.6g}" for k, v in values.items()) or "nothing logged"
            log.info(f"{stage} results{f' (dataloader {i})' if len(results) > 1 else ''}: {text}")
        return results

    def _require_loaders(self, stage: str, explicit: Any, datamodule: Any, module: Module) -> list[Any]:
        loaders = resolve_loaders(stage, explicit, datamodule, module)
        if not loaders:
            method = {"validate": "val_dataloader", "test": "test_dataloader",
                      "predict": "predict_dataloader"}[stage]
            raise ModuleError(f"{stage} needs data: pass dataloaders, or define {method}()")
        return loaders

    # -- session: set-up and tear-down shared by all entry points ------------------------

    @contextlib.contextmanager
    def _session(self, module: Module, stage: str, datamodule: Any) -> Iterator[None]:
        if not isinstance(module, Module):
            raise ModuleError(f"expected an engine.Module, got {type(module).__name__}; "
                              "subclass engine.Module instead of nn.Module")
        self.stage, self.module, self.datamodule = stage, module, datamodule
        self.should_stop = False
        if self.config.seed is not None:
            seed_everything(self.config.seed)
        if self.config.deterministic:
            enable_determinism()
        choice = choose_device(self.config.accelerator, self.config.devices, self.local_rank)
        self._device, self._device_reason = choice.device, choice.reason
        if self.world_size > 1:
            init_group(self._device, self.config.process_group_timeout_s)
        if not self._connected:
            self._connect_control()
        self._precision = Precision(self.config.precision, self._device)
        module._trainer = self
        module.to(self._device)
        self.callbacks = self._build_callbacks(module, stage)
        self._hooks = HookDispatcher(self, module, self.callbacks)
        self.loggers = self._publisher.loggers = self._build_loggers(stage)
        setup_stage = "validate" if stage == "validate" else stage
        if datamodule is not None:
            datamodule.prepare_data()
            datamodule.setup(setup_stage)
        self._hooks("setup", setup_stage)
        status = "success"
        try:
            yield
        except KeyboardInterrupt:
            status = "interrupted"
            log.warning("interrupted by the user (Ctrl-C); finishing cleanly")
        except SystemExit:
            status = "interrupted"
            raise
        except BaseException as exc:
            status = "failed"
            self._record_failure(exc)
            self._hooks.callbacks("on_exception", exc)
            raise
        finally:
            try:
                self._publish_metrics()
            except NonFiniteLossError:
                if status == "success":
                    raise
            finally:
                self._heap.release()
                self.wait_for_checkpoints()
                final = self._metrics.latest() if status != "failed" else {}
                for logger in self.loggers:
                    logger.finalize(status, final)
                self._hooks("teardown", setup_stage)
                if datamodule is not None:
                    datamodule.teardown(setup_stage)
                self.stage = None

    def _build_callbacks(self, module: Module, stage: str) -> list[Callback]:
        from engine.callbacks import ModelCheckpoint, ProgressBar

        callbacks = list(self._user_callbacks) + list(module.configure_callbacks() or [])
        if self.config.enable_checkpointing and not self.config.fast_dev_run \
                and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
            if stage == "fit" and self._default_checkpoint is None:
                self._default_checkpoint = ModelCheckpoint()
            if self._default_checkpoint is not None:
                callbacks.append(self._default_checkpoint)
        if self.config.enable_progress_bar and self.is_global_zero \
                and not any(isinstance(cb, ProgressBar) for cb in callbacks):
            callbacks.insert(0, ProgressBar())
        checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
        return [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)] + checkpoints

    def _build_loggers(self, stage: str) -> list[Any]:
        from engine.loggers import JSONLinesLogger, Logger, TensorBoardLogger

        arg = self._logger_arg
        if arg is False or self.config.fast_dev_run or not self.is_global_zero:
            loggers: list[Any] = []
        elif arg is None or arg is True:
            # under a supervisor, metrics.jsonl is written by the supervisor from what the channel sends
            loggers = [] if self._publisher.channel is not None else [JSONLinesLogger()]
            loggers += [TensorBoardLogger()] if stage == "fit" else []
        else:
            loggers = list(arg) if isinstance(arg, (list, tuple)) else [arg]
            bad = [type(x).__name__ for x in loggers if not isinstance(x, Logger)]
            if bad:
                raise ConfigError(f"loggers must be engine.loggers.Logger instances; got {bad}")
        if self.run_dir is None and (loggers or (stage == "fit" and not self.config.fast_dev_run)):
            chosen = choose_run_dir(self.config.default_root_dir, self.config.name) if self.is_global_zero else None
            self.run_dir = Path(broadcast_object(str(chosen) if chosen else None))
        for logger in loggers:
            logger.bind(self.run_dir)
        return loggers

    def _setup_optimizers(self, module: Module) -> None:
        self.optimizers, self.lr_scheduler_configs = parse_optimizers(module.configure_optimizers())
        if module.automatic_optimization and len(self.optimizers) > 1:
            raise ModuleError(
                f"configure_optimizers returned {len(self.optimizers)} optimizers; with several optimizers "
                "set `self.automatic_optimization = False` in __init__ and step them yourself in training_step"
            )
        if not module.automatic_optimization and self._precision.scaler is not None:
            raise ConfigError("precision='16-mixed' with manual optimization is not supported; "
                              "use 'bf16-mixed' or automatic optimization")

    # -- processes: launch, group, agreement ---------------------------------------------

    def _wrap_for_distributed(self, module: Module) -> None:
        if self.world_size == 1:
            return
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self._device.index] if self._device.type == "cuda" else None
        find_unused = self.config.strategy == "ddp_find_unused_parameters_true"
        self._ddp = DistributedDataParallel(StepRunner(module), device_ids=device_ids,
                                            find_unused_parameters=find_unused)

    def _connect_control(self) -> None:
        """The supervisor's channel (when started by one) and, in a group, the control point and store."""
        self._connected = True
        channel = connect_from_env(self.global_rank, self.local_rank, str(self._device))
        if self.world_size > 1:
            self._controller = Controller(self, channel, ControlPoint(control_group(), self.global_rank),
                                          control_store())
        else:
            self._controller = Controller(self, channel, None)
        self._publisher.channel = channel if self.is_global_zero else None

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (identity in one process)."""
        return broadcast_object(obj, src)

    def _record_failure(self, exc: BaseException) -> None:
        """Leave the traceback where the launcher, torchrun and the supervisor report it."""
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return
        write_failure(self.run_dir, self.global_rank, exc)

    # -- the training loop ---------------------------------------------------------------

    def _fit_done(self) -> bool:
        c = self.config
        return (self._stop_agreed()
                or (c.max_epochs is not None and self.loop.epoch >= c.max_epochs)
                or (c.max_steps is not None and self.loop.global_step >= c.max_steps))

    def _stop_requested(self) -> bool:
        """This rank asks to stop: ``should_stop`` (a callback, the user, a stop command) or max_time."""
        return self.should_stop or self._time_up()

    def _stop_agreed(self) -> bool:
        """Whether to leave the loop now: in one process on any request; in a group only once every
        rank agreed at a control point (``engine._control``), so that all leave at the same step."""
        if self._controller.grouped:
            return self._controller.stop_agreed
        return self._stop_requested()

    def _preempt_agreed(self) -> bool:
        if self._controller.grouped:
            return self._controller.preempt_agreed
        return self._preemption.received is not None

    def _time_up(self) -> bool:
        limit = self.config.max_time_s
        return limit is not None and time.monotonic() - self._fit_start_time >= limit

    def _run_train_epoch(self) -> None:
        module = self.module
        self._metrics.set_stage("train")
        if self.loop.batches_done == 0:
            self._metrics.begin_epoch("train")
        self._hooks("on_train_epoch_start")
        module.train()
        finished = True
        for batch_idx, batch in self._epoch_batches(self._train_loaders[0]):
            if batch_idx >= self._num_train_batches:
                break
            if self._train_batch(batch, batch_idx) == -1:
                break
            self._heap.maybe_freeze()
            if self._publisher.due():
                self._publish_metrics()
            self._controller.progress()  # its own interval: an epoch's end flush must not keep it waiting
            if self._should_validate(batch_idx):
                self._run_validation()
            if self._controller.due(self.loop.total_batches):
                self._controller.at_control_point()
            if self._preempt_agreed():
                self._exit_preempted()
            if self._stop_agreed() or self._steps_reached():
                finished = self.loop.batches_done >= self._num_train_batches
                break
        if self.loop.accumulated and finished:
            self._optimizer_step()
        self._end_train_epoch(finished)

    def _epoch_batches(self, loader: Any) -> Iterator[tuple[int, Any]]:
        """(batch_idx, batch) for the current epoch, starting after the batches already done."""
        skip = self.loop.batches_done
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            sampler.set_epoch(self.loop.epoch)
            sampler.set_start(skip * (loader.batch_size or 1))
            reseed_workers(loader, self._data_seed, self.loop.epoch)
            return enumerate(loader, start=skip)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.loop.epoch)
        return itertools.islice(enumerate(loader), skip, None)

    def _prepare_data_order(self) -> None:
        """Own the training data order (seeded per epoch) so a resumed epoch skips without loading."""
        if self._data_seed is None:
            self._data_seed = self.config.seed if self.config.seed is not None \
                else int(torch.randint(0, 2**62, ()).item())
        self._data_seed = broadcast_object(self._data_seed)
        loader, message = make_resumable(self._train_loaders[0], self._data_seed, self.world_size, self.global_rank)
        self._train_loaders[0] = loader
        if self.world_size > 1:
            self._val_loaders = [make_resumable(v, 0, self.world_size, self.global_rank)[0] for v in self._val_loaders]
        else:
            self._val_loaders = [with_own_generator(v) for v in self._val_loaders]
        if message != self._announced_data and self.is_global_zero:
            log.info(message)
            self._announced_data = message

    def _train_batch(self, batch: Any, batch_idx: int) -> int | None:
        batch = move_to_device(batch, self._device)
        self._metrics.set_batch(batch)
        if self._hooks("on_train_batch_start", batch, batch_idx) == -1:
            return -1
        if not self.module.automatic_optimization:
            outputs = self._step("training_step", batch, batch_idx)
            self.loop.global_step += 1
            self._metrics.step = self.loop.global_step
            self._end_train_batch(outputs, batch, batch_idx)
            return None
        completes = (self.loop.accumulated + 1 == self.config.accumulate_grad_batches
                     or batch_idx + 1 == self._num_train_batches)
        if self._ddp is None or completes:
            outputs, backward_done = self._forward_backward(batch, batch_idx)
        else:
            with self._ddp.no_sync():  # inside an accumulation window: gradients are all-reduced once per step
                outputs, backward_done = self._forward_backward(batch, batch_idx)
        if backward_done:
            self._hooks("on_after_backward")
            self.loop.accumulated += 1
            if completes:
                self._optimizer_step()
        self._end_train_batch(outputs, batch, batch_idx)
        return None

    def _forward_backward(self, batch: Any, batch_idx: int) -> tuple[Any, bool]:
        """``training_step`` and the backward of its loss; ``(outputs, False)`` when a non-finite loss is skipped."""
        outputs = self._step("training_step", batch, batch_idx)
        loss = self._loss_from(outputs)
        if self.config.on_nonfinite_loss == "skip" and not bool(torch.isfinite(loss)):
            log.warning(f"non-finite loss at step {self.loop.global_step} (batch {batch_idx}); step skipped")
            return outputs, False
        self._publisher.losses.append((self.loop.global_step, loss.detach()))
        if self.config.accumulate_grad_batches > 1:
            loss = loss / self.config.accumulate_grad_batches
        self._hooks("on_before_backward", loss)
        self._precision.backward(loss)
        return outputs, True

    def _step(self, name: str, *args: Any) -> Any:
        """Run a Module step under the precision's autocast, through DDP's forward when distributed so
        its gradient hooks are armed."""
        if self._ddp is not None:
            step, args = self._ddp, (name, *args)
        else:
            step = getattr(self.module, name)
        if not self._precision.autocasts:
            return step(*args)
        with self._precision.autocast():
            return step(*args)

    def _end_train_batch(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Count the batch as done before on_train_batch_end, so a checkpoint saved there resumes after it."""
        self.loop.batch_done(batch_idx)
        self._hooks("on_train_batch_end", outputs, batch, batch_idx)

    def _loss_from(self, outputs: Any) -> torch.Tensor:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            got = "None" if outputs is None else type(outputs).__name__
            raise ModuleError(
                f"training_step returned {got}; return the loss tensor or a dict with a 'loss' tensor "
                "(to end an epoch early, return -1 from on_train_batch_start)"
            )
        if loss.numel() != 1:
            raise ModuleError(f"training_step returned a loss of shape {tuple(loss.shape)}; reduce it to a "
                              "scalar (e.g. loss.mean())")
        if not loss.requires_grad:
            raise ModuleError("the loss returned by training_step does not require grad; was it computed "
                              "under torch.no_grad() or detached?")
        return loss

    def _optimizer_step(self) -> None:
        optimizer = self.optimizers[0]
        self._precision.unscale(optimizer)
        self._hooks("on_before_optimizer_step", optimizer)
        if self.config.gradient_clip_val is not None:
            clip_gradients(optimizer, self.config.gradient_clip_val, self.config.gradient_clip_algorithm)
        self._precision.step(optimizer)
        self._hooks("on_before_zero_grad", optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.loop.accumulated = 0
        self.loop.global_step += 1
        self._metrics.step = self.loop.global_step
        if self.lr_scheduler_configs:
            self._step_schedulers("step")

    def _step_schedulers(self, interval: str) -> None:
        counter = self.loop.global_step if interval == "step" else self.loop.epoch + 1
        step_schedulers(self.lr_scheduler_configs, interval, counter, self._metrics.latest)

    def _steps_reached(self) -> bool:
        return self.config.max_steps is not None and self.loop.global_step >= self.config.max_steps

    def _end_train_epoch(self, finished: bool) -> None:
        """Epoch-end hooks and metrics; the loop moves to the next epoch only if this one ran to its end."""
        self._hooks.module("on_train_epoch_end")
        self._publish_metrics()
        self._publish_epoch_metrics("train")
        if finished:
            self._step_schedulers("epoch")
            self.loop.epoch_finished = True
        self._hooks.callbacks("on_train_epoch_end")
        self._controller.agree_now()
        if finished:
            self.loop.next_epoch()

    @property
    def _validation_enabled(self) -> bool:
        """Whether fit validates at all: validation data was given and limit_val_batches is not 0."""
        return bool(self._val_loaders) and self.config.limit_val_batches != 0

    def _should_validate(self, batch_idx: int) -> bool:
        if not self._validation_enabled:
            return False
        every = self.config.check_val_every_n_epoch
        if every is not None and (self.loop.epoch + 1) % every:
            return False
        interval = self.config.val_check_interval
        done = batch_idx + 1
        last = done == self._num_train_batches
        if isinstance(interval, float):
            if math.isinf(self._num_train_batches):
                return False
            period = max(1, int(self._num_train_batches * interval))
            return done % period == 0 or (last and interval == 1.0)
        if every is None:
            return self.loop.total_batches % interval == 0
        return done % interval == 0

    # -- validation, test, predict ------------------------------------------------------

    def _run_sanity_check(self) -> None:
        steps = self.config.num_sanity_val_steps
        if not self._validation_enabled or steps == 0:
            return
        self.sanity_checking = True
        self._metrics.enabled = False
        self._hooks.callbacks("on_sanity_check_start")
        try:
            cap = math.inf if steps == -1 else steps
            self._eval_batches("validate", self._val_loaders, self.config.limit_val_batches, collect=False, cap=cap)
        finally:
            self._metrics.enabled = True
            self.sanity_checking = False
        self._hooks.callbacks("on_sanity_check_end")

    def _run_validation(self) -> None:
        self._publish_metrics()
        try:
            self._run_eval_loop("validate", self._val_loaders, self.config.limit_val_batches, controlled=True)
        except _ValidationStopped as stopped:
            log.info(f"validation at step {self.global_step} ended after {stopped.batches} batches by a stop "
                     "command; its metrics are not logged")
        self._metrics.set_stage("train")
        self.module.train()
        self._controller.agree_now()

    def _run_eval_loop(self, stage: str, loaders: list[Any], limit: int | float,
                       collect: bool = False, controlled: bool = False) -> list[Any]:
        hook = {"validate": "validation", "test": "test", "predict": "predict"}[stage]
        self._metrics.set_stage(stage)
        self._metrics.begin_epoch(stage)
        self._hooks(f"on_{hook}_start")
        self._hooks(f"on_{hook}_epoch_start")
        outputs = self._eval_batches(stage, loaders, limit, collect, controlled=controlled)
        self._hooks.module(f"on_{hook}_epoch_end")
        results = self._publish_epoch_metrics(stage) if stage != "predict" else {}
        self._hooks.callbacks(f"on_{hook}_epoch_end")
        self._hooks(f"on_{hook}_end")
        if collect:
            return outputs
        if len(loaders) == 1:
            return [results]
        return [{k: v for k, v in results.items()
                 if k.endswith(f"/dataloader_idx_{i}") or "/dataloader_idx_" not in k}
                for i in range(len(loaders))]

    def _eval_batches(self, stage: str, loaders: list[Any], limit: int | float, collect: bool,
                      cap: float = math.inf, controlled: bool = False) -> list[Any]:
        """Every loader's batches through the step; ``controlled``: commands act in between (fit's
        validation, see ``Controller.begin_validation``)."""
        module = self.module
        hook = {"validate": "validation", "test": "test", "predict": "predict"}[stage]
        step_fn = getattr(module, f"{hook}_step")
        pass_idx = len(loaders) > 1
        hooks = self._hooks if not self.sanity_checking else self._hooks.module
        module.eval()
        all_outputs: list[list[Any]] = []
        with torch.no_grad():
            for dl_idx, loader in enumerate(loaders):
                n = min(cap, batch_limit(loader, limit, f"limit_{'val' if stage == 'validate' else stage}_batches"))
                self._metrics.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if pass_idx else ""
                outputs: list[Any] = []
                if controlled:
                    self._controller.begin_validation(n)
                done = 0
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= n:
                        break
                    batch = move_to_device(batch, self._device)
                    self._metrics.set_batch(batch)
                    hooks(f"on_{hook}_batch_start", batch, batch_idx, dl_idx)
                    with self._precision.autocast():
                        out = step_fn(batch, batch_idx, dl_idx) if pass_idx else step_fn(batch, batch_idx)
                    hooks(f"on_{hook}_batch_end", out, batch, batch_idx, dl_idx)
                    if collect:
                        outputs.append(out)
                    done = batch_idx + 1
                    if controlled and self._controller.validation_due(done):
                        self._controller.at_validation_point(done)
                        if self._controller.validation_stopped():
                            self._controller.end_validation(done)
                            raise _ValidationStopped(done)
                if controlled:
                    self._controller.end_validation(done)
                all_outputs.append(outputs)
        self._metrics.dataloader_suffix = ""
        return all_outputs

    # -- metrics out to loggers ----------------------------------------------------------

    def _start_loggers(self, module: Module) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(dict(module.hparams))
            if module.example_input_array is not None:
                example = move_to_device(module.example_input_array, self._device)
                logger.log_graph(module, example)

    def _publish_metrics(self) -> None:
        self._publisher.flush()

    def publish_now(self) -> None:
        """Send pending step metrics and push the loggers' buffers to disk (a pause shows everything before it)."""
        self._publisher.flush()
        for logger in self.loggers:
            logger.flush()

    def _publish_epoch_metrics(self, stage: str) -> dict[str, float]:
        return self._publisher.publish_epoch(stage, self.loop.epoch, self.loop.global_step)

    def log_to_loggers(self, values: dict[str, float], step: int) -> None:
        """Send plain floats to every logger (what callbacks like LearningRateMonitor use)."""
        self._publisher.send(values, step)

    # -- start-up summary ----------------------------------------------------------------

    def _announce_start(self, module: Module) -> None:
        if self._announced or not self.is_global_zero:
            return
        self._announced = True
        for line in start_summary(self.config, self._device, self._device_reason, self._precision.describe(),
                                  module, self.run_dir):
            log.info(line)

    def _announce_fit(self, module: Module) -> None:
        self._announce_start(module)
        self._fit_start_time = time.monotonic()
        self._publisher.next_flush = time.monotonic() + FLUSH_INTERVAL_S
        if self.is_global_zero:
            for line in fit_summary(self.config, self.world_size, self._device, self.loggers):
                log.info(line)

    def __repr__(self) -> str:
        return f"Trainer(epoch={self.current_epoch}, global_step={self.global_step}, stage={self.stage})"


class _ValidationStopped(Exception):
    """A stop without a checkpoint, applied during fit's validation: the validation ends at once."""

    def __init__(self, batches: int) -> None:
        super().__init__(batches)
        self.batches = batches
