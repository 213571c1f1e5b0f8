"""Live telemetry widgets: GPUs and host (``SystemPanel``) and one row per rank with stragglers marked (``RankTable``).

Both are fed by their parent with the supervisor's telemetry sample and the run's state
object (docs/protocol.md) and draw with characters first (bars of blocks, "◀ slow" marks),
so they read the same under NO_COLOR and at 80 columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import median
from typing import Any

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

__all__ = ["RankTable", "SystemPanel", "bar", "find_stragglers", "human_bytes"]

DASH = "–"
SLOW_RATIO = 1.5
SLOW_MARGIN_S = 0.010
STEP_LAG = 3
LAG_S = 2.0  # progress reports arrive 0.25 s apart: "behind" means seconds of steps, not a sampling skew
_EIGHTHS = " ▏▎▍▌▋▊▉"


def human_bytes(n: float | None, suffix: str = "") -> str:
    """``n`` bytes in binary units ("512 B", "1.5 KiB", "3.2 GiB"), "–" for None."""
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}{suffix}" if unit == "B" else f"{n:.1f} {unit}{suffix}"
        n /= 1024
    raise AssertionError("unreachable")


def _num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return DASH if value is None else fmt.format(value) + unit


def _used_total(used: float | None, total: float | None) -> str:
    """"40.1/79.6 GiB": both halves in GiB so they compare at a glance."""
    if used is None and total is None:
        return DASH
    return f"{_num(_gib(used), '{:.1f}')}/{_num(_gib(total), '{:.1f}')} GiB"


def _gib(n: float | None) -> float | None:
    return None if n is None else n / 2**30


def bar(fraction: float | None, width: int, style: Style | str = "", empty: Style | str = "dim") -> Text:
    """A ``width``-cell bar in eighth blocks on a "░" track; readable without colour."""
    if fraction is None:
        return Text("░" * width, style=empty)
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (_EIGHTHS[part] if part else "")
    return Text.assemble((filled, style), ("░" * (width - len(filled)), empty))


def _ratio(used: float | None, total: float | None) -> float | None:
    return None if used is None or not total else used / total


class SystemPanel(Widget):
    """One row per GPU (or why there is none) and the host's CPU, memory, disk and network."""

    DEFAULT_CSS = """
    SystemPanel {
        height: auto;
        border: round $primary 50%;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    SystemPanel > .system-panel--bar { color: $primary; }
    SystemPanel > .system-panel--hot { color: $warning; }
    SystemPanel > .system-panel--label { text-style: bold; }
    SystemPanel > .system-panel--muted { color: $text-muted; }
    """
    COMPONENT_CLASSES = {"system-panel--bar", "system-panel--hot", "system-panel--label", "system-panel--muted"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.border_title = "system"
        self.sample: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    def update_sample(self, sample: Mapping[str, Any] | None, state: Mapping[str, Any] | None = None) -> None:
        """Show a new telemetry sample; ``state`` (the run's state object) tells which rank uses which GPU."""
        shape = self._shape()
        self.sample, self.state = dict(sample or {}), dict(state or {})
        self.refresh(layout=self._shape() != shape)

    def _shape(self) -> tuple[int, bool]:
        """What decides the height: a layout pass (costly) only when it changes."""
        return len(self.sample.get("gpus") or ()), bool(self.sample)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self.sample.get("gpus") or ())) + 3 if self.sample else 1

    def render(self) -> RenderableType:
        if not self.sample:
            return Text("waiting for telemetry…", style=self._style("muted"))
        width = self.content_size.width or 76
        wide, narrow = width >= 100, width < 64
        rows = [self._gpu_cells(gpu, wide, narrow) for gpu in self.sample.get("gpus") or ()]
        fixed = sum(max(len(row[i]) for row in rows) for i in range(len(rows[0]))) + len(rows[0]) + 1 if rows else 40
        bar_width = max(4, min(24, (width - fixed) // 2))
        return Group(self._gpus(rows, bar_width, narrow), self._host(bar_width), self._io(wide))

    def _style(self, part: str) -> Style:
        return self.get_component_rich_style(f"system-panel--{part}")

    def _bar(self, fraction: float | None, width: int, warn: bool = False) -> Text:
        """A bar in the bar colour; ``warn``: in the warning colour from 90 % on (memory running out)."""
        hot = warn and fraction is not None and fraction >= 0.9
        return bar(fraction, width, self._style("hot" if hot else "bar"), self._style("muted"))

    def _gpu_cells(self, gpu: Mapping[str, Any], wide: bool, narrow: bool) -> list[str]:
        """The text cells of one GPU row, bars left out: label, [name], util, memory, [temp, power], ranks."""
        cells = [f"GPU{gpu.get('index', '?')}", _num(gpu.get("util_percent"), unit="%").rjust(4),
                 _used_total(gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")), self._gpu_ranks(gpu, wide)]
        if not narrow:
            power, limit = gpu.get("power_w"), gpu.get("power_limit_w")
            cells[1:1] = [_short_name(gpu.get("name"), 20 if wide else 10)]
            cells[-1:-1] = [_num(gpu.get("temperature_c"), unit="°C"),
                            f"{_num(power)}/{_num(limit)} W" if wide else _num(power, unit="W")]
        return cells

    def _gpus(self, rows: list[list[str]], bar_width: int, narrow: bool) -> RenderableType:
        if not rows:
            status = self.sample.get("gpu_status") or "no GPU readings"
            return Text.assemble(("GPU  ", self._style("label")), (status, self._style("hot")))
        table = Table.grid(padding=(0, 1))
        for _ in range(len(rows[0]) + 2):
            table.add_column(no_wrap=True)
        util_at = 1 if narrow else 2
        for gpu, cells in zip(self.sample["gpus"], rows):
            util = gpu.get("util_percent")
            used, total = gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")
            texts: list[RenderableType] = [Text(cell) for cell in cells]
            texts[0].stylize(self._style("label"))
            texts[-1].stylize(self._style("label"))
            texts.insert(util_at + 1, self._bar(_ratio(used, total), bar_width, warn=True))
            texts.insert(util_at, self._bar(None if util is None else util / 100, bar_width))
            table.add_row(*texts)
        return table

    def _gpu_ranks(self, gpu: Mapping[str, Any], wide: bool) -> str:
        """The ranks NVML saw on this GPU, else those whose state says they were put on it."""
        ranks = gpu.get("ranks")
        if not ranks:
            wanted = f"cuda:{gpu.get('index')}"
            ranks = sorted(int(r) for r, info in (self.state.get("ranks") or {}).items()
                           if isinstance(info, Mapping) and info.get("device") == wanted)
        if not ranks:
            return DASH
        numbers = ",".join(str(r) for r in ranks)
        return (f"rank{'s' if len(ranks) > 1 else ''} {numbers}") if wide else f"r{numbers}"

    def _host(self, bar_width: int) -> RenderableType:
        host: Mapping[str, Any] = self.sample.get("host") or {}
        cpu, used, total = host.get("cpu_percent"), host.get("memory_used_bytes"), host.get("memory_total_bytes")
        load = host.get("load_avg") or []
        table = Table.grid(padding=(0, 1))
        for column in range(4):
            table.add_column(no_wrap=True, justify="right" if column == 2 else "left")
        label = self._style("label")
        detail = f"{host.get('cpu_count') or DASH} cpus" + (f" · load {load[0]:.1f}" if load else "")
        table.add_row(Text("CPU ", style=label), self._bar(None if cpu is None else cpu / 100, bar_width),
                      Text(_num(cpu, "{:.1f}", "%")), Text(detail, style=self._style("muted")))
        swap = host.get("swap_used_bytes")
        swap_text = f"swap {_used_total(swap, host.get('swap_total_bytes'))}" if swap else ""
        table.add_row(Text("MEM ", style=label), self._bar(_ratio(used, total), bar_width, warn=True),
                      Text(_used_total(used, total)), Text(swap_text, style=self._style("hot")))
        return table

    def _io(self, wide: bool) -> Text:
        host: Mapping[str, Any] = self.sample.get("host") or {}
        rate = {key: human_bytes(host.get(f"{key}_bytes_per_s"), "/s")
                for key in ("disk_read", "disk_write", "net_sent", "net_recv")}
        read, write = ("read ", "write ") if wide else ("r ", "w ")
        return Text.assemble(("I/O  ", self._style("label")),
                             f"disk {read}{rate['disk_read']} {write}{rate['disk_write']}  ",
                             f"net ↑{rate['net_sent']} ↓{rate['net_recv']}", no_wrap=True, overflow="ellipsis")


def _short_name(name: str | None, width: int) -> str:
    """"NVIDIA H100 80GB HBM3" → "H100 80GB HBM3", cut to ``width`` cells."""
    if not name:
        return DASH
    for noise in ("NVIDIA ", "GeForce ", "Tesla ", "Quadro "):
        name = name.replace(noise, "")
    return name if len(name) <= width else name[: width - 1] + "…"


def find_stragglers(ranks: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
    """Ranks far slower (step_time > 1.5× and > 10 ms over the others' median) or > 2 s of steps behind them.

    Compares each live rank to the median of the *other* live ranks, so two ranks are enough.
    Returns ``{rank: "slow" | "behind"}``.
    """
    live = {r: v for r, v in ranks.items() if v.get("alive") is not False}
    marks: dict[int, str] = {}
    for rank, info in live.items():
        times = [v["step_time"] for r, v in live.items() if r != rank and v.get("step_time") is not None]
        steps = [v["step"] for r, v in live.items() if r != rank and v.get("step") is not None]
        step_time, step = info.get("step_time"), info.get("step")
        if step_time is not None and times:
            typical = median(times)
            if step_time > SLOW_RATIO * typical and step_time > typical + SLOW_MARGIN_S:
                marks[rank] = "slow"
                continue
        lag = median(steps) - step if step is not None and steps else 0
        if lag > STEP_LAG and lag * (median(times) if times else step_time or 0.0) > LAG_S:
            marks[rank] = "behind"
    return marks


class RankTable(Widget):
    """One row per rank (pid, alive/gone, CPU, RSS, step, step time); a straggler is bold with "◀ slow"."""

    DEFAULT_CSS = """
    RankTable {
        height: auto;
        border: round $primary 50%;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    RankTable > .rank-table--header { text-style: bold; color: $text-muted; }
    RankTable > .rank-table--straggler { text-style: bold; color: $warning; }
    RankTable > .rank-table--gone { color: $error; }
    """
    COMPONENT_CLASSES = {"rank-table--header", "rank-table--straggler", "rank-table--gone"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.border_title = "ranks"
        self.rows: dict[int, dict[str, Any]] = {}
        self.stragglers: dict[int, str] = {}

    def update_sample(self, sample: Mapping[str, Any] | None, state: Mapping[str, Any] | None = None) -> None:
        """Merge the sample's per-rank readings with the state's per-rank progress, then redraw."""
        rows: dict[int, dict[str, Any]] = {}
        for rank, info in ((state or {}).get("ranks") or {}).items():
            rows[int(rank)] = {k: v for k, v in dict(info).items() if v is not None}
        for entry in (sample or {}).get("ranks") or ():
            rows.setdefault(int(entry["rank"]), {}).update({k: v for k, v in entry.items() if v is not None})
        layout = len(rows) != len(self.rows)
        self.rows = dict(sorted(rows.items()))
        self.stragglers = find_stragglers(self.rows)
        self.refresh(layout=layout)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + max(1, len(self.rows))

    def render(self) -> RenderableType:
        width = self.content_size.width or 76
        columns = ["rank", "pid", "state", "CPU %", "RSS", "step", "step ms", ""]
        if width >= 100:
            columns[1:1] = ["host", "device"]
        elif width < 60:
            columns.remove("pid")
            columns.remove("state")
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style=self._style("header"))
        for column in columns:
            table.add_column(column, no_wrap=True, justify="left" if column in ("host", "device", "state", "")
                             else "right")
        if not self.rows:
            table.add_row(*[DASH] * len(columns))
        for rank, row in self.rows.items():
            mark = self.stragglers.get(rank)
            style = self._style("straggler") if mark else self._style("gone") if row.get("alive") is False else None
            table.add_row(*[self._cell(column, rank, row, mark) for column in columns], style=style)
        return table

    def _style(self, part: str) -> Style:
        return self.get_component_rich_style(f"rank-table--{part}")

    @staticmethod
    def _cell(column: str, rank: int, row: Mapping[str, Any], mark: str | None) -> str:
        step_time = row.get("step_time")
        alive = row.get("alive")
        return {
            "rank": str(rank),
            "host": str(row.get("host", DASH)),
            "device": str(row.get("device", DASH)),
            "pid": str(row.get("pid", DASH)),
            "state": DASH if alive is None else "alive" if alive else "gone",
            "CPU %": _num(row.get("cpu_percent"), "{:.1f}"),
            "RSS": human_bytes(row.get("rss_bytes")),
            "step": str(row.get("step", DASH)),
            "step ms": _num(None if step_time is None else step_time * 1000, "{:.1f}"),
            "": f"◀ {mark}" if mark else "",
        }[column]
