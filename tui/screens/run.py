"""The run dashboard: header, metric chart and table, system and ranks, logs and events; and its keys."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from engine.client import AsyncClient, ConnectError
from engine.runs import RunInfo, read_run_file
from tui.model import RunModel, chart_groups
from tui.widgets.chart import MetricChart
from tui.widgets.events import EventsList, describe_event
from tui.widgets.header import RunHeader
from tui.widgets.logs import LogsPane
from tui.widgets.system import RankTable, SystemPanel

__all__ = ["RunScreen"]

WINDOWS = (None, 1000, 100)
SMOOTHING = (0.0, 0.6, 0.9)
COMPACT_WIDTH = 110
MAX_PINNED = 3
PANE_ACTIONS = frozenset({"next_metric", "previous_metric", "smoothing", "log_scale", "window", "pin_chart",
                          "unpin_chart", "search", "search_next", "search_previous"})
PANES_DELAY_S = 0.05
"""The panes are mounted this long after the header: long enough for its frame to reach the terminal
first (after-refresh callbacks run before the frame is written)."""


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else ("–" if value is None else str(value))


class RunScreen(Screen[None]):
    """One run, live (through its supervisor's socket) or from its files."""

    DEFAULT_CSS = """
    RunScreen { layout: vertical; }
    #body { height: 1fr; }
    #left { width: 1fr; }
    #right { width: 50; }
    #charts { height: 1fr; }
    #charts MetricChart { height: 1fr; min-height: 5; }
    #metrics { height: auto; max-height: 8; }
    #bottom { height: 45%; min-height: 7; }
    RunScreen.-compact #right { display: none; }
    RunScreen.-compact #metrics { display: none; }
    RunScreen.-compact #system-tab { display: block; }
    """

    BINDINGS = [
        Binding("p", "pause_resume", "Pause/Resume"), Binding("c", "checkpoint", "Checkpoint"),
        Binding("s", "stop", "Stop"), Binding("k", "kill", "Kill"), Binding("l", "set_lr", "Set LR"),
        Binding("r", "resume_run", "Resume run"), Binding("slash", "search", "Search"),
        Binding("n", "search_next", "Next match", show=False), Binding("N", "search_previous", "Previous", show=False),
        Binding("m", "next_metric", "Metric"), Binding("M", "previous_metric", show=False),
        Binding("g", "smoothing", "Smooth", show=False), Binding("o", "log_scale", "Log scale", show=False),
        Binding("w", "window", "Window", show=False), Binding("plus", "pin_chart", "Pin chart", show=False),
        Binding("minus", "unpin_chart", "Unpin chart", show=False), Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self, run_dir: Path, socket: str | None) -> None:
        super().__init__()
        self.run_dir, self.socket = Path(run_dir), socket
        self.model = RunModel(self.run_dir) if socket else RunModel.from_files(self.run_dir)
        self.client: AsyncClient | None = None
        self._dirty: set[str] = {"state", "metrics", "telemetry", "logs", "events"}
        self._metric_index = 0
        self._window = 0
        self._smoothing = 0
        self._events_shown = 0
        self._search: str | None = None
        self._chart_drawn = 0.0
        self._built = False
        self._pinned: list[tuple[str, ...]] = []
        """Metric groups kept on charts of their own above the main one (``+`` adds, ``-`` removes)."""

    @classmethod
    def for_run(cls, run: RunInfo) -> RunScreen:
        """The dashboard of ``run`` as the run browser opens it: live through its socket, else from its files."""
        return cls(run.run_dir, run.socket if run.live else None)

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield Footer()

    def on_mount(self) -> None:
        model = self.model
        self.query_one("#header", RunHeader).show(model.name, model.status, model.live, model.progress())
        self._adapt(self.app.size.width)
        self.set_timer(PANES_DELAY_S, self._build)

    async def _build(self) -> None:
        """The panes, mounted once the header is on screen: laying out the whole dashboard takes Textual
        about half a second, and the header (state, step, progress) is what a user looks for first."""
        await self.mount_compose(self._panes(), before=self.query_one(Footer))
        table = self.query_one("#metrics", DataTable)
        table.add_column("metric", key="metric")
        for column in ("step", "last", "min", "max", "best"):
            table.add_column(column, key=column)
        self._built = True
        self.refresh_bindings()
        self.focus_next()
        self.set_interval(self.app.frame_interval, self._redraw)
        if self.socket:
            self._follow()
        self._redraw()
        failure = self.model.state.get("failure") or {}
        if failure.get("rank") is not None:
            self.call_after_refresh(self._show_failure, failure["rank"])

    def _panes(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="left"):
                with Vertical(id="charts"):
                    yield MetricChart(self.model.history, [], id="chart")
                yield DataTable(id="metrics", cursor_type="row", zebra_stripes=True)
            with Vertical(id="right"):
                yield SystemPanel(id="system")
                yield RankTable(id="ranks")
        with TabbedContent(id="bottom"):
            with TabPane("Logs", id="logs-tab"):
                yield LogsPane(self.run_dir / "logs", id="logs")
            with TabPane("Events", id="events-tab"):
                yield EventsList(id="events")
            with TabPane("System", id="system-tab"):
                yield SystemPanel(id="system-compact")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The keys that act on the panes wait for them (a fraction of a second after the first frame)."""
        return self._built or action not in PANE_ACTIONS

    def _show_failure(self, rank: int) -> None:
        """A failed rank's traceback, without hunting for it."""
        self.query_one(TabbedContent).active = "logs-tab"
        self.query_one("#logs", LogsPane).show_failure(rank)

    def on_resize(self, event: Any) -> None:
        self._adapt(event.size.width)

    def _adapt(self, width: int) -> None:
        self.set_class(width < COMPACT_WIDTH, "-compact")

    # -- live data -------------------------------------------------------------------------

    @work(exclusive=True, group="follow")
    async def _follow(self) -> None:
        """Attach, then fold every live message into the model until the supervisor says goodbye."""
        try:
            self.client = await self.app.connect(self.socket, self.model)
        except ConnectError as exc:
            self.notify(f"could not attach: {exc}; showing the run's files", severity="warning")
            self.model = RunModel.from_files(self.run_dir)
            self._dirty.update(("state", "metrics", "events"))
            return
        self._dirty.update(("state", "metrics", "telemetry", "logs", "events"))
        try:
            while True:
                message = await self.client.recv(timeout=5.0)
                if message is None:
                    continue
                changed = self.model.apply(message)
                if changed:
                    self._dirty.add(changed)
                if message.get("type") == "event":
                    self._toast(message["event"])
                if message.get("type") == "bye":
                    break
        except (ConnectError, asyncio.CancelledError):
            pass
        finally:
            self.model.connected = False
            self._dirty.add("state")
            if self.client is not None:
                await self.client.close()
                self.client = None

    def _toast(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("command", "checkpoint_failed", "restarted", "preempted", "failed", "finished", "stopped",
                    "killed"):
            bad = kind in ("failed", "killed", "checkpoint_failed")
            self.notify(describe_event(event), severity="error" if bad else "information",
                        timeout=10 if bad else 4)
        if kind == "failed" and (event.get("failure") or {}).get("rank") is not None:
            self._show_failure(event["failure"]["rank"])

    def _redraw(self) -> None:
        dirty, self._dirty = self._dirty, set()
        model = self.model
        if "state" in dirty or "metrics" in dirty:
            self.query_one("#header", RunHeader).show(model.name, model.status, model.live, model.progress())
        if "metrics" in dirty:
            now = time.monotonic()
            if now - self._chart_drawn >= self.app.chart_interval:
                self._chart_drawn = now
                self._draw_chart()
                self._draw_table()
            else:
                self._dirty.add("metrics")
        if "telemetry" in dirty:
            for panel in self.query(SystemPanel):
                panel.update_sample(model.telemetry, model.state)
            self.query_one("#ranks", RankTable).update_sample(model.telemetry, model.state)
        if "logs" in dirty:
            self.query_one("#logs", LogsPane).poll()
        if "events" in dirty:
            events = list(model.events)
            self.query_one("#events", EventsList).add_events(events[self._events_shown:])
            self._events_shown = len(events)

    def _groups(self) -> list[tuple[str, list[str]]]:
        return chart_groups(self.model.history.names())

    def _draw_chart(self) -> None:
        """The main chart (the metric group `m` chose) and the pinned ones, with the same window and smoothing."""
        self.query_one("#chart", MetricChart).names = self._current_group()
        for chart in self.query(MetricChart):
            chart.history = self.model.history
            chart.window = WINDOWS[self._window]
            chart.smoothing = SMOOTHING[self._smoothing]
            chart.refresh_data()

    def _current_group(self) -> tuple[str, ...]:
        groups = self._groups()
        return tuple(groups[self._metric_index % len(groups)][1]) if groups else ()

    def _draw_table(self) -> None:
        """Update only the cells that changed (a cleared and refilled table is redrawn whole)."""
        table = self.query_one("#metrics", DataTable)
        columns = ("step", "last", "min", "max", "best")
        for row in self.model.metric_rows():
            cells = [_fmt(row[key]) for key in columns]
            if row["name"] not in table.rows:
                table.add_row(row["name"], *cells, key=row["name"])
                continue
            for column, value in zip(columns, cells):
                if table.get_cell(row["name"], column) != value:
                    table.update_cell(row["name"], column, value)

    # -- keys ------------------------------------------------------------------------------

    def _command(self, action: str, **args: Any) -> None:
        self.run_worker(self.app.send_command(self.client, action, **args), group="commands")

    def action_pause_resume(self) -> None:
        self._command("resume" if self.model.status == "paused" else "pause")

    def action_checkpoint(self) -> None:
        self._command("checkpoint")

    def action_stop(self) -> None:
        from tui.screens.dialogs import StopDialog

        def chosen(args: dict[str, Any] | None) -> None:
            if args is not None:
                self._command("stop", **args)

        self.app.push_screen(StopDialog(), chosen)

    def action_kill(self) -> None:
        from tui.screens.dialogs import ConfirmDialog

        def chosen(yes: bool | None) -> None:
            if yes:
                self._command("kill")

        self.app.push_screen(ConfirmDialog("Kill every process of the job? (SIGTERM, then SIGKILL after 5 s)",
                                           yes="Kill"), chosen)

    def action_set_lr(self) -> None:
        from tui.screens.dialogs import SetValueDialog

        current = next((row["last"] for row in self.model.metric_rows() if row["name"].split("/")[-1]
                        in ("lr", "lr-SGD", "learning_rate") or row["name"].startswith("lr")), None)

        def chosen(value: float | None) -> None:
            if value is not None:
                self._command("set", key="lr", value=value)

        self.app.push_screen(SetValueDialog("learning rate", current), chosen)

    def action_resume_run(self) -> None:
        if self.model.live:
            self.notify("the run is live: p resumes a paused run", severity="warning")
            return
        self.run_worker(self._resume_run(), group="resume")

    async def _resume_run(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui.cli", "resume",
            str(self.run_dir), "--detach", "--root-dir", str(self.run_dir.parent),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode != 0:
            self.notify(err.decode(errors="replace").strip().splitlines()[-1], severity="error")
            return
        self.socket = (read_run_file(self.run_dir) or {}).get("socket")
        self.model = RunModel(self.run_dir)
        self._events_shown = 0
        for events in self.query(EventsList):
            events.clear()
        self._follow()

    def action_search(self) -> None:
        from tui.screens.dialogs import SearchDialog

        def chosen(pattern: str | None) -> None:
            if pattern:
                self._search = pattern
                self.query_one(TabbedContent).active = "logs-tab"
                if not self._log_search(pattern, forward=True):
                    self.notify(f"not found: {pattern}", severity="warning")

        self.app.push_screen(SearchDialog(), chosen)

    def _log_search(self, pattern: str, forward: bool) -> bool:
        view = self.query_one("#logs", LogsPane).active_view
        return view is not None and view.search(pattern, forward=forward)

    def action_search_next(self) -> None:
        if self._search:
            self._log_search(self._search, forward=True)

    def action_search_previous(self) -> None:
        if self._search:
            self._log_search(self._search, forward=False)

    def action_next_metric(self) -> None:
        self._metric_index += 1
        self._draw_chart()

    def action_previous_metric(self) -> None:
        self._metric_index -= 1
        self._draw_chart()

    def action_smoothing(self) -> None:
        self._smoothing = (self._smoothing + 1) % len(SMOOTHING)
        self._draw_chart()

    def action_log_scale(self) -> None:
        log_scale = not self.query_one("#chart", MetricChart).log_scale
        for chart in self.query(MetricChart):
            chart.log_scale = log_scale
        self._draw_chart()

    def action_pin_chart(self) -> None:
        """Keep the main chart's metrics on a chart of their own, so `m` can show others below it."""
        names = self._current_group()
        if not names or names in self._pinned:
            return
        if len(self._pinned) >= MAX_PINNED:
            self.notify(f"at most {MAX_PINNED} pinned charts; `-` removes the last", severity="warning")
            return
        self._pinned.append(names)
        main = self.query_one("#chart", MetricChart)
        self.query_one("#charts").mount(MetricChart(self.model.history, names, log_scale=main.log_scale,
                                                    classes="pinned"), before=main)
        self.action_next_metric()

    def action_unpin_chart(self) -> None:
        if self._pinned:
            self._pinned.pop()
            self.query(".pinned").last().remove()

    def action_window(self) -> None:
        self._window = (self._window + 1) % len(WINDOWS)
        self._draw_chart()

    def action_back(self) -> None:
        """Back to the screen that opened this run (the browser, a sweep); nothing when the app opened on it."""
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_quit_dialog(self) -> None:
        from tui.screens.dialogs import QuitDialog

        if not self.model.live:
            self.app.exit(self.model.status)
            return

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                self.app.exit("detached")
            elif choice == "stop":
                self.run_worker(self._stop_and_exit(), group="commands")

        self.app.push_screen(QuitDialog(), chosen)

    async def _stop_and_exit(self) -> None:
        reply = await self.app.send_command(self.client, "stop", checkpoint=True)
        if reply.get("ok"):
            self.app.exit("stopped")
