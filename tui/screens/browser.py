"""The run browser: live and finished runs, and sweeps; open one, or compare the curves of several on one chart."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from engine._sweep._summary import SUMMARY_FILE, list_sweeps, read_summary
from engine.history import MetricHistory
from engine.runs import RunInfo, list_runs
from tui.cli_runs import age
from tui.model import chart_groups, json_lines
from tui.widgets.chart import MetricChart
from tui.widgets.sweep import format_value, trial_counts

__all__ = ["BrowserScreen", "CompareScreen", "best_value"]


def _metric_lines(run_dir: Path) -> Iterator[dict[str, Any]]:
    return (r for r in json_lines(run_dir / "metrics.jsonl") if isinstance(r.get("metrics"), dict))


def best_value(run_dir: Path) -> tuple[str, float] | None:
    """The best validation loss (or, failing that, the lowest loss) the run logged."""
    best: dict[str, float] = {}
    for record in _metric_lines(run_dir):
        for name, value in record["metrics"].items():
            if "loss" in name and isinstance(value, (int, float)):
                best[name] = min(best.get(name, float("inf")), float(value))
    if not best:
        return None
    name = next((n for n in best if n.startswith(("val", "valid"))), min(best))
    return name, best[name]


def sweep_cells(summary: dict[str, Any] | None, now: datetime) -> tuple[str, str, str, str]:
    """A sweep's state, trials done/total, best objective and age, for its row among the runs."""
    if summary is None:
        return "sweep ?", "–", "–", "-"
    best = summary.get("best") or {}
    started = [t["started"] for t in summary.get("trials") or [] if isinstance(t, dict) and t.get("started")]
    try:
        created = datetime.fromisoformat(min(started).replace("Z", "+00:00")) if started else None
    except (TypeError, ValueError):
        created = None
    return (f"sweep {summary.get('state', '?')}", f"{trial_counts(summary)['done']}/{summary.get('n_trials', '?')}",
            f"{summary.get('metric')} {format_value(best.get('value'), 4)}" if best else "–", age(created, now))


