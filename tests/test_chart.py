"""The metric chart: what it draws from a MetricHistory, alone and inside a Textual app."""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Awaitable, Callable

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from engine.history import MetricHistory
from tui.widgets.chart import ChartOptions, MetricChart, compact, render_chart


def history_of(**series: list[tuple[int, float]]) -> MetricHistory:
    history = MetricHistory()
    for name, points in series.items():
        for step, value in points:
            history.add(name, step, float(step), value)
    return history


def curve(steps: range, spike_at: int | None = None) -> list[tuple[int, float]]:
    """A deterministic decaying loss with a little wobble, and optionally one spike."""
    return [(s, 3.0 if s == spike_at else 2.0 * math.exp(-s / 300) + 0.3 + 0.02 * math.sin(s))
            for s in steps]


def plot_rows(lines: list[Text]) -> list[str]:
    """The plot cells of each row, without the y labels and the axis."""
    return [line.plain.split("┤" if "┤" in line.plain else "│", 1)[1] for line in lines[1:-1]]


def y_labels(lines: list[Text]) -> list[str]:
    return [line.plain.split("┤")[0].strip() for line in lines[1:-1] if "┤" in line.plain]


def colours(lines: list[Text]) -> set[str]:
    return {span.style.color.name for line in lines for span in line.spans
            if not isinstance(span.style, str) and span.style.color}


