"""The sweep view: every trial of a hyperparameter sweep ranked by its objective, the objective over trials,
and the run keys (pause, stop, prune, open) applied to the selected trial.

Everything comes from ``<sweep>/sweep.json``, which the driver rewrites on every change; the view
re-reads it once a second when its mtime moved. A trial is a normal run: its commands go to its
own supervisor, and enter opens its dashboard.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from engine._sweep._summary import SUMMARY_FILE, best_trial, ranked_trials, read_summary
from engine.client import AsyncClient, ConnectError
from engine.runs import RunInfo, load_run
from tui.widgets.header import format_duration
from tui.widgets.sweep import ObjectiveChart, SweepHeader, format_value, trial_counts

__all__ = ["SweepScreen", "param_names", "trial_cells", "trial_dir"]

COMPACT_HEIGHT = 30
POLL_S = 1.0
STATE_STYLES = {"running": "green", "pruned": "dim", "failed": "red", "interrupted": "yellow", "waiting": "dim"}
MONO_STATE_STYLES = {"pruned": "dim", "failed": "bold", "interrupted": "italic", "waiting": "dim"}
"""Under NO_COLOR (red turns a dark grey that hides on a dark background)."""

Cell = tuple[str, str]
"""A table cell as its text and its style, compared to tell whether it changed."""
Command = tuple[str, str, dict[str, Any]]
"""What the user asked for (shown in the notification), the protocol action, its args."""
Decide = Callable[[RunInfo], Awaitable["Command | None"]]

SWEEP_HELP = """\
# Sweep view

| key | action |
|---|---|
| `enter` | open the selected trial's dashboard (`escape` comes back) |
| `p` | pause / resume the selected trial |
| `s` | stop the selected trial (asks) |
| `x` | prune the selected trial: stop it without a checkpoint; the sweep marks it pruned |
| `b` | the run browser |
| `ctrl+p` | command palette (every action) |
| `q` | quit (the sweep goes on) |
"""


def param_names(summary: dict[str, Any]) -> list[str]:
    """The search space's parameters in its order, then any other parameter a trial has."""
    names = dict.fromkeys(summary.get("space") or {})
    for trial in summary.get("trials") or []:
        names.update(dict.fromkeys((trial.get("params") or {}) if isinstance(trial, dict) else {}))
    return list(names)


def trial_dir(trial: dict[str, Any], sweep_dir: Path) -> Path:
    """Where the trial's run lives: its ``run_dir``, else ``<sweep>/trial-<n>``."""
    return Path(trial.get("run_dir") or sweep_dir / f"trial-{trial.get('number')}")


def _elapsed(trial: dict[str, Any], now: float) -> float | None:
    if isinstance(trial.get("duration_s"), (int, float)):
        return float(trial["duration_s"])
    try:
        started = datetime.fromisoformat(str(trial.get("started")).replace("Z", "+00:00"))
    except ValueError:
        return None
    return now - started.timestamp() if trial.get("state") == "running" else None


def _objective(trial: dict[str, Any]) -> Cell:
    """The objective of a complete trial; otherwise the last intermediate value, dim, with its step."""
    if trial.get("state") == "complete":
        return format_value(trial.get("value"), 4), ""
    last = trial.get("last")
    if isinstance(last, dict) and last.get("value") is not None:
        return f"{format_value(last['value'], 4)} @{last.get('step', '?')}", "dim"
    return "–", "dim"


def trial_cells(trial: dict[str, Any], params: list[str], best: bool, now: float,
                color: bool = True) -> tuple[Cell, ...]:
    """One table row: number (★ when best), state, each parameter, objective, duration; all bold when best."""
    state = str(trial.get("state") or "?")
    values = trial.get("params") or {}
    state_style = (STATE_STYLES if color else MONO_STATE_STYLES).get(state, "")
    cells = [(f"{'★' if best else ' '} {trial.get('number')}", ""), (state, state_style),
             *((format_value(values.get(name)), "") for name in params), _objective(trial),
             (format_duration(_elapsed(trial, now)), "")]
    return tuple((text, f"bold {style}".strip() if best else style) for text, style in cells)