class BrowserScreen(Screen[None]):
    """Every sweep and every run under the root (and live ones elsewhere), newest first; a sweep's trials
    are runs named ``<sweep>/trial-<n>``."""

    BINDINGS = [Binding("enter", "open", "Open"), Binding("space", "mark", "Mark"),
                Binding("v", "compare", "Compare marked"), Binding("w", "sweep", "Sweep"),
                Binding("f5", "reload", "Reload"), Binding("escape", "back", "Back", show=False)]
    DEFAULT_CSS = "BrowserScreen DataTable { height: 1fr; } BrowserScreen #hint { height: 1; padding: 0 1; }"

    def __init__(self, root_dir: Path) -> None:
        super().__init__()
        self.root_dir = Path(root_dir)
        self.runs: list[RunInfo] = []
        self.sweeps: dict[str, Path] = {}
        """Sweep directories by their row key ("sweep:" + path: a sweep directory may look like a run too)."""
        self.marked: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Label(f"runs under {self.root_dir}/ — enter: open, space: mark, v: compare marked, w: sweep of a trial",
                    id="hint")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("mark", " "), ("name", "name"), ("state", "state"), ("step", "step"),
                           ("best", "best"), ("age", "age")):
            table.add_column(label, key=key)
        self.action_reload()
        self.set_interval(2.0, self.action_reload)

    def action_reload(self) -> None:
        table = self.query_one(DataTable)
        self.runs = list_runs(self.root_dir)
        self.sweeps = {f"sweep:{path}": path for path in list_sweeps(self.root_dir)}
        known = {str(row.value) for row in table.rows}
        now = datetime.fromtimestamp(self.app.clock(), timezone.utc)
        for key, path in self.sweeps.items():
            cells = (" ", f"{path.name}/", *sweep_cells(read_summary(path), now))
            if key in known:
                for column, value in zip(("mark", "name", "state", "step", "best", "age"), cells):
                    table.update_cell(key, column, value)
            else:
                table.add_row(*cells, key=key)
        for run in self.runs:
            key = str(run.run_dir)
            cells = ("*" if key in self.marked else " ", run.name, run.state.upper() if run.live else run.state,
                     "–" if run.step is None else str(run.step), None, age(run.created, now))
            if key in known:
                for column, value in zip(("mark", "name", "state", "step", "age"), cells[:4] + cells[5:]):
                    table.update_cell(key, column, value)
            else:
                table.add_row(*cells[:4], "…", cells[5], key=key)
                self._fill_best(key)

    @work(thread=True, group="best")
    def _fill_best(self, key: str) -> None:
        found = best_value(Path(key))
        text = f"{found[0]} {found[1]:.4g}" if found else "–"
        self.app.call_from_thread(self.query_one(DataTable).update_cell, key, "best", text)

    def _selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _selected(self) -> RunInfo | None:
        key = self._selected_key()
        return next((r for r in self.runs if str(r.run_dir) == key), None)

    def _selected_sweep(self) -> Path | None:
        """The selected sweep row's directory, or the sweep of the selected trial run."""
        key = self._selected_key()
        if key in self.sweeps:
            return self.sweeps[key]
        run = self._selected()
        if run is not None and "/" in run.name and (run.run_dir.parent / SUMMARY_FILE).is_file():
            return run.run_dir.parent
        return None

    def action_open(self) -> None:
        from tui.screens.run import RunScreen

        if self._selected_key() in self.sweeps:
            self.action_sweep()
            return
        run = self._selected()
        if run is not None:
            self.app.push_screen(RunScreen.for_run(run))

    def action_sweep(self) -> None:
        from tui.screens.sweep import SweepScreen

        sweep_dir = self._selected_sweep()
        if sweep_dir is None:
            self.notify("not a sweep or one of its trials: w opens the sweep of a trial row", severity="warning")
            return
        self.app.push_screen(SweepScreen(sweep_dir))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_mark(self) -> None:
        run = self._selected()
        if run is None:
            return
        key = str(run.run_dir)
        self.marked.symmetric_difference_update({key})
        self.query_one(DataTable).update_cell(key, "mark", "*" if key in self.marked else " ")

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two or more runs with space first", severity="warning")
            return
        self.app.push_screen(CompareScreen([Path(k) for k in sorted(self.marked)]))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()


class CompareScreen(Screen[None]):
    """The same metric of several runs on one chart; m / M switch the metric."""

    BINDINGS = [Binding("m", "next_metric", "Metric"), Binding("M", "previous_metric", show=False),
                Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs
        self.history = MetricHistory(max_metrics=5000)
        self.metrics: list[str] = []
        self.index = 0

    def compose(self) -> ComposeResult:
        yield MetricChart(self.history, [], id="compare")
        yield Footer()

    def on_mount(self) -> None:
        seen: dict[str, None] = {}
        for run_dir in self.run_dirs:
            for record in _metric_lines(run_dir):
                for name, value in record["metrics"].items():
                    try:
                        number = float(value)
                    except (TypeError, ValueError):
                        continue
                    self.history.add(f"{run_dir.name}: {name}", record["step"], record.get("time", 0.0), number)
                    seen.setdefault(name, None)
        self.metrics = [name for group in chart_groups(seen) for name in group[1]]
        self._draw()

    def _draw(self) -> None:
        chart = self.query_one(MetricChart)
        metric = self.metrics[self.index % len(self.metrics)] if self.metrics else None
        chart.names = tuple(f"{d.name}: {metric}" for d in self.run_dirs) if metric else ()
        chart.refresh_data()

    def action_next_metric(self) -> None:
        self.index += 1
        self._draw()

    def action_previous_metric(self) -> None:
        self.index -= 1
        self._draw()