def test_a_spike_among_flat_values_shows_in_the_top_row_at_its_column():
    history = history_of(loss=[(s, 5.0 if s == 600 else 1.0) for s in range(1000)])

    rows = plot_rows(render_chart(history, ["loss"], 60, 10))

    drawn = [c for c, cell in enumerate(rows[0]) if cell != " "]
    assert drawn == [600 * len(rows[0]) // 1000]


def test_y_labels_run_from_the_largest_value_at_the_top_to_the_smallest_at_the_bottom():
    history = history_of(loss=[(s, 0.25 + 3.75 * (s % 10) / 9) for s in range(100)])

    labels = y_labels(render_chart(history, ["loss"], 60, 11))

    assert labels[0] == "4" and labels[-1] == "0.25"
    assert 3 <= len(labels) <= 5


def test_y_labels_get_more_digits_until_they_differ():
    history = history_of(loss=[(0, 2.3011), (1, 2.3019)])

    labels = y_labels(render_chart(history, ["loss"], 40, 5))

    assert len(set(labels)) == len(labels) == 3


def test_two_series_are_both_drawn_in_their_own_colours_and_named_in_the_legend():
    history = history_of(**{"train/loss": curve(range(1000)), "val/loss": curve(range(0, 1000, 100))})

    lines = render_chart(history, ["train/loss", "val/loss"], 80, 12)

    assert "train/loss" in lines[0].plain and "val/loss" in lines[0].plain
    assert {"bright_cyan", "bright_magenta"} <= colours(lines[1:-1])


def test_without_colour_each_series_draws_its_own_glyph():
    history = history_of(**{"train/loss": curve(range(1000)), "val/loss": curve(range(0, 1000, 100))})

    lines = render_chart(history, ["train/loss", "val/loss"], 80, 12, ChartOptions(color=False))

    assert lines[0].plain.startswith(" * train/loss") and "+ val/loss" in lines[0].plain
    assert "*" in "".join(plot_rows(lines)) and "+" in "".join(plot_rows(lines))
    assert colours(lines) == set()


def test_the_legend_shows_each_series_last_value():
    history = history_of(loss=[(0, 2.0), (1, 0.012345)])

    assert "loss 0.01235" in render_chart(history, ["loss"], 40, 6)[0].plain


def test_x_labels_show_the_first_middle_and_last_step():
    history = history_of(loss=curve(range(1001)))

    axis = render_chart(history, ["loss"], 60, 8)[-1].plain

    labels = axis.replace("└", " ").replace("─", " ").split()
    assert labels[0] == "0" and labels[-1] == "1000" and len(labels) == 3


def test_a_window_shows_only_the_last_n_steps():
    history = history_of(loss=curve(range(1000)))

    axis = render_chart(history, ["loss"], 60, 8, ChartOptions(window=100))[-1].plain

    labels = axis.replace("└", " ").replace("─", " ").split()
    assert labels[0] == "900" and labels[-1] == "999"


def test_log_scale_spreads_decades_evenly_and_says_so():
    history = history_of(lr=[(s, 10 ** (-s / 25)) for s in range(101)])

    lines = render_chart(history, ["lr"], 50, 5, ChartOptions(log_scale=True))

    assert y_labels(lines) == ["1", "0.01", "1e-04"]
    assert "log" in lines[0].plain


def test_log_scale_hides_values_at_or_below_zero_and_notes_it():
    history = history_of(x=[(0, 1.0), (1, 0.0), (2, -3.0), (3, 10.0)])

    lines = render_chart(history, ["x"], 40, 6, ChartOptions(log_scale=True))

    assert "≤0 hidden" in lines[0].plain
    assert y_labels(lines)[-1] == "1" and y_labels(lines)[0] == "10"


def test_smoothing_changes_the_line_but_not_the_min_max_stroke():
    history = history_of(loss=curve(range(1000), spike_at=500))
    raw = render_chart(history, ["loss"], 60, 10)
    smooth = render_chart(history, ["loss"], 60, 10, ChartOptions(smoothing=0.95))

    assert plot_rows(raw) != plot_rows(smooth)
    assert plot_rows(raw)[0] == plot_rows(smooth)[0]
    assert y_labels(raw) == y_labels(smooth)
    assert "ema 0.95" in smooth[0].plain


def test_an_empty_history_says_what_the_chart_waits_for():
    lines = render_chart(MetricHistory(), ["train/loss"], 40, 6)

    assert any("waiting for train/loss" in line.plain for line in lines)


def test_a_single_point_is_drawn():
    lines = render_chart(history_of(loss=[(7, 1.5)]), ["loss"], 30, 5)

    assert "".join(plot_rows(lines)).strip() and "7" in lines[-1].plain


def test_constant_values_draw_a_flat_line_in_the_middle():
    lines = render_chart(history_of(loss=[(s, 2.0) for s in range(50)]), ["loss"], 30, 5)

    assert [row.strip() != "" for row in plot_rows(lines)] == [False, True, False]


def test_nan_is_skipped_and_inf_is_a_marker_at_the_edge():
    values = [1.0, math.nan, 2.0, math.inf, 1.5, -math.inf, 1.2]
    lines = render_chart(history_of(x=list(enumerate(values))), ["x"], 30, 6)

    assert "↑" in plot_rows(lines)[0] and "↓" in plot_rows(lines)[-1]


def test_only_nan_says_there_are_no_finite_values():
    lines = render_chart(history_of(x=[(0, math.nan), (1, math.nan)]), ["x"], 30, 6)

    assert any("no finite values" in line.plain for line in lines)


@pytest.mark.parametrize("options", [ChartOptions(), ChartOptions(log_scale=True, color=False, window=5)])
def test_any_size_down_to_nothing_gives_exactly_that_many_cells(options):
    history = history_of(a=curve(range(300), spike_at=100), b=[(0, math.nan), (5, math.inf)])

    for width, height in itertools.product(range(0, 26), range(0, 7)):
        lines = render_chart(history, ["a", "b"], width, height, options)
        assert [line.cell_len for line in lines] == [width] * height


class CountingHistory(MetricHistory):
    """A history that remembers how many columns each query asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.queried: list[int] = []

    def columns(self, name: str, first_step: int, last_step: int, n: int) -> list:
        self.queried.append(n)
        return super().columns(name, first_step, last_step, n)


def test_a_ten_million_step_run_is_drawn_from_as_few_columns_as_a_short_one():
    long_run, short_run = CountingHistory(), CountingHistory()
    for step in itertools.chain(range(0, 10_000_000, 2000), range(10_000_000 - 1000, 10_000_000)):
        long_run.add("loss", step, 0.0, 1.0 + step / 1e7)
    for step in range(100):
        short_run.add("loss", step, 0.0, 1.0 + step / 100)

    long_lines = render_chart(long_run, ["loss"], 80, 20)
    render_chart(short_run, ["loss"], 80, 20)

    assert long_run.queried == short_run.queried and sum(long_run.queried) <= 2 * 80
    assert long_lines[-1].plain.endswith("10M")


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (0.0012, "0.0012"), (1.2e-05, "1.2e-05"), (3400.0, "3.4k"), (12_345_678.0, "12.3M"),
    (-0.5, "-0.5"), (999.0, "999"), (math.inf, "inf"), (math.nan, "nan")])
def test_numbers_are_written_compactly(value, text):
    assert compact(value) == text


def loss_history() -> MetricHistory:
    return history_of(**{"train/loss": curve(range(2000), spike_at=1300),
                         "val/loss": [(s, v + 0.1) for s, v in curve(range(0, 2000, 100))]})


class ChartApp(App[None]):
    """Two charts as the cockpit shows them: losses, and the learning rate on a log scale."""

    CSS = "MetricChart { border: round $primary; }"

    def __init__(self, losses: MetricHistory | None = None) -> None:
        super().__init__()
        self.losses = loss_history() if losses is None else losses
        self.rates = history_of(lr=[(s, 1e-3 * 0.5 ** (s / 400)) for s in range(2000)])

    def compose(self) -> ComposeResult:
        yield MetricChart(self.losses, ["train/loss", "val/loss"], id="loss")
        yield MetricChart(self.rates, ["lr"], log_scale=True, id="lr")


def make_app(losses: MetricHistory | None = None) -> ChartApp:
    return ChartApp(losses)


def drive(app: ChartApp, body: Callable[[ChartApp, Pilot], Awaitable[None]]) -> None:
    """Run ``body`` against ``app`` under Textual's test driver (no pytest-asyncio here)."""
    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await body(app, pilot)

    asyncio.run(main())


def screen_text(app: App) -> str:
    """The screen as the SVG screenshot writes it, spaces made plain again."""
    return app.export_screenshot().replace("&#160;", " ")


def test_the_chart_redraws_when_told_the_data_changed():
    history = MetricHistory()

    async def body(app: ChartApp, pilot: Pilot) -> None:
        chart = app.query_one("#loss", MetricChart)
        assert "waiting for train/loss" in screen_text(app)
        for step, value in curve(range(100)):
            history.add("train/loss", step, 0.0, value)
        chart.refresh_data()
        await pilot.pause()
        assert "waiting" not in screen_text(app) and "train/loss 1.718" in screen_text(app)

    drive(make_app(history), body)


def test_the_chart_draws_glyphs_instead_of_colours_under_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def body(app: ChartApp, pilot: Pilot) -> None:
        chart = app.query_one("#loss", MetricChart)
        assert chart.options().color is False
        assert str(chart.render()).lstrip().startswith("* train/loss")

    drive(make_app(), body)


def test_options_out_of_range_are_brought_into_range():
    async def body(app: ChartApp, pilot: Pilot) -> None:
        chart = app.query_one("#loss", MetricChart)
        chart.smoothing, chart.window = 1.5, 0
        assert (chart.smoothing, chart.window) == (0.999, 1)

    drive(make_app(), body)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_two_charts(snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size)


def test_snapshot_two_charts_without_colour(snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(make_app(), terminal_size=(80, 24))
