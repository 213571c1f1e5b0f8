"""The Trainer's control path in one process, against a stub supervisor on a real unix socket.

The stub welcomes the rank, records every message it sends (progress, metrics, applied)
and sends it commands. A callback asks the stub for a command at a chosen global step and
waits until the rank holds it, so the command applies at that batch's control point (in
one process every batch boundary with a pending command is one): the tests are
deterministic without sleeping through a time-spaced control point.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from conftest import TinyClassifier, make_loader, params_of
from engine import protocol
from engine._checkpoint_io import load_checkpoint
from engine.callbacks import Callback

WAIT_S = 5.0


class StubSupervisor:
    """Listens on a unix socket for one rank: welcomes it, records what it sends, sends it commands."""

    def __init__(self, path: Path, run_dir: Path) -> None:
        self.path = path
        self.run_dir = run_dir
        self.hello: dict[str, Any] | None = None
        self.received: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._conn: socket.socket | None = None
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, name="stub-supervisor", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        stream = conn.makefile("rb")
        try:
            hello = protocol.decode(stream.readline())
            conn.sendall(protocol.encode({"type": "welcome", "version": protocol.PROTOCOL_VERSION, "run": "t",
                                          "run_dir": str(self.run_dir)}))
            with self._cond:
                self.hello, self._conn = hello, conn
                self._cond.notify_all()
            for line in stream:
                message = protocol.decode(line)
                with self._cond:
                    self.received.append(message)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass

    def command(self, action: str, args: dict[str, Any] | None = None) -> int:
        """Send a command line to the rank; returns its id."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._conn is not None, WAIT_S), "no rank connected"
            conn = self._conn
        command_id = next(self._ids)
        message: dict[str, Any] = {"type": "command", "id": command_id, "action": action}
        if args is not None:
            message["args"] = args
        conn.sendall(protocol.encode(message))
        return command_id

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first received message matching ``predicate``, waiting up to WAIT_S for it."""
        def found() -> dict[str, Any] | None:
            return next((m for m in self.received if predicate(m)), None)

        with self._cond:
            message = self._cond.wait_for(found, WAIT_S)
        assert message is not None, f"no such message within {WAIT_S} s; received {self.received}"
        return message

    def applied(self, command_id: int) -> dict[str, Any]:
        return self.wait_for(lambda m: m["type"] == "applied" and m["id"] == command_id)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.received if m["type"] == kind]

    def fit(self, trainer: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        """``trainer.fit``, then everything the rank queued is read (its channel is flushed and closed)."""
        try:
            trainer.fit(module, *args, **kwargs)
        finally:
            channel = trainer._controller.channel
            if channel is not None:
                channel.close()
                self._thread.join(WAIT_S)

    def close(self) -> None:
        with self._cond:
            conn = self._conn
        for sock in (conn, self._server):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._thread.join(WAIT_S)


def _send_and_wait(supervisor: StubSupervisor, trainer: Any,
                   commands: tuple[tuple[str, dict[str, Any] | None], ...]) -> list[int]:
    """Have the supervisor send ``commands``; wait until the rank holds them all (they apply at its next
    point). Returns their ids."""
    ids = [supervisor.command(action, args) for action, args in commands]
    channel = trainer._controller.channel
    deadline = time.monotonic() + WAIT_S
    while len(channel.commands) < len(commands):
        assert time.monotonic() < deadline, "the rank did not receive the commands"
        time.sleep(0.002)
    return ids


class Commands(Callback):
    """At the end of the batch that brings global_step to ``step``, has the supervisor send
    ``commands`` and waits until the rank has received them all, so they apply at that step."""

    def __init__(self, supervisor: StubSupervisor, step: int, *commands: tuple[str, dict[str, Any] | None]) -> None:
        self.supervisor, self.step, self.commands = supervisor, step, commands
        self.ids: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or self.ids:
            return
        self.ids = _send_and_wait(self.supervisor, trainer, self.commands)


def _channel_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("traindeck-channel-")}


class Record(Callback):
    """Per batch: the global step and lr at its start, and the step and time at its end."""

    def __init__(self) -> None:
        self.lr_at: dict[int, float] = {}
        self.tunables_at: dict[int, dict[str, float]] = {}
        self.ends: list[tuple[int, float]] = []
        self.start_step: int | None = None
        self.start_lr: float | None = None
        self.start_tunables: dict[str, float] = {}
        self.channel_threads: set[int | None] = set()

    def on_train_start(self, trainer, module) -> None:
        self.start_step = trainer.global_step
        self.start_lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.start_tunables = dict(module.tunables)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lr_at[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]
        self.tunables_at[trainer.global_step] = dict(module.tunables)
        self.channel_threads.update(_channel_threads())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append((trainer.global_step, time.monotonic()))


class Tempered(TinyClassifier):
    """TinyClassifier whose logits are divided by the ``temperature`` tunable."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_tunable("temperature", 1.0)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x) / self.tunables["temperature"], y)


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch):
    for name in ("TRAINDECK_SOCKET", "TRAINDECK_RUN_DIR", "TRAINDECK_RESUME", "TRAINDECK_RUN_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def supervisor(tmp_path, monkeypatch):
    """A stub supervisor; $TRAINDECK_SOCKET points at it (in a short directory: unix paths are limited)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="td-"))
    stub = StubSupervisor(socket_dir / "s.sock", tmp_path / "run")
    monkeypatch.setenv("TRAINDECK_SOCKET", str(stub.path))
    yield stub
    stub.close()
    shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def trainer_for(make_trainer):
    def factory(max_steps: int = 8, callbacks: list[Callback] = (), **kwargs: Any):
        return make_trainer(max_steps=max_steps, num_sanity_val_steps=0, callbacks=list(callbacks), **kwargs)

    return factory


def _command_checkpoints(tmp_path: Path) -> list[str]:
    directory = tmp_path / "run" / "checkpoints"
    return sorted(p.name for p in directory.glob("*-command.ckpt")) if directory.is_dir() else []


# -- connecting --------------------------------------------------------------------------


def test_the_rank_says_hello_with_its_rank_and_device(supervisor, trainer_for):
    trainer = trainer_for(max_steps=2)
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    assert supervisor.hello["role"] == "rank"
    assert (supervisor.hello["rank"], supervisor.hello["local_rank"], supervisor.hello["device"]) == (0, 0, "cpu")
    assert trainer._controller.channel is not None


def test_without_a_socket_variable_there_is_no_channel_and_no_channel_thread(trainer_for):
    before = _channel_threads()  # other tests' channels may still be winding down
    record = Record()
    trainer = trainer_for(max_steps=3, callbacks=[record])
    trainer.fit(TinyClassifier(), make_loader())
    assert trainer._controller.channel is None
    assert trainer.global_step == 3
    assert not (record.channel_threads | _channel_threads()) - before


def test_an_unreachable_supervisor_warns_and_training_runs_without_control(trainer_for, tmp_path, monkeypatch,
                                                                           traindeck_log):
    monkeypatch.setenv("TRAINDECK_SOCKET", str(tmp_path / "nobody-listens.sock"))
    trainer = trainer_for(max_steps=4)
    trainer.fit(TinyClassifier(), make_loader())
    assert trainer.global_step == 4
    assert trainer._controller.channel is None
    warnings = [r.getMessage() for r in traindeck_log.records if r.levelname == "WARNING"]
    assert any("could not reach the supervisor" in w and "nobody-listens.sock" in w for w in warnings)


# -- set ---------------------------------------------------------------------------------


def test_set_lr_applies_at_the_step_in_the_reply_and_lasts(supervisor, trainer_for):
    commands = Commands(supervisor, 3, ("set", {"key": "lr", "value": 0.01}))
    record = Record()
    trainer = trainer_for(max_steps=8, callbacks=[commands, record])
    supervisor.fit(trainer, TinyClassifier(lr=0.1), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is True and reply["step"] == 3
    assert reply["detail"]["old"] == 0.1 and reply["detail"]["new"] == 0.01
    assert {s: lr for s, lr in record.lr_at.items() if s < 3} == {0: 0.1, 1: 0.1, 2: 0.1}
    assert {s: lr for s, lr in record.lr_at.items() if s >= 3} == {3: 0.01, 4: 0.01, 5: 0.01, 6: 0.01, 7: 0.01}
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.01


def test_set_a_tunable_changes_module_tunables_and_the_reply_shows_old_and_new(supervisor, trainer_for):
    commands = Commands(supervisor, 2, ("set", {"key": "temperature", "value": 0.5}))
    record = Record()
    module = Tempered()
    supervisor.fit(trainer_for(max_steps=5, callbacks=[commands, record]), module, make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is True and reply["step"] == 2
    assert reply["detail"] == {"key": "temperature", "old": 1.0, "new": 0.5, "target": "tunable"}
    assert module.tunables == {"temperature": 0.5}
    assert [record.tunables_at[s]["temperature"] for s in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.5]


def test_a_bad_set_is_answered_with_an_error_naming_the_key_and_changes_nothing(supervisor, trainer_for,
                                                                              monkeypatch):
    commands = Commands(supervisor, 2, ("set", {"key": "learning_rate", "value": 0.5}))
    trainer = trainer_for(max_steps=6, seed=0, callbacks=[commands])
    torch.manual_seed(0)
    module = TinyClassifier()
    supervisor.fit(trainer, module, make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is False and reply["step"] == 2
    assert "unknown key 'learning_rate'" in reply["error"] and "lr" in reply["error"]
    assert trainer.global_step == 6

    monkeypatch.delenv("TRAINDECK_SOCKET")
    twin_trainer = trainer_for(max_steps=6, seed=0)
    torch.manual_seed(0)
    twin = TinyClassifier()
    twin_trainer.fit(twin, make_loader())
    for changed, expected in zip(params_of(module), params_of(twin)):
        assert torch.equal(changed, expected)


def test_set_lr_to_a_non_positive_value_is_refused(supervisor, trainer_for):
    commands = Commands(supervisor, 1, ("set", {"key": "lr", "value": 0}))
    trainer = trainer_for(max_steps=3, callbacks=[commands])
    supervisor.fit(trainer, TinyClassifier(lr=0.1), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is False and "must be positive" in reply["error"]
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1


def test_set_lr_under_a_step_scheduler_rescales_the_schedule(supervisor, trainer_for):
    class Scheduled(TinyClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5),
                                                       "interval": "step"}}

    commands = Commands(supervisor, 3, ("set", {"key": "lr", "value": 0.2}))  # lr was 0.05 at step 3
    record = Record()
    supervisor.fit(trainer_for(max_steps=8, callbacks=[commands, record]), Scheduled(), make_loader())
    assert supervisor.applied(commands.ids[0])["detail"]["old"] == pytest.approx(0.05)
    expected = {0: 0.1, 1: 0.1, 2: 0.05, 3: 0.2, 4: 0.1, 5: 0.1, 6: 0.05, 7: 0.05}
    assert record.lr_at == pytest.approx(expected)


# -- checkpoint and stop -----------------------------------------------------------------


def test_a_checkpoint_command_writes_a_step_named_file_that_holds_that_step(supervisor, trainer_for, tmp_path):
    commands = Commands(supervisor, 3, ("checkpoint", None))
    trainer = trainer_for(max_steps=6, callbacks=[commands])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    reply = supervisor.applied(commands.ids[0])
    path = Path(reply["detail"]["path"])
    assert reply["ok"] is True
    assert path == tmp_path / "run" / "checkpoints" / "step=3-command.ckpt"
    assert load_checkpoint(path)["loop"]["global_step"] == 3
    assert trainer.global_step == 6


def test_the_checkpoint_reply_carries_the_step_it_was_taken_at(supervisor, trainer_for, monkeypatch):
    import engine._checkpoint_async as checkpoint_async

    real_save = checkpoint_async.save_checkpoint

    def slow_disk(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_async, "save_checkpoint", slow_disk)

    class Slow(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            time.sleep(0.01)

    commands = Commands(supervisor, 2, ("checkpoint", None))
    supervisor.fit(trainer_for(max_steps=30, callbacks=[commands, Slow()]), TinyClassifier(), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["detail"]["path"].endswith("step=2-command.ckpt")
    assert reply["step"] == 2


def test_stop_ends_fit_at_the_replied_step_with_a_checkpoint(supervisor, trainer_for, tmp_path):
    commands = Commands(supervisor, 3, ("stop", None))
    record = Record()
    trainer = trainer_for(max_steps=20, callbacks=[commands, record])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is True and reply["step"] == 3
    assert trainer.global_step == 3 and record.ends[-1][0] == 3
    assert _command_checkpoints(tmp_path) == ["step=3-command.ckpt"]
    assert reply["detail"]["path"] == str(tmp_path / "run" / "checkpoints" / "step=3-command.ckpt")
    assert load_checkpoint(reply["detail"]["path"])["loop"]["global_step"] == 3


def test_stop_without_checkpoint_writes_no_command_checkpoint(supervisor, trainer_for, tmp_path):
    commands = Commands(supervisor, 2, ("stop", {"checkpoint": False}))
    trainer = trainer_for(max_steps=20, callbacks=[commands])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is True and reply["step"] == 2 and "detail" not in reply
    assert trainer.global_step == 2
    assert _command_checkpoints(tmp_path) == []


def test_stop_reports_state_stopping(supervisor, trainer_for):
    commands = Commands(supervisor, 2, ("stop", {"checkpoint": False}))
    supervisor.fit(trainer_for(max_steps=20, callbacks=[commands]), TinyClassifier(), make_loader())
    assert supervisor.of_type("progress")[-1]["state"] == "stopping"


# -- pause and resume --------------------------------------------------------------------


def test_pause_holds_training_until_resume(supervisor, trainer_for):
    def resume_later() -> None:
        supervisor.wait_for(lambda m: m["type"] == "applied")
        time.sleep(0.5)
        supervisor.command("resume")

    resumer = threading.Thread(target=resume_later, daemon=True)
    resumer.start()
    commands = Commands(supervisor, 3, ("pause", None))
    record = Record()
    trainer = trainer_for(max_steps=6, callbacks=[commands, record])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    resumer.join(WAIT_S)

    steps = [step for step, _ in record.ends]
    assert steps == [1, 2, 3, 4, 5, 6]
    times = dict(record.ends)
    assert times[4] - times[3] >= 0.4
    applied = supervisor.of_type("applied")
    assert [(m["ok"], m["step"]) for m in applied] == [(True, 3), (True, 3)]


def test_a_pause_publishes_every_step_before_it_to_the_supervisor_and_tensorboard(supervisor, trainer_for,
                                                                                   tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen: dict[str, list[int]] = {}

    def look_then_resume() -> None:
        supervisor.wait_for(lambda m: m["type"] == "applied")
        time.sleep(0.2)
        try:
            seen["supervisor"] = [p["step"] for m in supervisor.of_type("metrics") for p in m["points"]]
            events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
            events.Reload()
            seen["tensorboard"] = [e.step for e in events.Scalars("train_loss")]
        finally:
            supervisor.command("resume")

    looker = threading.Thread(target=look_then_resume, daemon=True)
    looker.start()
    commands = Commands(supervisor, 3, ("pause", None))
    supervisor.fit(trainer_for(max_steps=6, callbacks=[commands], logger=True, log_every_n_steps=1),
                   TinyClassifier(), make_loader())
    looker.join(WAIT_S)
    assert seen == {"supervisor": [0, 1, 2], "tensorboard": [0, 1, 2]}  # a step logs under its index


def test_progress_says_paused_during_a_pause_and_running_after(supervisor, trainer_for):
    def resume_later() -> None:
        supervisor.wait_for(lambda m: m["type"] == "applied")
        time.sleep(0.6)
        supervisor.command("resume")

    threading.Thread(target=resume_later, daemon=True).start()
    commands = Commands(supervisor, 2, ("pause", None))
    supervisor.fit(trainer_for(max_steps=4, callbacks=[commands]), TinyClassifier(), make_loader())
    states = [(m["state"], m["step"]) for m in supervisor.of_type("progress")]
    paused = [i for i, (state, _) in enumerate(states) if state == "paused"]
    assert len(paused) >= 2  # on entering, and at least one periodic report while held
    assert all(states[i][1] == 2 for i in paused)
    after = states[paused[-1] + 1:]
    assert after and after[0] == ("running", 2)
    assert all(state == "running" for state, _ in after)
    assert after[-1] == ("running", 4)


def test_resume_when_not_paused_is_refused(supervisor, trainer_for):
    commands = Commands(supervisor, 2, ("resume", None))
    trainer = trainer_for(max_steps=4, callbacks=[commands])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] is False and reply["error"] == "not paused" and reply["step"] == 2
    assert trainer.global_step == 4


def test_a_stop_while_paused_ends_fit_at_the_paused_step(supervisor, trainer_for, tmp_path):
    def stop_later() -> None:
        supervisor.wait_for(lambda m: m["type"] == "applied")
        time.sleep(0.2)
        supervisor.command("stop", {"checkpoint": True})

    threading.Thread(target=stop_later, daemon=True).start()
    commands = Commands(supervisor, 2, ("pause", None))
    trainer = trainer_for(max_steps=10, callbacks=[commands])
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    assert trainer.global_step == 2
    assert [(m["ok"], m["step"]) for m in supervisor.of_type("applied")] == [(True, 2), (True, 2)]
    assert _command_checkpoints(tmp_path) == ["step=2-command.ckpt"]


# -- during validation -------------------------------------------------------------------


class ValidationCommands(Callback):
    """Like ``Commands``, at the end of validation batch ``batch`` of the first validation; also notes,
    per validation batch, the step, the temperature at its start, and whether the supervisor had a reply."""

    def __init__(self, supervisor: StubSupervisor, batch: int, *commands: tuple[str, dict[str, Any] | None],
                 then: Callable[[], None] | None = None) -> None:
        self.supervisor, self.batch, self.commands, self.then = supervisor, batch, commands, then
        self.ids: list[int] = []
        self.seen: list[tuple[int, int, float, bool, float]] = []  # step, batch, temperature, replied, time

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        replied = bool(self.supervisor.of_type("applied"))
        self.seen.append((trainer.global_step, batch_idx, module.tunables["temperature"], replied, time.monotonic()))

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != self.batch or self.ids:
            return
        self.ids = _send_and_wait(self.supervisor, trainer, self.commands)
        if self.then is not None:
            threading.Thread(target=self.then, daemon=True).start()


def _validating_trainer(trainer_for, callback: Callback, max_steps: int = 4) -> Any:
    """Validation after step 2 and step 4 over 8 batches."""
    return trainer_for(max_steps=max_steps, callbacks=[callback], val_check_interval=2, logger=None,
                       log_every_n_steps=1)


def _validate_on(supervisor: StubSupervisor, trainer: Any) -> None:
    supervisor.fit(trainer, Tempered(), make_loader(32), make_loader(64))


def test_set_during_validation_applies_from_the_next_validation_batch(supervisor, trainer_for, traindeck_log):
    commands = ValidationCommands(supervisor, 2, ("set", {"key": "temperature", "value": 2.0}))
    _validate_on(supervisor, _validating_trainer(trainer_for, commands))

    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] and reply["step"] == 2
    first = [(batch, temperature) for step, batch, temperature, _, _ in commands.seen if step == 2]
    assert first == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0), (5, 2.0), (6, 2.0), (7, 2.0)]
    assert "applied set key=temperature value=2.0 at step 2 (validation batch 3)" in traindeck_log.text


def test_pause_during_validation_holds_it_until_resume(supervisor, trainer_for):
    def resume_later() -> None:
        supervisor.wait_for(lambda m: m["type"] == "applied")
        time.sleep(0.5)
        supervisor.command("resume")

    commands = ValidationCommands(supervisor, 2, ("pause", None), then=resume_later)
    _validate_on(supervisor, _validating_trainer(trainer_for, commands))

    started = {batch: at for step, batch, _, _, at in commands.seen if step == 2}
    assert started[3] - started[2] >= 0.45
    assert [(m["ok"], m["step"]) for m in supervisor.of_type("applied")] == [(True, 2), (True, 2)]
    assert len(commands.seen) == 16


def test_a_checkpoint_asked_during_validation_is_taken_when_it_ends(supervisor, trainer_for, tmp_path):
    commands = ValidationCommands(supervisor, 2, ("checkpoint", None))
    _validate_on(supervisor, _validating_trainer(trainer_for, commands))

    assert not any(replied for step, _, _, replied, _ in commands.seen if step == 2)
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] and reply["step"] == 2
    assert _command_checkpoints(tmp_path) == ["step=2-command.ckpt"]
    assert load_checkpoint(Path(reply["detail"]["path"]))["loop"]["global_step"] == 2


def test_a_stop_without_checkpoint_ends_validation_at_once_and_logs_none_of_it(supervisor, trainer_for, tmp_path):
    commands = ValidationCommands(supervisor, 2, ("stop", {"checkpoint": False}))
    trainer = _validating_trainer(trainer_for, commands, max_steps=10)
    _validate_on(supervisor, trainer)

    assert [(step, batch) for step, batch, *_ in commands.seen] == [(2, 0), (2, 1), (2, 2)]
    assert trainer.global_step == 2
    assert supervisor.applied(commands.ids[0])["step"] == 2
    points = [p for m in supervisor.of_type("metrics") for p in m["points"]]
    assert points and not any("val_loss" in p["values"] for p in points)
    assert _command_checkpoints(tmp_path) == []


def test_a_stop_during_validation_lets_it_finish_then_checkpoints_and_ends(supervisor, trainer_for, tmp_path):
    commands = ValidationCommands(supervisor, 2, ("stop", None))
    trainer = _validating_trainer(trainer_for, commands, max_steps=10)
    _validate_on(supervisor, trainer)

    assert [batch for step, batch, *_ in commands.seen] == list(range(8))
    assert trainer.global_step == 2
    reply = supervisor.applied(commands.ids[0])
    assert reply["ok"] and reply["step"] == 2
    assert _command_checkpoints(tmp_path) == ["step=2-command.ckpt"]
    points = [p for m in supervisor.of_type("metrics") for p in m["points"]]
    assert any("val_loss" in p["values"] for p in points)


# -- metrics -----------------------------------------------------------------------------


def test_metrics_reach_the_supervisor_as_points(supervisor, trainer_for, tmp_path):
    trainer = trainer_for(max_steps=4, logger=None, log_every_n_steps=1)
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    points = [p for m in supervisor.of_type("metrics") for p in m["points"]]
    assert points and all(set(p) == {"step", "time", "values"} for p in points)
    losses = {p["step"]: p["values"]["train_loss"] for p in points if "train_loss" in p["values"]}
    assert sorted(losses) == [0, 1, 2, 3]
    assert all(isinstance(v, float) for v in losses.values())


class ManyMetrics(TinyClassifier):
    """Logs ``per_step`` values every step besides the loss."""

    def __init__(self, per_step: int) -> None:
        super().__init__()
        self.per_step = per_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log_dict({f"m{i:04d}": loss for i in range(self.per_step)})
        return loss


@pytest.mark.parametrize("per_step", [300, 1500])
def test_a_large_flush_reaches_the_supervisor_whole_in_messages_of_at_most_1024_values(supervisor, trainer_for,
                                                                                      per_step):
    trainer = trainer_for(max_steps=6, logger=None, log_every_n_steps=1)
    supervisor.fit(trainer, ManyMetrics(per_step), make_loader())
    messages = supervisor.of_type("metrics")
    sizes = [sum(len(p["values"]) for p in m["points"]) for m in messages]
    assert max(sizes) <= 1024 and len(messages) >= 6 * per_step // 1024
    received: dict[int, set[str]] = {}
    for m in messages:
        for p in m["points"]:
            received.setdefault(p["step"], set()).update(p["values"])
    assert {step: len(names) for step, names in received.items()} == {step: per_step + 1 for step in range(6)}


def test_under_a_supervisor_the_trainer_writes_no_metrics_jsonl(supervisor, trainer_for, tmp_path):
    trainer = trainer_for(max_steps=4, logger=None, log_every_n_steps=1)
    supervisor.fit(trainer, TinyClassifier(), make_loader())
    assert supervisor.of_type("metrics")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not any(type(lg).__name__ == "JSONLinesLogger" for lg in trainer.loggers)


def test_without_a_supervisor_the_trainer_writes_metrics_jsonl(trainer_for, tmp_path):
    trainer = trainer_for(max_steps=4, logger=None, log_every_n_steps=1)
    trainer.fit(TinyClassifier(), make_loader())
    assert (tmp_path / "run" / "metrics.jsonl").exists()


# -- resuming ----------------------------------------------------------------------------


def test_values_changed_by_set_survive_a_resume_from_a_command_checkpoint(supervisor, trainer_for, monkeypatch):
    commands = Commands(supervisor, 2, ("set", {"key": "lr", "value": 0.03}),
                        ("set", {"key": "temperature", "value": 0.25}), ("checkpoint", None))
    supervisor.fit(trainer_for(max_steps=4, callbacks=[commands]), Tempered(lr=0.1), make_loader())
    path = supervisor.applied(commands.ids[2])["detail"]["path"]

    monkeypatch.delenv("TRAINDECK_SOCKET")
    record = Record()
    trainer = trainer_for(max_steps=4, callbacks=[record])
    trainer.fit(Tempered(lr=0.1), make_loader(), ckpt_path=path)
    assert trainer._controller.channel is None
    assert record.start_step == 2
    assert record.start_lr == 0.03
    assert record.start_tunables == {"temperature": 0.25}


def _stopped_run_with_a_checkpoint(supervisor: StubSupervisor, trainer_for: Callable[..., Any], step: int,
                                   **kwargs: Any) -> None:
    commands = Commands(supervisor, step, ("stop", None))
    supervisor.fit(trainer_for(max_steps=20, callbacks=[commands], **kwargs), TinyClassifier(), make_loader())
    assert supervisor.applied(commands.ids[0])["ok"] is True


def test_resume_env_continues_from_the_runs_last_checkpoint(supervisor, trainer_for, monkeypatch, traindeck_log):
    _stopped_run_with_a_checkpoint(supervisor, trainer_for, 3, enable_checkpointing=True)
    monkeypatch.delenv("TRAINDECK_SOCKET")
    monkeypatch.setenv("TRAINDECK_RESUME", "1")
    record = Record()
    trainer = trainer_for(max_steps=6, callbacks=[record], enable_checkpointing=True)
    trainer.fit(TinyClassifier(), make_loader())
    assert record.start_step == 3
    assert [step for step, _ in record.ends] == [4, 5, 6]
    assert any("resuming this run from its last valid checkpoint" in r.getMessage() for r in traindeck_log.records)


def test_resume_env_without_a_checkpoint_starts_over_and_says_so(trainer_for, monkeypatch, traindeck_log):
    monkeypatch.setenv("TRAINDECK_RESUME", "1")
    record = Record()
    trainer = trainer_for(max_steps=3, callbacks=[record], enable_checkpointing=True)
    trainer.fit(TinyClassifier(), make_loader())
    assert record.start_step == 0
    assert [step for step, _ in record.ends] == [1, 2, 3]
    infos = [r.getMessage() for r in traindeck_log.records if r.levelname == "INFO"]
    assert "resume asked for, but this run has no valid checkpoint: starting over" in infos


def test_without_resume_env_an_existing_checkpoint_is_not_used(supervisor, trainer_for, monkeypatch):
    _stopped_run_with_a_checkpoint(supervisor, trainer_for, 3, enable_checkpointing=True)
    monkeypatch.delenv("TRAINDECK_SOCKET")
    record = Record()
    trainer_for(max_steps=2, callbacks=[record], enable_checkpointing=True).fit(TinyClassifier(), make_loader())
    assert record.start_step == 0


def test_resume_env_finds_a_command_checkpoint_when_checkpointing_is_off(supervisor, trainer_for, monkeypatch,
                                                                         tmp_path):
    _stopped_run_with_a_checkpoint(supervisor, trainer_for, 3)
    assert _command_checkpoints(tmp_path) == ["step=3-command.ckpt"]
    monkeypatch.delenv("TRAINDECK_SOCKET")
    monkeypatch.setenv("TRAINDECK_RESUME", "1")
    record = Record()
    trainer_for(max_steps=6, callbacks=[record]).fit(TinyClassifier(), make_loader())
    assert record.start_step == 3
