"""The run's header line: name, a state badge, epoch and step with a progress bar, it/s, elapsed, ETA."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

__all__ = ["RunHeader", "BADGES", "badge_for", "format_duration"]

BADGES = {
    "starting": ("STARTING", "black on yellow"), "running": ("RUNNING", "black on green"),
    "paused": ("PAUSED", "black on yellow"), "checkpointing": ("CHECKPOINTING", "black on cyan"),
    "stopping": ("STOPPING", "black on yellow"), "restarting": ("RESTARTING", "black on magenta"),
    "finished": ("FINISHED", "black on blue"), "failed": ("FAILED", "white on red"),
    "stopped": ("STOPPED", "black on white"), "killed": ("KILLED", "white on red"), "lost": ("LOST", "white on red"),
}


def badge_for(state: str, live: bool) -> tuple[str, str]:
    """The badge text and style; a view of a run without a live connection reads DETACHED-VIEW."""
    if not live and state not in ("finished", "failed", "stopped", "killed", "lost"):
        return "DETACHED-VIEW", "black on white"
    return BADGES.get(state, (state.upper(), "reverse"))


def format_duration(seconds: float | None) -> str:
    """Seconds as m:ss (h:mm:ss past an hour); "–" when unknown."""
    if seconds is None or seconds < 0:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RunHeader(Widget):
    """One or two lines at the top of the run screen; redrawn when the model's state changes."""

    DEFAULT_CSS = """
    RunHeader { height: 2; padding: 0 1; background: $panel; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = Text("connecting…")

    def show(self, name: str, state: str, live: bool, progress: dict[str, Any]) -> None:
        label, style = badge_for(state, live)
        line = Text.assemble((f" {label} ", style), "  ", (name, "bold"))
        step, epoch, max_steps = progress.get("step"), progress.get("epoch"), progress.get("max_steps")
        detail = Text()
        if epoch is not None:
            detail.append(f"epoch {epoch}  ")
        if step is not None:
            detail.append(f"step {step}" + (f"/{max_steps}" if max_steps else "") + "  ")
        fraction = progress.get("fraction")
        width = max(10, min(40, self.size.width - 60)) if self.size.width else 20
        if fraction is not None:
            done = int(round(fraction * width))
            detail.append("█" * done + "░" * (width - done), "green")
            detail.append(f" {fraction * 100:3.0f}%  ")
        rate = progress.get("rate")
        detail.append(f"{rate:.1f} it/s  " if rate else "– it/s  ")
        detail.append(f"elapsed {format_duration(progress.get('elapsed'))}  ETA {format_duration(progress.get('eta'))}")
        self._text = Text("\n").join([line, detail])
        self.refresh()

    def render(self) -> Text:
        return self._text