class SweepScreen(Screen[None]):
    """One sweep, from its ``sweep.json``: header, objective chart, and the trials best first."""

    DEFAULT_CSS = """
    SweepScreen { layout: vertical; }
    SweepScreen #objective { height: 12; min-height: 6; }
    SweepScreen #trials { height: 1fr; }
    SweepScreen #selected { height: 1; padding: 0 1; color: $text-muted; }
    SweepScreen.-compact #objective { display: none; }
    """
    BINDINGS = [Binding("enter", "open", "Open trial", priority=True), Binding("p", "pause_resume", "Pause/Resume"),
                Binding("s", "stop", "Stop"), Binding("x", "prune", "Prune"),
                Binding("escape", "back", "Back", show=False)]
    HELP = SWEEP_HELP

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__()
        self.sweep_dir = Path(sweep_dir)
        self.summary: dict[str, Any] | None = None
        self._mtime: int | None = None
        """sweep.json's mtime when last read."""
        self._params: list[str] | None = None
        self._shown: dict[str, tuple[Cell, ...]] = {}

    def compose(self) -> ComposeResult:
        yield SweepHeader(id="header")
        yield ObjectiveChart(id="objective")
        yield DataTable(id="trials", cursor_type="row", zebra_stripes=True)
        yield Label("", id="selected")
        yield Footer()

    def on_mount(self) -> None:
        self._adapt(self.app.size.height)
        self._show(read_summary(self.sweep_dir), self._stamp())
        self.set_interval(POLL_S, self._poll)

    def on_resize(self, event: Any) -> None:
        self._adapt(event.size.height)

    def _adapt(self, height: int) -> None:
        self.set_class(height < COMPACT_HEIGHT, "-compact")

    # -- reading sweep.json ----------------------------------------------------------------

    def _stamp(self) -> int | None:
        try:
            return (self.sweep_dir / SUMMARY_FILE).stat().st_mtime_ns
        except OSError:
            return None

    def _poll(self) -> None:
        self._read()
        if self.summary is not None and trial_counts(self.summary).get("running"):
            self._fill_table(self.summary)  # the running trials' times move on

    @work(thread=True, exclusive=True, group="sweep-file")
    def _read(self) -> None:
        """Read sweep.json again when its mtime moved."""
        stamp = self._stamp()
        if stamp != self._mtime:
            self.app.call_from_thread(self._show, read_summary(self.sweep_dir), stamp)

    def _show(self, summary: dict[str, Any] | None, stamp: int | None) -> None:
        self.summary, self._mtime = summary, stamp
        self.query_one(SweepHeader).show(summary, str(self.sweep_dir))
        if summary is not None:
            self.query_one(ObjectiveChart).show(summary)
            self._fill_table(summary)

    def _fill_table(self, summary: dict[str, Any]) -> None:
        """Rows best first; only changed cells are rewritten. In a new order a cursor on the top row
        stays on top (the best trial), one the user moved down stays on its trial."""
        table = self.query_one("#trials", DataTable)
        params = param_names(summary)
        if params != self._params:
            table.clear(columns=True)
            table.add_column("#", key="number")
            table.add_column("state", key="state")
            for name in params:
                table.add_column(name, key=f"param:{name}")
            table.add_column(str(summary.get("metric") or "objective"), key="objective")
            table.add_column("time", key="duration")
            self._params, self._shown = params, {}
        best = best_trial(summary)
        now, color = self.app.clock(), not self.app.no_color
        best_number = best.get("number") if best else None
        rows = {str(t.get("number")): trial_cells(t, params, best is not None and t.get("number") == best_number, now,
                                                  color) for t in ranked_trials(summary)}
        if list(rows) != [row.key.value for row in table.ordered_rows]:
            selected = self._selected_key() if table.cursor_row > 0 else None
            table.clear()
            for key, cells in rows.items():
                table.add_row(*(Text(text, style) for text, style in cells), key=key)
            if selected in rows:
                table.move_cursor(row=list(rows).index(selected), animate=False)
        else:
            columns = [column.key for column in table.ordered_columns]
            for key, cells in rows.items():
                for column, cell, old in zip(columns, cells, self._shown.get(key, ())):
                    if cell != old:
                        table.update_cell(key, column, Text(*cell))
        self._shown = rows
        self._describe_selected()

    # -- the selected trial ----------------------------------------------------------------

    def _selected_key(self) -> str | None:
        table = self.query_one("#trials", DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _selected(self) -> dict[str, Any] | None:
        key = self._selected_key()
        trials = (self.summary or {}).get("trials") or []
        return next((t for t in trials if isinstance(t, dict) and str(t.get("number")) == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe_selected()

    def _describe_selected(self) -> None:
        trial = self._selected()
        text = "" if trial is None else f"{trial.get('run') or trial_dir(trial, self.sweep_dir).name}" + (
            f"  error: {trial['error']}" if trial.get("error") else "")
        self.query_one("#selected", Label).update(Text(text, no_wrap=True, overflow="ellipsis"))

    def action_open(self) -> None:
        self._open_trial()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    @work(exclusive=True, group="open-trial")
    async def _open_trial(self) -> None:
        from tui.screens.run import RunScreen

        trial = self._selected()
        if trial is None:
            return
        run_dir = trial_dir(trial, self.sweep_dir)
        if not run_dir.is_dir():
            self.notify(f"trial {trial.get('number')} has no run directory yet ({trial.get('state')})",
                        severity="warning")
            return
        run = await asyncio.to_thread(load_run, run_dir, trial.get("run"))
        self.app.push_screen(RunScreen.for_run(run))

    # -- commands to the selected trial ----------------------------------------------------

    def action_pause_resume(self) -> None:
        self._on_live_trial("pause or resume", self._pause_or_resume)

    def action_stop(self) -> None:
        self._on_live_trial("stop", self._ask_stop)

    def action_prune(self) -> None:
        self._on_live_trial("prune", self._prune)

    async def _pause_or_resume(self, run: RunInfo) -> Command:
        action = "resume" if run.state == "paused" else "pause"
        return action, action, {}

    async def _ask_stop(self, run: RunInfo) -> Command | None:
        from tui.screens.dialogs import StopDialog

        args = await self.app.push_screen_wait(StopDialog())
        return None if args is None else ("stop", "stop", args)

    async def _prune(self, run: RunInfo) -> Command:
        return "prune", "stop", {"checkpoint": False, "reason": "pruned"}

    @work(group="trial-commands")
    async def _on_live_trial(self, what: str, decide: Decide) -> None:
        """Send the command ``decide`` picks to the selected trial's supervisor; say so when it is not live."""
        trial = self._selected()
        if trial is None:
            self.notify("no trial selected", severity="warning")
            return
        label = f"trial {trial.get('number')}"
        run = await asyncio.to_thread(load_run, trial_dir(trial, self.sweep_dir))
        if not run.live or not run.socket:
            self.notify(f"{label} is not live ({run.state}): nothing to {what}", severity="warning")
            return
        command = await decide(run)
        if command is None:
            return
        word, action, args = command
        client = AsyncClient(run.socket, name=self.app.client_name)
        try:
            await client.connect()
        except ConnectError as exc:
            self.notify(f"{label}: {exc}", severity="error")
            return
        try:
            await self.app.send_command(client, action, label=f"{label}: {word}", **args)
        finally:
            await client.close()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
