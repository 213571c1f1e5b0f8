"""The control path: commands from the supervisor and local stop/preemption flags become one
decision that every rank applies at the same step.

At a control point rank 0 takes the commands its supervisor forwarded and refuses the bad
ones; one all-gather on the gloo control group merges everyone's flags (and rank 0's "I
have commands"); only then are the commands themselves broadcast. Control points are
spaced by time (``ControlPoint``); each is started at one batch and concluded at the
next, so the all-gather overlaps a step. ``agree_now`` adds whole agreements at fit start
and at the end of every epoch and validation. A pause never waits inside a collective:
paused ranks poll the rendezvous store, so it may outlast the process-group timeout. Without a supervisor and a group,
``due`` is always False and nothing here runs.

A stop is first *requested*, on any rank and for any reason (``trainer.should_stop`` set by
a callback or the user, ``max_time`` reached); a preemption signal likewise reaches one rank
at a time. In a group neither ends the loop until it is *agreed*: the next control point
carries it to every rank, which then set ``stop_agreed`` / ``preempt_agreed`` together and
leave at the same step (a rank leaving alone would hang its peers in the next DDP
all-reduce). In one process a request is its own agreement, checked after every batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from engine._announce import log
from engine._rank_channel import RankChannel
from engine._settings import SettingError, apply_setting, check_setting

__all__ = ["Controller"]

PROGRESS_INTERVAL_S = 0.25
PAUSE_POLL_S = 0.05


class Controller:
    """Owns the agreement at control points and the commands' effects on a Trainer."""

    def __init__(self, trainer: Any, channel: RankChannel | None, point: Any, store: Any = None) -> None:
        self.trainer = trainer
        self.channel = channel
        self.point = point
        self.store = store
        self.state = "running"
        self._pauses = 0
        self._next_progress = 0.0
        self._progress_batches = 0
        self._progress_time = 0.0
        self._step_time: float | None = None
        self.stop_agreed = False
        self.preempt_agreed = False
        self._proposed: list[dict[str, Any]] = []  # rank 0's commands in the agreement under way
        self._eval: _Validation | None = None
        self._eval_point: Any = None
        self._deferred: list[dict[str, Any]] = []  # agreed during a validation, applied at its end

    @property
    def grouped(self) -> bool:
        """Whether decisions need every rank's agreement (a group of more than one process)."""
        return self.point is not None

    def begin_fit(self) -> None:
        """Forget the previous fit's decisions."""
        self.stop_agreed = self.preempt_agreed = False
        self._proposed, self._deferred, self._eval = [], [], None
        if self.point is not None:
            self.point.abandon()

    def due(self, total_batches: int) -> bool:
        if self.point is not None:
            return self.point.due(total_batches)
        return self.channel is not None and bool(self.channel.commands)

    # -- agreement -----------------------------------------------------------------------

    def at_control_point(self) -> None:
        """A scheduled point in the training loop.

        In a group the agreement is started here and concluded at the next batch, where
        every rank applies the outcome; in one process the commands are applied at once.
        """
        self._advance(self.point, self.trainer.loop.total_batches)

    def agree_now(self) -> None:
        """A whole agreement off the time schedule, where every rank is anyway (fit start, the end
        of each epoch and of each validation).

        It makes decisions taken there (EarlyStopping at a training epoch's end, a callback's
        ``should_stop`` in ``on_train_epoch_end``) take effect on every rank at once. In one
        process it applies the commands waiting.
        """
        total = self.trainer.loop.total_batches
        if self.point is None:
            self._advance(None, total)
            return
        self._settle(self.point, total)
        self._propose(self.point, total)
        self._conclude(self.point.finish(total))

    def _advance(self, point: Any, count: int) -> None:
        if point is None:
            self._proposed = self._take_commands()
            self._conclude((0, 0, 0))
        elif point.pending:
            self._conclude(point.finish(count))
        else:
            self._propose(point, count)

    def _settle(self, point: Any, count: int) -> None:
        """Conclude the agreement under way on ``point``, if any."""
        if point is not None and point.pending:
            self._conclude(point.finish(count))

    def _take_commands(self) -> list[dict[str, Any]]:
        if self.channel is None or self.trainer.global_rank != 0:
            return []
        return self._accepted(self.channel.take_commands())

    def _propose(self, point: Any, count: int) -> None:
        """Send this rank's flags (rank 0: and whether it has commands) to the agreement on ``point``.

        During a validation only commands are agreed; stop and preemption requests wait for
        the agreement that follows it.
        """
        trainer = self.trainer
        self._proposed = self._take_commands()
        requests = [0, 0] if self._eval is not None else [int(trainer._stop_requested()),
                                                          int(trainer._preemption.received is not None)]
        point.start(count, [*requests, int(bool(self._proposed))])

    def _conclude(self, agreed: Any) -> None:
        """Act on what every rank agreed (stop, preemption, rank 0's commands), in order."""
        trainer = self.trainer
        stop, preempt, shared = agreed
        commands, self._proposed = self._proposed, []
        if stop:
            trainer.should_stop = self.stop_agreed = True
        if preempt:
            self.preempt_agreed = True
            if trainer._preemption.received is None:
                trainer._preemption.received = "a peer rank's signal"
        if shared:
            commands = self.point.share(commands)
        if self._eval is None:
            commands, self._deferred = self._deferred + commands, []
        for command in commands:
            if self._eval is not None and _waits_for_validation(command):
                self._deferred.append(command)
            else:
                self._apply(command)

    # -- during validation ---------------------------------------------------------------

    def begin_validation(self, batches: float) -> None:
        """Control points while fit validates over one loader of ``batches`` batches.

        Every rank must take part in the same agreements, so they are held only within the
        fewest batches any rank will run (agreed here). pause, resume and set act at once;
        checkpoint and stop wait for the validation's end (the checkpoint is then the one an
        uninterrupted run has at that step); ``stop`` without a checkpoint ends it at once.
        """
        total = self.trainer.loop.total_batches
        self._settle(self.point, total)
        limit = batches
        if self.point is not None:
            limit = self.point.agree_min(batches)
            self._eval_point = self.point.fresh()
        self._eval = _Validation(limit, self.stop_agreed)

    def validation_due(self, done: int) -> bool:
        """Whether a control point falls after the ``done``-th validation batch."""
        evaluation = self._eval
        if evaluation is None or done > evaluation.limit:
            return False
        if self.point is None:
            return self.channel is not None and bool(self.channel.commands)
        return self._eval_point.due(done)

    def at_validation_point(self, done: int) -> None:
        self._eval.batch = done
        self._advance(None if self.point is None else self._eval_point, done)

    def validation_stopped(self) -> bool:
        """Whether a stop without a checkpoint was applied during this validation."""
        return self._eval is not None and self.stop_agreed and not self._eval.stop_before

    def end_validation(self, done: int) -> None:
        if self._eval is None:
            return
        if self.point is not None:
            self._settle(self._eval_point, done)
        self._eval = None

    def _accepted(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The commands rank 0 can apply; the others are answered with an error at once."""
        accepted = []
        for command in commands:
            error = self._refusal(command)
            if error is None:
                accepted.append(command)
            else:
                self._reply(command, ok=False, error=error)
        return accepted

    def _refusal(self, command: dict[str, Any]) -> str | None:
        action, args = command["action"], command.get("args") or {}
        if action == "resume" and self.state != "paused":
            return "not paused"
        if action == "pause" and self.state == "paused":
            return "already paused"
        if action == "set":
            module = self.trainer.module
            try:
                check_setting(args.get("key"), args.get("value"), args.get("group"), self.trainer.optimizers,
                              module.tunables)
            except SettingError as exc:
                return str(exc)
        if action not in ("pause", "resume", "checkpoint", "stop", "set"):
            return f"{action!r} is not a rank command"
        return None

    # -- effects -------------------------------------------------------------------------

    def _apply(self, command: dict[str, Any]) -> None:
        trainer = self.trainer
        action, args = command["action"], command.get("args") or {}
        step = trainer.global_step
        where = f" (validation batch {self._eval.batch})" if self._eval is not None else ""
        log.info(f"rank {trainer.global_rank} applied {action}{_describe(args)} at step {step}{where}")
        if action == "pause":
            self._reply(command, ok=True)
            self._pause()
        elif action == "resume":
            self.state = "running"
            self._reply(command, ok=True)
        elif action == "checkpoint":
            self._checkpoint(command)
        elif action == "stop":
            trainer.should_stop = self.stop_agreed = True  # applied by every rank at this same step
            self.state = "stopping"
            if args.get("checkpoint", True):
                self._checkpoint(command)
            else:
                self._reply(command, ok=True)
        elif action == "set":
            detail = apply_setting(args["key"], args["value"], args.get("group"), trainer.optimizers,
                                   trainer.lr_schedulers, trainer.module.tunables)
            self._reply(command, ok=True, detail=detail)
        self.progress(force=True)

    def _checkpoint(self, command: dict[str, Any]) -> None:
        """Every rank joins the save; rank 0 replies once the file is on disk (or failed)."""

        step = self.trainer.global_step

        def done(path: Any, error: BaseException | None) -> None:
            if error is None:
                self._reply(command, ok=True, detail={"path": str(path)}, step=step)
            else:
                self._reply(command, ok=False, error=f"checkpoint failed: {error}", step=step)

        self.trainer.save_command_checkpoint(on_done=done)

    def _reply(self, command: dict[str, Any], ok: bool, error: str | None = None,
               detail: dict[str, Any] | None = None, step: int | None = None) -> None:
        """Rank 0 answers through the supervisor; ``step`` defaults to now (a background save passes its own)."""
        if self.channel is None or self.trainer.global_rank != 0:
            return
        step = self.trainer.global_step if step is None else step
        message: dict[str, Any] = {"type": "applied", "id": command["id"], "ok": ok, "step": step}
        if error is not None:
            message["error"] = error
        if detail is not None:
            message["detail"] = detail
        self.channel.send(message)

    # -- pause ---------------------------------------------------------------------------

    def _pause(self) -> None:
        """Hold every rank here until resume or stop, polling (never inside a collective)."""
        self.state = "paused"
        self._pauses += 1
        self.progress(force=True)
        decisions = 0
        trainer = self.trainer
        trainer.publish_now()
        while self.state == "paused":
            time.sleep(PAUSE_POLL_S)
            self.progress()
            if trainer.global_rank == 0:
                batch = self._accepted(self.channel.take_commands()) if self.channel else []
                if self._peer_preempted() or trainer._preemption.received is not None:
                    batch.append({"id": None, "action": "preempt"})
                if not batch:
                    continue
                if self.store is not None:
                    self.store.set(f"pause{self._pauses}/{decisions}", json.dumps(batch))
            else:
                if trainer._preemption.received is not None:
                    self.store.set(f"pause{self._pauses}/preempt", "1")
                key = f"pause{self._pauses}/{decisions}"
                if not self.store.check([key]):
                    continue
                batch = json.loads(self.store.get(key))
            decisions += 1
            for command in batch:
                if command["action"] == "preempt":
                    self.preempt_agreed = True
                    if trainer._preemption.received is None:
                        trainer._preemption.received = "a peer rank's signal"
                    self.state = "running"
                elif command["action"] == "pause":
                    continue
                elif self._eval is not None and _waits_for_validation(command):
                    self._deferred.append(command)
                    if command["action"] == "stop":
                        self.state = "stopping"
                else:
                    self._apply(command)
        self.progress(force=True)

    def _peer_preempted(self) -> bool:
        return self.store is not None and self.store.check([f"pause{self._pauses}/preempt"])

    # -- progress ------------------------------------------------------------------------

    def progress(self, force: bool = False) -> None:
        """Tell the supervisor where this rank is, every ``PROGRESS_INTERVAL_S`` (or now)."""
        if self.channel is None:
            return
        now = time.monotonic()
        if not force and now < self._next_progress:
            return
        trainer = self.trainer
        batches = trainer.loop.total_batches
        if self._progress_time and batches > self._progress_batches:
            self._step_time = (now - self._progress_time) / (batches - self._progress_batches)
        if self.state != "paused":
            self._progress_time, self._progress_batches = now, batches
        self._next_progress = now + PROGRESS_INTERVAL_S
        message = {"type": "progress", "rank": trainer.global_rank, "stage": trainer.stage or "idle",
                   "state": self.state, "epoch": trainer.current_epoch, "step": trainer.global_step,
                   "batch": trainer.loop.batches_done, "batches": _count(getattr(trainer, "_num_train_batches", None)),
                   "step_time": self._step_time, "time": time.time(),
                   "max_steps": trainer.config.max_steps, "max_epochs": trainer.config.max_epochs}
        self.channel.send({k: v for k, v in message.items() if v is not None})


@dataclass
class _Validation:
    """The validation under way: how many of its batches hold control points, and where it is."""

    limit: float
    stop_before: bool  # a stop agreed before it began does not end it early
    batch: int = 0


def _waits_for_validation(command: dict[str, Any]) -> bool:
    """Commands that act at the end of a validation: those that save a checkpoint."""
    action = command["action"]
    return action == "checkpoint" or (action == "stop" and (command.get("args") or {}).get("checkpoint", True))


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value != float("inf") else None


def _describe(args: dict[str, Any]) -> str:
    return " " + " ".join(f"{k}={v}" for k, v in args.items()) if args else ""
