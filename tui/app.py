"""The cockpit: a Textual app that attaches to a run's supervisor, draws it, and sends its commands.

It never owns the job: quitting detaches (unless the user chooses stop), a lost terminal
(SIGHUP) detaches, and a finished run is drawn from its files.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from functools import partial
from typing import Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine.client import AsyncClient, ConnectError
from tui.model import RunModel

__all__ = ["TraindeckApp", "over_ssh"]


def _hang_up(signum: int, frame: Any) -> None:
    """The terminal is gone (SSH dropped): leave at once. The job belongs to the supervisor and goes on;
    restoring a terminal that no longer exists can only block."""
    os._exit(0)


def over_ssh() -> bool:
    return bool(os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"))


class TraindeckApp(App[str]):
    """``run_dir`` (and ``socket`` when live) opens that run, ``sweep_dir`` that sweep; none opens the run browser.

    ``clock`` (unix time) dates what the screens show as elapsed; tests pass a fixed one.

    The app's return value says how it ended: "detached", "stopped", "finished" or "quit".
    """

    TITLE = "traindeck"
    BINDINGS = [Binding("q", "quit_dialog", "Quit"), Binding("question_mark", "help", "Help"),
                Binding("b", "browser", "Runs")]

    def __init__(self, run_dir: Path | None = None, socket: str | None = None, root_dir: Path = Path("runs"),
                 client_name: str | None = None, *, sweep_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.run_dir, self.socket, self.root_dir, self.sweep_dir = run_dir, socket, root_dir, sweep_dir
        self.clock = clock
        self.client_name = client_name or f"tui:{os.environ.get('USER', 'user')}:{os.getpid()}"
        self.client: AsyncClient | None = None
        self.slow = over_ssh()
        self.frame_interval = 1.0 if self.slow else 0.5
        self.chart_interval = 3.0 if self.slow else 2.0
        if self.slow:
            self.animation_level = "none"

    def on_mount(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, _hang_up)
        from tui.screens.browser import BrowserScreen
        from tui.screens.run import RunScreen
        from tui.screens.sweep import SweepScreen

        if self.sweep_dir is not None:
            self.push_screen(SweepScreen(self.sweep_dir))
        elif self.run_dir is None:
            self.push_screen(BrowserScreen(self.root_dir))
        else:
            self.push_screen(RunScreen(self.run_dir, self.socket))

    async def connect(self, socket: str, model: RunModel) -> AsyncClient:
        """Attach to a supervisor: hello, subscribe to everything, load the snapshot into ``model``."""
        client = AsyncClient(socket, name=self.client_name)
        await client.connect()
        snapshot = await client.subscribe(["metrics", "telemetry", "logs", "events", "state"])
        model.load_snapshot(snapshot)
        return client

    async def send_command(self, client: AsyncClient | None, action: str, *, label: str | None = None,
                           **args: Any) -> dict[str, Any]:
        """Send a command and show its result (applied at step S, or the error) as a notification
        that names it ``label`` (default: the action)."""
        label = label or action
        if client is None:
            self.notify("not attached to a live run", severity="error")
            return {"ok": False, "error": "not attached"}
        try:
            reply = await client.command(action, timeout=60.0, **args)
        except (ConnectError, TimeoutError) as exc:
            self.notify(f"{label}: {exc}", severity="error")
            return {"ok": False, "error": str(exc)}
        if reply.get("ok"):
            where = f" at step {reply['step']}" if reply.get("step") is not None else ""
            detail = reply.get("detail") or {}
            extra = f": {detail['key']} {detail.get('old')} → {detail.get('new')}" if "key" in detail else (
                f": {Path(detail['path']).name}" if "path" in detail else "")
            self.notify(f"{label} applied{where}{extra}")
        else:
            self.notify(f"{label} refused: {reply.get('error')}", severity="error")
        return reply

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette lists every action of the current screen (with its key) besides Textual's own."""
        yield from super().get_system_commands(screen)
        for binding in [*screen.BINDINGS, *self.BINDINGS]:
            if isinstance(binding, Binding) and binding.description:
                target = screen if binding in screen.BINDINGS else self
                yield SystemCommand(binding.description, f"key: {binding.key}",
                                    partial(self.call_later, target.run_action, binding.action))

    def action_help(self) -> None:
        from tui.screens.dialogs import HelpScreen

        self.push_screen(HelpScreen(self.screen.HELP))

    def action_browser(self) -> None:
        from tui.screens.browser import BrowserScreen

        self.push_screen(BrowserScreen(self.root_dir))

    def action_quit_dialog(self) -> None:
        screen = self.screen
        if hasattr(screen, "action_quit_dialog"):
            screen.action_quit_dialog()
        else:
            self.exit("quit")
