"""Small modal dialogs: confirmations, the learning-rate dialog, quit (detach or stop), search, help."""

from __future__ import annotations

import math
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Checkbox, Input, Label, Markdown

__all__ = ["ConfirmDialog", "StopDialog", "SetValueDialog", "QuitDialog", "SearchDialog", "HelpScreen"]

DIALOG_CSS = """
ModalScreen { align: center middle; }
ModalScreen > Vertical { width: 60; max-width: 95%; height: auto; border: thick $accent; background: $surface;
                         padding: 1 2; }
ModalScreen Horizontal { height: auto; margin-top: 1; }
ModalScreen Button { margin-right: 2; }
ModalScreen .error { color: $error; height: auto; }
"""


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no; Escape is no."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("y", "dismiss(True)", "Yes", show=False),
                Binding("n", "dismiss(False)", "No", show=False)]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button("Cancel (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class StopDialog(ModalScreen["dict[str, Any] | None"]):
    """Stop the run: with a checkpoint first (the default) or without; Escape cancels."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Stop the run? Every rank stops at the same step.")
            yield Checkbox("save a checkpoint first", value=True, id="checkpoint")
            with Horizontal():
                yield Button("Stop", id="stop", variant="error")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "stop":
            self.dismiss({"checkpoint": self.query_one("#checkpoint", Checkbox).value})
        else:
            self.dismiss(None)


class _PositiveNumber(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            number = float(value)
        except ValueError:
            return self.failure(f"{value!r} is not a number (e.g. 3e-4)")
        if not math.isfinite(number) or number <= 0:
            return self.failure("must be a positive, finite number")
        return self.success()


class SetValueDialog(ModalScreen["float | None"]):
    """Ask for a new value (the learning rate), showing the current one; only a valid number is accepted."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, key: str, current: Any) -> None:
        super().__init__()
        self.key, self.current = key, current

    def compose(self) -> ComposeResult:
        with Vertical():
            shown = f"{self.current:.6g}" if isinstance(self.current, (int, float)) else "unknown"
            yield Label(f"New {self.key} (current: {shown}); every rank applies it at the same step")
            yield Input(placeholder="e.g. 3e-4", validators=[_PositiveNumber()], id="value")
            yield Label("", classes="error", id="why")

    def on_input_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        self.query_one("#why", Label).update("" if result is None or result.is_valid or not event.value
                                             else result.failure_descriptions[0])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.validation_result is not None and not event.validation_result.is_valid:
            self.query_one("#why", Label).update(event.validation_result.failure_descriptions[0])
            return
        self.dismiss(float(event.value))


class QuitDialog(ModalScreen["str | None"]):
    """Leave the cockpit: detach (the job goes on) or stop the job; Escape stays."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss(None)", "Stay"), Binding("d", "dismiss('detach')", "Detach", show=False),
                Binding("s", "dismiss('stop')", "Stop", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Quit the cockpit. The job keeps running if you detach; "
                        "`traindeck attach` brings it back.")
            with Horizontal():
                yield Button("Detach (d)", id="detach", variant="primary")
                yield Button("Stop the job (s)", id="stop", variant="error")
                yield Button("Stay (esc)", id="stay")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "stay" else event.button.id)


class SearchDialog(ModalScreen["str | None"]):
    """The text to find in the logs (then n / N for next / previous)."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Search the log (case-insensitive); n / N: next / previous")
            yield Input(id="pattern")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value or None)


HELP = """\
# Keys

| key | action |
|---|---|
| `p` | pause / resume the job |
| `c` | checkpoint now |
| `s` | stop (asks; checkpoint first by default) |
| `k` | kill (asks) |
| `l` | set the learning rate |
| `r` | resume a stopped or failed run from its last checkpoint |
| `m` | next metric on the main chart; `M` previous |
| `g` | smoothing; `o` log scale; `w` window (all / last 1000 / last 100 steps) |
| `+` / `-` | pin the main chart's metrics on a chart of their own (up to 3) / remove the last pinned chart |
| `tab` / `shift+tab` | move between panes |
| `/` | search the logs; `n` / `N` next / previous |
| `b` | the run browser |
| `ctrl+p` | command palette (every action) |
| `q` | quit: detach (the job goes on) or stop |
| `?` | this help |
"""


class HelpScreen(ModalScreen[None]):
    """Every key, in one place: ``text`` (a screen's own ``HELP``), else the run dashboard's keys."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]

    def __init__(self, text: str | None = None) -> None:
        super().__init__()
        self.text = text or HELP

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Markdown(self.text)
            yield Button("Close (esc)", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)
