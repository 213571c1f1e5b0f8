"""SystemPanel and RankTable: what a user sees for a telemetry sample and the run's state."""

from __future__ import annotations

import asyncio
import copy
import io
from typing import Any

import pytest
from rich.console import Console
from textual.app import App, ComposeResult

from tui.widgets.system import RankTable, SystemPanel

GIB = 2**30

SAMPLE: dict[str, Any] = {
    "time": 1718000000.0,
    "host": {"cpu_percent": 43.2, "cpu_count": 32, "load_avg": [5.1, 4.2, 3.9],
             "memory_used_bytes": 61.2 * GIB, "memory_total_bytes": 125.6 * GIB, "memory_percent": 48.7,
             "swap_used_bytes": 0, "swap_total_bytes": 8 * GIB,
             "disk_read_bytes_per_s": 12.5 * 2**20, "disk_write_bytes_per_s": 1536.0,
             "net_sent_bytes_per_s": 3.5 * 2**20, "net_recv_bytes_per_s": 120 * 1024},
    "ranks": [{"rank": 0, "pid": 4101, "alive": True, "cpu_percent": 99.5, "rss_bytes": 3.4 * GIB,
               "num_threads": 12, "step": 1200, "step_time": 0.101},
              {"rank": 1, "pid": 4102, "alive": True, "cpu_percent": 97.0, "rss_bytes": 900 * 2**20,
               "num_threads": 12, "step": 1200, "step_time": 0.180}],
    "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "util_percent": 62, "memory_used_bytes": 40.1 * GIB,
              "memory_total_bytes": 79.6 * GIB, "temperature_c": 71, "power_w": 312.4, "power_limit_w": 700.0,
              "sm_clock_mhz": 1980, "pids": [4101], "ranks": [0]},
             {"index": 1, "name": "NVIDIA H100 80GB HBM3", "util_percent": 95, "memory_used_bytes": 41.7 * GIB,
              "memory_total_bytes": 79.6 * GIB, "temperature_c": 74, "power_w": 401.0, "power_limit_w": 700.0,
              "sm_clock_mhz": 1980, "pids": [4102], "ranks": [1]}],
    "gpu_status": None,
}
STATE: dict[str, Any] = {
    "run": "demo-1", "state": "running", "step": 1200,
    "ranks": {"0": {"pid": 4101, "host": "node1", "device": "cuda:0", "local_rank": 0, "step": 1200,
                    "state": "running", "step_time": 0.101},
              "1": {"pid": 4102, "host": "node1", "device": "cuda:1", "local_rank": 1, "step": 1200,
                    "state": "running", "step_time": 0.180}},
}


def sample(**changes: Any) -> dict[str, Any]:
    """A deep copy of SAMPLE with top-level keys replaced."""
    return {**copy.deepcopy(SAMPLE), **changes}


class TelemetryApp(App[None]):
    """The two widgets stacked, fed one sample on mount (the shared factory of these tests)."""

    def __init__(self, data: dict[str, Any] | None, state: dict[str, Any] | None = STATE) -> None:
        super().__init__()
        self.data, self.state = data, state

    def compose(self) -> ComposeResult:
        yield SystemPanel()
        yield RankTable()

    def on_mount(self) -> None:
        self.query_one(SystemPanel).update_sample(self.data, self.state)
        self.query_one(RankTable).update_sample(self.data, self.state)


def screen_text(app: App[Any]) -> str:
    """The screen as plain text, one line per row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def bold(app: App[Any], text: str) -> bool:
    """Whether ``text`` is drawn bold somewhere on the screen."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, force_terminal=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return any(text in seg.text and seg.style is not None and seg.style.bold for seg in console._record_buffer)


def shown(data: dict[str, Any] | None, state: dict[str, Any] | None = STATE, size: tuple[int, int] = (120, 30)) -> str:
    """The screen of a TelemetryApp fed ``data`` and ``state``."""
    async def run() -> str:
        app = TelemetryApp(data, state)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            return screen_text(app)
    return asyncio.run(run())


def row(text: str, start: str) -> str:
    """The first screen line whose content (inside the border) starts with ``start``."""
    return next(line for line in text.splitlines() if line.strip("│ ").startswith(start))


def test_without_gpus_the_panel_says_why_in_one_line() -> None:
    text = shown(sample(gpus=[], gpu_status="no NVIDIA GPU (NVML: Driver Not Loaded)"))
    assert "no NVIDIA GPU (NVML: Driver Not Loaded)" in row(text, "GPU")
    assert "GPU0" not in text


