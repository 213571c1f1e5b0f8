"""`MetricChart`: metrics of a `MetricHistory` drawn in braille, with axes and a legend.

Each character cell is one column of `MetricHistory.columns`: a stroke from its min to its max
(so a spike always shows) and a line through its last values. Drawing reads only those columns,
so it costs the same at step 100 as at step 10 million. `render_chart` is the drawing itself,
a pure function the widget calls and tests read.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from rich.style import Style, StyleType
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from engine.history import MetricHistory

__all__ = ["ChartOptions", "MetricChart", "compact", "render_chart"]

Column = Optional[Tuple[float, float, float]]
GLYPHS = ("*", "+", "o", "x", "#", "%")
COLORS = ("bright_cyan", "bright_magenta", "bright_yellow", "bright_green", "bright_red",
          "bright_blue")
_DOT = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


@dataclass(frozen=True)
class ChartOptions:
    """How to draw: EMA ``smoothing`` of the last line (0 ≤ s < 1), ``log_scale``, ``window`` (the
    last N steps, None for all), and styles; with ``color`` off, series differ by `GLYPHS`."""

    smoothing: float = 0.0
    log_scale: bool = False
    window: int | None = None
    color: bool = True
    styles: Tuple[StyleType, ...] = COLORS
    axis_style: StyleType = "dim"


def compact(value: float, digits: int = 3) -> str:
    """``value`` in at most ``digits`` significant digits and few characters: 0.0012, 1.2e-05, 3.4k."""
    if not math.isfinite(value):
        return "nan" if value != value else "inf" if value > 0 else "-inf"
    size = abs(value)
    if size == 0:
        return "0"
    if size < 1e-3 or size >= 1e15:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.') if '.' in mantissa else mantissa}e{exponent}"
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)):
        if size >= scale:
            break
    scaled = value / scale
    places = max(0, digits - 1 - math.floor(math.log10(abs(scaled))))
    text = f"{scaled:.{places}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + suffix


def _step_label(step: int) -> str:
    return str(step) if step < 100_000 else compact(step)


class _Scale:
    """Maps values to dot rows (0 at the bottom), in log10 when asked; values it cannot show are
    those not finite or, in log scale, not above 0."""

    def __init__(self, series: Sequence[Sequence[Column]], log: bool, dots: int) -> None:
        self.log, self.dots = log, dots
        values = [v for cols in series for col in cols if col for v in col if self.shows(v)]
        self.hidden = log and any(col and col[0] <= 0 for cols in series for col in cols)
        self.empty = not values
        lo, hi = (min(map(self.t, values)), max(map(self.t, values))) if values else (0.0, 1.0)
        if lo == hi:
            pad = 0.5 if log else abs(lo) * 0.1 or 1.0
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi = lo, hi

    def shows(self, v: float) -> bool:
        return math.isfinite(v) and (v > 0 or not self.log)

    def t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def dot(self, v: float) -> int:
        d = round((self.t(v) - self.lo) / (self.hi - self.lo) * (self.dots - 1))
        return min(max(d, 0), self.dots - 1)

    def value(self, fraction: float) -> float:
        x = self.lo + fraction * (self.hi - self.lo)
        return 10 ** x if self.log else x


def _label_rows(rows: int) -> list[int]:
    """Rows (from the top) that carry a y label: 3 to 5 of them, evenly spread, ends included."""
    if rows < 3:
        return list(range(rows))
    even = [k for k in (5, 4, 3) if k <= rows and (rows - 1) % (k - 1) == 0]
    k = even[0] if even else 5 if rows >= 13 else 3
    return sorted({round(i * (rows - 1) / (k - 1)) for i in range(k)})


def _y_labels(scale: _Scale, rows: int) -> dict[int, str]:
    """The fewest digits (3 to 6) that tell the labels apart."""
    label_rows = _label_rows(rows)
    values = [scale.value(1 - r / (rows - 1)) if rows > 1 else scale.value(0.5) for r in label_rows]
    for digits in range(3, 7):
        labels = [compact(v, digits) for v in values]
        if len(set(labels)) == len(labels):
            break
    return dict(zip(label_rows, labels))


class _Canvas:
    """Braille dots of one series: the min–max strokes, the last line, and marker characters."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.stroke, self.line = [0] * (rows * cols), [0] * (rows * cols)
        self.marks: dict[int, str] = {}

    def set(self, grid: list[int], x: int, d: int) -> None:
        row, sub = self.rows - 1 - d // 4, 3 - d % 4
        grid[row * self.cols + x // 2] |= _DOT[sub][x % 2]

    def span(self, grid: list[int], x: int, d0: int, d1: int) -> None:
        for d in range(min(d0, d1), max(d0, d1) + 1):
            self.set(grid, x, d)

    def connect(self, points: list[tuple[int, int]]) -> None:
        """The last line through ``(column, dot)`` points, gaps between columns bridged."""
        for (c0, d0), (c1, d1) in zip(points, points[1:]):
            x0, slope = 2 * c0, (d1 - d0) / (2 * c1 - 2 * c0)
            for x in range(x0, 2 * c1 + 1):
                below, above = max(x0, x - 0.5), min(2 * c1, x + 0.5)
                self.span(self.line, x, round(d0 + slope * (below - x0)),
                          round(d0 + slope * (above - x0)))
        if len(points) == 1:
            self.set(self.line, 2 * points[0][0], points[0][1])


def _draw_series(cols: Sequence[Column], scale: _Scale, rows: int,
                 smoothing: float) -> tuple[_Canvas, list[int]]:
    """One series on its own canvas, and the cell index of each point of its last line."""
    canvas, points, ema = _Canvas(rows, len(cols)), [], None
    for c, col in enumerate(cols):
        if col is None:
            continue
        low, high, last = col
        if high == math.inf:
            canvas.marks[c] = "↑"
        if low == -math.inf:
            canvas.marks[(rows - 1) * len(cols) + c] = "↓"
        if scale.shows(high) or scale.shows(low):
            top = scale.dot(high) if scale.shows(high) else scale.dots - 1
            canvas.span(canvas.stroke, 2 * c, scale.dot(low) if scale.shows(low) else 0, top)
        if scale.shows(last):
            ema = last if ema is None else smoothing * ema + (1 - smoothing) * last
            points.append((c, scale.dot(ema)))
    canvas.connect(points)
    return canvas, [(rows - 1 - d // 4) * len(cols) + c for c, d in points]


def _series_styles(options: ChartOptions, n: int) -> tuple[Style, Style]:
    """The style of series ``n``'s line and of its strokes (dimmed)."""
    style = options.styles[n % len(options.styles)] if options.color else ""
    style = Style.parse(style) if isinstance(style, str) else style
    return style, style + Style(dim=True)


def _plot_rows(canvases: list[tuple[_Canvas, list[int]]], rows: int, cols: int,
               options: ChartOptions) -> list[Text]:
    """The canvases laid over each other; a shared cell takes the first series' colour, a line
    before a stroke. Without colour each point of a last line is its series' glyph."""
    styles = [_series_styles(options, n) for n in range(len(canvases))]
    chars, cell_styles = [" "] * (rows * cols), [Style()] * (rows * cols)
    dots = [0] * (rows * cols)
    for canvas, _ in canvases:
        dots = [d | s | line for d, s, line in zip(dots, canvas.stroke, canvas.line)]
    for i in (i for i, bits in enumerate(dots) if bits):
        owner, faint = -1, True
        for n, (canvas, _) in enumerate(canvases):
            if canvas.line[i] and faint:
                owner, faint = n, False
            elif canvas.stroke[i] and owner < 0:
                owner = n
        chars[i], cell_styles[i] = chr(0x2800 + dots[i]), styles[owner][faint]
    for n, (canvas, points) in reversed(list(enumerate(canvases))):
        if not options.color:
            for i in points:
                chars[i], cell_styles[i] = GLYPHS[n % len(GLYPHS)], styles[n][0]
        for i, mark in canvas.marks.items():
            chars[i], cell_styles[i] = mark, styles[n][0]
    lines = []
    for r in range(rows):
        cells = zip(chars[r * cols:(r + 1) * cols], cell_styles[r * cols:(r + 1) * cols])
        lines.append(Text.assemble(*(("".join(c for c, _ in run), style)
                                     for style, run in itertools.groupby(cells, key=lambda cell: cell[1]))))
    return lines


def _legend(history: MetricHistory, names: Sequence[str], options: ChartOptions,
            notes: list[str]) -> Text:
    """Each series' mark, name and last value, then the notes (log, ema, hidden values)."""
    legend = Text(" ")
    for n, name in enumerate(names):
        style = options.styles[n % len(options.styles)] if options.color else ""
        latest = history.latest(name)
        legend.append("━" if options.color else GLYPHS[n % len(GLYPHS)], style)
        legend.append(f" {name} {'–' if latest is None else compact(latest[2], 4)}  ")
    legend.append("  ".join(notes), options.axis_style)
    return legend


def _columns(history: MetricHistory, name: str, first: int, last: int, cols: int) -> list[Column]:
    """``name``'s (min, max, last) per column; fewer steps than columns are spread edge to edge."""
    span = last - first + 1
    if span >= cols or span < 2:
        return history.columns(name, first, last, cols)
    spread: list[Column] = [None] * cols
    for j, column in enumerate(history.columns(name, first, last, span)):
        spread[j * (cols - 1) // (span - 1)] = column
    return spread


def _x_axis(first: int, last: int, cols: int) -> str:
    """An axis line of ``cols`` cells with the first, middle and last step written where `_columns` puts them."""
    axis = ["─"] * cols
    left, right = _step_label(first), _step_label(last)
    span = last - first + 1
    if 2 <= span < cols:
        mid_step = first + (span - 1) // 2
        mid_col = (mid_step - first) * (cols - 1) // (span - 1)
    else:
        mid_col = cols // 2
        mid_step = first + mid_col * span // cols
    middle = _step_label(mid_step)
    placed = [(0, left)]
    if last > first and len(left) + len(right) + 1 <= cols:
        placed.append((cols - len(right), right))
        start = mid_col - len(middle) // 2
        if len(left) < start and start + len(middle) < cols - len(right) and middle not in (left, right):
            placed.append((start, middle))
    for start, label in placed:
        axis[start:start + len(label)] = label[:cols - start]
    return "".join(axis[:cols])


def render_chart(history: MetricHistory, names: Sequence[str], width: int, height: int,
                 options: ChartOptions = ChartOptions()) -> list[Text]:
    """``height`` lines of ``width`` cells: a legend, the plot with y labels, and an x axis."""
    if width < 1 or height < 1:
        return [_fit(Text(), max(width, 0)) for _ in range(max(height, 0))]
    ranges = [r for r in map(history.step_range, names) if r is not None]
    notes = ["log"] if options.log_scale else []
    notes += [f"ema {options.smoothing:g}"] if options.smoothing else []
    rows = height - 1 - (height >= 3)
    if not ranges:
        return _frame([f"waiting for {', '.join(names) or 'metrics'}"], history, names, width, height, options, notes)
    first, last = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if options.window is not None and options.window > 0:
        first = max(first, last - options.window + 1)
    series = [_columns(history, name, first, last, max(1, width - 8)) for name in names]
    scale = _Scale(series, options.log_scale, 4 * max(rows, 1))
    if scale.hidden:
        notes.append("≤0 hidden")
    if scale.empty or rows < 1:
        message = "no positive values" if options.log_scale else "no finite values"
        return _frame([message] if scale.empty else [], history, names, width, height, options, notes)
    labels = _y_labels(scale, rows)
    label_width = max(map(len, labels.values()))
    if width - label_width - 1 < 4:
        labels, label_width = {}, -1
    cols = width - label_width - 1
    if cols != len(series[0]):
        series = [_columns(history, name, first, last, cols) for name in names]
    canvases = [_draw_series(s, scale, rows, min(max(options.smoothing, 0.0), 0.999)) for s in series]
    lines = [_legend(history, names, options, notes)]
    for r, plot in enumerate(_plot_rows(canvases, rows, cols, options)):
        if label_width >= 0:
            tick = "┤" if r in labels else "│"
            plot = Text(f"{labels.get(r, ''):>{label_width}}{tick}", options.axis_style) + plot
        lines.append(plot)
    if height >= 3:
        corner = " " * label_width + "└" if label_width >= 0 else ""
        lines.append(Text(corner + _x_axis(first, last, cols), options.axis_style))
    return [_fit(line, width) for line in lines]


def _frame(messages: list[str], history: MetricHistory, names: Sequence[str], width: int,
           height: int, options: ChartOptions, notes: list[str]) -> list[Text]:
    """The legend over an empty plot with ``messages`` centred in it."""
    lines = [_legend(history, names, options, notes)] + [Text() for _ in range(height - 1)]
    for i, message in enumerate(messages, start=max(1, height // 2)):
        if i < height:
            lines[i] = Text(message.center(width), options.axis_style)
    return [_fit(line, width) for line in lines[:height]]


def _fit(line: Text, width: int) -> Text:
    line.truncate(width, overflow="crop", pad=True)
    line.no_wrap, line.end = True, ""
    return line


class MetricChart(Widget):
    """A chart of one or more metrics of a `MetricHistory`, e.g. ``train/loss`` and ``val/loss``.

    The parent owns the history and calls `refresh_data` after adding points; the chart redraws
    then, on resize, or when an option changes, never on its own timer.
    """

    DEFAULT_CSS = """
    MetricChart { height: 1fr; min-height: 5; }
    MetricChart > .metric-chart--axis { color: $text-muted; }
    MetricChart > .metric-chart--series-0 { color: ansi_bright_cyan; }
    MetricChart > .metric-chart--series-1 { color: ansi_bright_magenta; }
    MetricChart > .metric-chart--series-2 { color: ansi_bright_yellow; }
    MetricChart > .metric-chart--series-3 { color: ansi_bright_green; }
    MetricChart > .metric-chart--series-4 { color: ansi_bright_red; }
    MetricChart > .metric-chart--series-5 { color: ansi_bright_blue; }
    """
    COMPONENT_CLASSES = {"metric-chart--axis",
                         *(f"metric-chart--series-{n}" for n in range(len(GLYPHS)))}

    smoothing: reactive[float] = reactive(0.0)
    """EMA factor of the last line, 0 (none) to 0.999; the min–max strokes are never smoothed."""
    log_scale: reactive[bool] = reactive(False)
    """Log10 y axis; values ≤ 0 are not drawn and the legend says so."""
    window: reactive[Optional[int]] = reactive(None)
    """Show only the last ``window`` steps; None shows the whole run."""

    def __init__(self, history: MetricHistory, names: Sequence[str], *, smoothing: float = 0.0,
                 log_scale: bool = False, window: int | None = None, name: str | None = None,
                 id: str | None = None, classes: str | None = None, disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self.history, self.names = history, tuple(names)
        self.smoothing, self.log_scale, self.window = smoothing, log_scale, window

    def validate_smoothing(self, smoothing: float) -> float:
        return min(max(float(smoothing), 0.0), 0.999)

    def validate_window(self, window: int | None) -> int | None:
        return None if window is None else max(1, int(window))

    def refresh_data(self) -> None:
        """Redraw from the history: call after adding points to it."""
        self.refresh()

    def options(self) -> ChartOptions:
        """The options the chart draws with, colours from its CSS unless the app has NO_COLOR."""
        style = self.get_component_rich_style
        return ChartOptions(self.smoothing, self.log_scale, self.window, color=not self.app.no_color,
                            styles=tuple(style(f"metric-chart--series-{n}", partial=True)
                                         for n in range(len(GLYPHS))),
                            axis_style=style("metric-chart--axis"))

    def render(self) -> RenderResult:
        width, height = self.size
        lines = render_chart(self.history, self.names, width, height, self.options())
        return Text("\n", no_wrap=True, end="").join(lines)
