"""A sweep's header (state, objective, progress, best trial) and the chart of its objective over trials.

Both draw a ``sweep.json`` summary (engine/_sweep/_summary.py) that the sweep screen pushes in
with ``show``; neither reads files nor keeps a timer.
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.widget import Widget

from engine._sweep._summary import best_trial
from engine.history import MetricHistory
from tui.widgets.chart import MetricChart, compact
from tui.widgets.header import badge_for

__all__ = ["BEST_LINE", "ObjectiveChart", "SweepHeader", "format_params", "format_value", "objective_history",
           "trial_counts"]

BEST_LINE = "best so far"
_DONE = ("complete", "pruned", "failed")


def format_value(value: Any, digits: int = 3) -> str:
    """A parameter or objective value in few characters: 3.2e-04, 0.01, 64, adam; "–" when missing."""
    if value is None:
        return "–"
    return compact(value, digits) if isinstance(value, float) else str(value)


def format_params(params: dict[str, Any]) -> str:
    """``lr=3.2e-04 hidden=64 opt=adam``."""
    return " ".join(f"{name}={format_value(value)}" for name, value in params.items())


def trial_counts(summary: dict[str, Any]) -> dict[str, int]:
    """How many trials are in each state, plus ``done`` (complete, pruned or failed: they count toward n_trials)."""
    counts: dict[str, int] = {}
    for trial in summary.get("trials") or []:
        if isinstance(trial, dict):
            counts[str(trial.get("state"))] = counts.get(str(trial.get("state")), 0) + 1
    counts["done"] = sum(counts.get(state, 0) for state in _DONE)
    return counts


def objective_history(summary: dict[str, Any]) -> MetricHistory:
    """The objective of each complete trial at step = trial number, and the best so far as a second series."""
    metric, maximize = summary.get("metric") or "objective", summary.get("direction") == "maximize"
    history, best = MetricHistory(), None
    complete = [t for t in summary.get("trials") or [] if isinstance(t, dict) and t.get("state") == "complete"
                and isinstance(t.get("value"), (int, float)) and isinstance(t.get("number"), int)]
    for trial in sorted(complete, key=lambda t: t["number"]):
        value = float(trial["value"])
        if math.isfinite(value):
            best = value if best is None else (max if maximize else min)(best, value)
        history.add(metric, trial["number"], 0.0, value)
        if best is not None:
            history.add(BEST_LINE, trial["number"], 0.0, best)
    return history


class SweepHeader(Widget):
    """Two or three lines: state badge, name, objective and progress; the best trial; the driver's error."""

    DEFAULT_CSS = """
    SweepHeader { height: auto; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._text = Text("reading sweep.json…")

    def show(self, summary: dict[str, Any] | None, where: str) -> None:
        """Draw ``summary`` (None: there is no readable sweep.json in ``where``)."""
        if summary is None:
            self._text = Text(f"no readable sweep.json in {where}", "bold")
            self.refresh(layout=True)
            return
        label, style = badge_for(str(summary.get("state") or "unknown"), live=True)
        counts = trial_counts(summary)
        arrow = "↑" if summary.get("direction") == "maximize" else "↓"
        total = summary.get("n_trials")
        title = Text.assemble((f" {label} ", style), "  ", (str(summary.get("name") or where), "bold"),
                              f"  {summary.get('metric') or 'objective'} {arrow}",
                              f"  {counts['done']}/{total if total is not None else '?'} done",
                              f" · {counts.get('running', 0)} running",
                              *(f" · {counts[state]} {state}" for state in ("pruned", "failed") if counts.get(state)))
        best = best_trial(summary)
        if best is None:
            detail = Text("best –  no complete trial yet", "dim")
        else:
            detail = Text.assemble(("★ best ", "bold"), (f"#{best.get('number')} ", "bold"),
                                   (format_value(best.get("value"), 4), "bold"),
                                   f"  {format_params(best.get('params') or {})}")
        lines = [title, detail]
        if summary.get("error"):
            lines.append(Text(f"error: {summary['error']}", "bold red"))
        self._text = Text("\n").join(lines)
        self.refresh(layout=True)

    def render(self) -> Text:
        return self._text


class ObjectiveChart(MetricChart):
    """The objective of every complete trial (x: trial number) and the best so far, as a `MetricChart`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(MetricHistory(), [], **kwargs)

    def show(self, summary: dict[str, Any]) -> None:
        """Redraw from ``summary``'s trials."""
        self.history = objective_history(summary)
        self.names = (summary.get("metric") or "objective", BEST_LINE)
        self.refresh_data()