def test_each_gpu_has_a_row_with_its_readings_and_ranks() -> None:
    text = shown(sample())
    gpu0, gpu1 = row(text, "GPU0"), row(text, "GPU1")
    assert "H100 80GB HBM3" in gpu0 and "NVIDIA" not in gpu0
    assert all(part in gpu0 for part in ("62%", "40.1/79.6 GiB", "71°C", "312/700 W", "rank 0"))
    assert all(part in gpu1 for part in ("95%", "41.7/79.6 GiB", "74°C", "401/700 W", "rank 1"))


def test_gpu_ranks_fall_back_to_the_devices_in_the_run_state() -> None:
    gpus = [{**gpu, "pids": None, "ranks": None} for gpu in SAMPLE["gpus"]]
    text = shown(sample(gpus=gpus))
    assert "rank 1" in row(text, "GPU1")


def test_host_shows_cpu_memory_and_throughput_in_human_units() -> None:
    text = shown(sample())
    assert "43.2%" in row(text, "CPU") and "32 cpus" in row(text, "CPU")
    assert "61.2/125.6 GiB" in row(text, "MEM")
    io_row = row(text, "I/O")
    assert all(part in io_row for part in ("12.5 MiB/s", "1.5 KiB/s", "↑3.5 MiB/s", "↓120.0 KiB/s"))


def test_swap_is_shown_only_when_used() -> None:
    assert "swap" not in shown(sample())
    used = sample()
    used["host"]["swap_used_bytes"] = 2 * GIB
    assert "swap 2.0/8.0 GiB" in row(shown(used), "MEM")


def test_missing_readings_show_a_dash() -> None:
    first = sample()
    first["host"].update(cpu_percent=None, disk_read_bytes_per_s=None, net_recv_bytes_per_s=None)
    first["gpus"][0].update(temperature_c=None, power_w=None)
    text = shown(first)
    assert "–" in row(text, "CPU") and "%" not in row(text, "CPU")
    assert "disk read –" in row(text, "I/O") and "↓–" in row(text, "I/O")
    assert "–/700 W" in row(text, "GPU0")


def test_rank_table_has_one_row_per_rank() -> None:
    text = shown(sample())
    assert all(part in row(text, "0 ") for part in ("node1", "cuda:0", "4101", "alive", "99.5", "3.4 GiB", "1200",
                                                     "101.0"))
    assert "900.0 MiB" in row(text, "1 ")


def test_a_rank_much_slower_than_the_others_is_marked_slow() -> None:
    async def run() -> None:
        app = TelemetryApp(sample())
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause()
            text, table = screen_text(app), app.query_one(RankTable)
            assert table.stragglers == {1: "slow"}
            assert "◀ slow" in row(text, "1 ") and "◀" not in row(text, "0 ")
            assert bold(app, "180.0") and not bold(app, "101.0")
    asyncio.run(run())


def test_a_rank_seconds_of_steps_behind_is_marked_behind() -> None:
    lagging = sample()
    lagging["ranks"][1].update(step=1170, step_time=0.101)
    text = shown(lagging, state=None)
    assert "◀ behind" in row(text, "1 ")


def test_a_lag_of_one_progress_report_is_not_marked() -> None:
    skewed = sample()
    skewed["ranks"][1].update(step=1190, step_time=0.101)
    assert "◀" not in shown(skewed, state=None)


def test_ranks_within_the_tolerance_are_not_marked() -> None:
    even = sample()
    even["ranks"][1].update(step=1198, step_time=0.104)
    text = shown(even, state=None)
    assert "◀" not in text


def test_a_dead_rank_shows_gone_and_is_not_a_straggler() -> None:
    dead = sample()
    dead["ranks"][1].update(alive=False, cpu_percent=None, rss_bytes=None)
    text = shown(dead)
    assert "gone" in row(text, "1 ") and "◀" not in text


def test_ranks_from_the_state_show_before_the_first_telemetry() -> None:
    text = shown(None)
    assert "waiting for telemetry" in text
    assert "4102" in row(text, "1 ")


def test_at_80_columns_the_layout_is_compact_and_keeps_key_values() -> None:
    text = shown(sample(), size=(80, 24))
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert all(part in row(text, "GPU1") for part in ("95%", "41.7/79.6 GiB", "r1"))
    assert "◀ slow" in row(text, "1 ") and "180.0" in row(text, "1 ")
    assert "cuda:0" not in text


def test_without_colour_bars_are_drawn_with_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    text = shown(sample())
    assert "██████" in row(text, "GPU1") and "░" in row(text, "GPU0")


def test_snapshot_at_80_by_24(snap_compare: Any) -> None:
    assert snap_compare(TelemetryApp(sample()), terminal_size=(80, 24))


def test_snapshot_at_120_by_40(snap_compare: Any) -> None:
    assert snap_compare(TelemetryApp(sample()), terminal_size=(120, 40))
