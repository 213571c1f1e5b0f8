"""LogView, MergedLogView and LogsPane on real files: big logs, growth, truncation, highlights, search."""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import TabbedContent

from tui.widgets import _logindex as logs_module
from tui.widgets.logs import LogsPane, LogView, MergedLogView

TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "train.py", line 42, in <module>',
    "    trainer.fit(model)",
    '  File "engine/_trainer.py", line 120, in fit',
    "    loss.backward()",
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
]


class WidgetApp(App[None]):
    """One widget filling the screen (the shared factory of these tests)."""

    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


def write_lines(path: Path, lines: list[str], mode: str = "w") -> Path:
    """Write (or with mode "a" append) ``lines``, each ended by a newline."""
    with open(path, mode) as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def steps(first: int, last: int) -> list[str]:
    """Ordinary training log lines for steps ``first`` to ``last - 1``."""
    return [f"epoch 0 step {i} loss {2 - i / 1000:.4f}" for i in range(first, last)]


def screen(app: App[Any]) -> list[str]:
    """The screen as plain text lines."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, force_terminal=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def bold(app: App[Any], text: str) -> bool:
    """Whether ``text`` is drawn bold somewhere on the screen."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, force_terminal=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return any(text in seg.text and seg.style is not None and seg.style.bold for seg in console._record_buffer)


def line_on_screen(app: App[Any], text: str) -> str | None:
    """The first screen line holding ``text``, if any."""
    return next((line for line in screen(app) if text in line), None)


def drive(widget: Widget, script: Callable[[App[Any], Pilot[None]], Awaitable[None]],
          size: tuple[int, int] = (80, 24)) -> None:
    """Run a WidgetApp holding ``widget`` and hand it to ``script`` once it has drawn."""
    async def run() -> None:
        app = WidgetApp(widget)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(app, pilot)
    asyncio.run(run())


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A 200 MB log of ~100-byte lines, written with big writes; its path and line count."""
    path = tmp_path_factory.mktemp("big") / "rank0.log"
    line = b"2024-06-01 12:00:00,123 INFO rank0 step 123456 loss 1.234567 lr 0.001 tput 12345.6 samples/s ok\n"
    block = line * ((4 << 20) // len(line))
    blocks = (200 << 20) // len(block) + 1
    with open(path, "wb") as f:
        f.write(b"the very first line\n")
        for _ in range(blocks):
            f.write(block)
        f.write(b"".join(b"final line %d\n" % i for i in range(5)))
    yield path, 1 + blocks * (len(block) // len(line)) + 5
    path.unlink()


async def indexed(view: LogView, pilot: Pilot[None], timeout: float = 30) -> None:
    """Wait until the view's background indexing of the file's head is done."""
    deadline = time.monotonic() + timeout
    while view.indexing and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await pilot.pause()


def test_a_200_mb_log_opens_at_its_end_fast_in_little_memory(big_log: tuple[Path, int]) -> None:
    path, lines = big_log
    tracemalloc.start()
    started = time.monotonic()

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        assert line_on_screen(app, "final line 4") is not None
        assert time.monotonic() - started < 3
        view = app.query_one(LogView)
        await indexed(view, pilot)
        assert not view.indexing and view.line_count == lines
        assert line_on_screen(app, "final line 4") is not None and view.follow

    try:
        drive(LogView(path), script)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20


def test_a_big_log_reaches_its_first_line_once_indexed(big_log: tuple[Path, int]) -> None:
    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        await indexed(view, pilot)
        await pilot.press("home")
        assert screen(app)[0].startswith("  the very first line")
        assert view.search("first line", forward=False) and view.match_line == 0

    drive(LogView(big_log[0]), script)


def test_appended_lines_show_after_poll_while_following(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", steps(0, 100))

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        assert view.follow and line_on_screen(app, "step 99 ") is not None
        write_lines(path, steps(100, 103), "a")
        assert view.poll()
        await pilot.pause()
        assert screen(app)[-1].startswith("  epoch 0 step 102 ") and view.follow
        assert not view.poll()

    drive(LogView(path), script)


def test_scrolling_up_stops_following(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", steps(0, 100))

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        await pilot.press("pageup")
        top = view.scroll_y
        write_lines(path, steps(100, 110), "a")
        view.poll()
        await pilot.pause()
        assert not view.follow and view.scroll_y == top and view.line_count == 110
        assert line_on_screen(app, "step 109 ") is None
        await pilot.press("end")
        assert view.follow and line_on_screen(app, "step 109 ") is not None

    drive(LogView(path), script)


def test_a_truncated_log_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", steps(0, 100))

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        write_lines(path, ["restarted", "attempt 2"])
        assert view.poll()
        await pilot.pause()
        assert view.line_count == 2 and view.lines(0, 2) == ["restarted", "attempt 2"]
        assert line_on_screen(app, "attempt 2") is not None and line_on_screen(app, "step") is None

    drive(LogView(path), script)


def test_a_partial_last_line_shows_and_completes(tmp_path: Path) -> None:
    path = tmp_path / "rank0.log"
    path.write_bytes(b"first\nhalf a li")

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        assert view.lines(0, 5) == ["first", "half a li"]
        with open(path, "ab") as f:
            f.write(b"ne\nnext\n")
        view.poll()
        assert view.lines(0, 5) == ["first", "half a line", "next"]

    drive(LogView(path), script)


def test_invalid_utf8_and_colour_codes_are_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "rank0.log"
    path.write_bytes(b"bad \xff\xfe bytes\n\x1b[32mgreen\x1b[0m text\n10%\r50%\r100% done\r\n")

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        assert app.query_one(LogView).lines(0, 3) == ["bad \ufffd\ufffd bytes", "green text", "100% done"]
        assert line_on_screen(app, "bad �� bytes") is not None

    drive(LogView(path), script)


def test_traceback_blocks_are_marked_and_the_exception_line_is_bold(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", ["starting", *TRACEBACK, "rank 0 exiting"])

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        rows = screen(app)
        assert rows[0] == "  starting".ljust(len(rows[0]))
        assert [row[:2] for row in rows[1:7]] == ["! "] * 6
        assert rows[7].startswith("  rank 0 exiting")
        assert bold(app, "RuntimeError: CUDA out of memory") and not bold(app, "trainer.fit")

    drive(LogView(path), script)


def test_an_unfinished_traceback_is_marked_to_the_end_until_it_ends(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", ["starting", *TRACEBACK[:3]])

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        assert [row[:1] for row in screen(app)[1:4]] == ["!"] * 3
        write_lines(path, [*TRACEBACK[3:], "after"], "a")
        view.poll()
        await pilot.pause()
        assert screen(app)[6].startswith("! RuntimeError") and screen(app)[7].startswith("  after")

    drive(LogView(path), script)


def test_warnings_and_error_lines_are_marked(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rank0.log", ["WARNING: slow dataloader", "UserWarning: deprecated",
                                                "2024 ERROR lost rank 3", "plain line"])

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        assert [row[:1] for row in screen(app)[:4]] == ["*", "*", "!", " "]

    drive(LogView(path), script)


def search_log(tmp_path: Path) -> Path:
    """200 lines; "needle" (in varying case) on lines 10, 50 and 90."""
    lines = steps(0, 200)
    for i, word in ((10, "needle"), (50, "NEEDLE"), (90, "Needle")):
        lines[i] += f" {word}"
    return write_lines(tmp_path / "rank0.log", lines)


def test_search_moves_to_next_and_previous_matches_case_insensitively(tmp_path: Path) -> None:
    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        await pilot.press("home")
        assert view.search("needle") and view.match_line == 10
        await pilot.press("n")
        assert view.match_line == 50 and line_on_screen(app, "NEEDLE").startswith(" >")
        await pilot.press("n")
        assert view.match_line == 90
        await pilot.press("N", "N")
        assert view.match_line == 10 and not view.follow

    drive(LogView(search_log(tmp_path)), script)


def test_search_wraps_round_and_reports_not_found(tmp_path: Path) -> None:
    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        assert view.search("needle", forward=False) and view.match_line == 90 and not view.search_wrapped
        assert view.search_next() and view.match_line == 10 and view.search_wrapped
        assert view.search_previous() and view.match_line == 90 and view.search_wrapped
        assert not view.search("haystack") and view.match_line is None

    drive(LogView(search_log(tmp_path)), script)


def test_search_highlights_the_matches_on_screen(tmp_path: Path) -> None:
    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        view.search("needle")
        await pilot.pause()
        row = view.render_line(view.match_line - view.scroll_y)
        assert [seg.text for seg in row if seg.style and seg.style.reverse] == ["needle"]

    drive(LogView(search_log(tmp_path)), script)


def test_jump_to_last_traceback_puts_its_first_line_at_the_top(tmp_path: Path) -> None:
    lines = [*steps(0, 50), *TRACEBACK, *steps(50, 100), *TRACEBACK, *steps(100, 200)]
    path = write_lines(tmp_path / "rank0.log", lines)

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        view = app.query_one(LogView)
        assert view.jump_to_last_traceback()
        await pilot.pause()
        assert view.scroll_y == 106 and not view.follow
        assert screen(app)[0].startswith("! Traceback (most recent call last)")

    drive(LogView(path), script)


def test_jump_to_last_traceback_without_one_says_so(tmp_path: Path) -> None:
    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        assert not app.query_one(LogView).jump_to_last_traceback()

    drive(LogView(write_lines(tmp_path / "rank0.log", steps(0, 5))), script)


def two_rank_logs(tmp_path: Path) -> Path:
    write_lines(tmp_path / "rank0.log", ["zero a", "zero b"])
    write_lines(tmp_path / "rank1.log", ["one a", *TRACEBACK, *steps(0, 100)])
    return tmp_path


def test_merged_view_prefixes_each_line_with_its_rank(tmp_path: Path) -> None:
    logs = two_rank_logs(tmp_path)

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        pane = app.query_one(LogsPane)
        assert pane.active_view is pane.merged
        assert pane.merged.lines(0, 3) == ["[rank 0] zero a", "[rank 0] zero b", "[rank 1] one a"]
        write_lines(logs / "rank1.log", ["one later"], "a")
        write_lines(logs / "rank0.log", ["zero later"], "a")
        pane.poll()
        await pilot.pause()
        assert screen(app)[-2:] == [row.ljust(80) for row in ("  [rank 0] zero later", "  [rank 1] one later")]

    drive(LogsPane(logs), script)


def test_merged_view_drops_its_oldest_lines_past_its_cap_keeping_the_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_module, "MERGED_MAX_LINES", 100)
    path = write_lines(tmp_path / "rank0.log", steps(0, 90))
    merged = MergedLogView()
    merged.add_file(path, "[rank 0] ")

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        await pilot.press("home", *["pagedown"] * 8)
        top = merged.lines(merged.scroll_y, 1)
        assert top == ["[rank 0] " + steps(72, 73)[0]] and not merged.follow
        write_lines(path, steps(90, 120), "a")
        merged.poll()
        await pilot.pause()
        assert merged.line_count == 50 and merged.lines(0, 1) == ["[rank 0] " + steps(70, 71)[0]]
        assert merged.lines(merged.scroll_y, 1) == top

    drive(merged, script, size=(80, 10))


def test_logs_pane_adds_a_tab_when_a_rank_log_appears(tmp_path: Path) -> None:
    logs = two_rank_logs(tmp_path)

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        write_lines(logs / "rank2.log", ["two a"])
        app.query_one(LogsPane).poll()
        await pilot.pause()
        assert "rank 2" in screen(app)[0]
        assert "[rank 2] two a" in app.query_one(LogsPane).merged.lines(0, 200)

    drive(LogsPane(logs), script)


def test_logs_pane_marks_tabs_that_grew_while_hidden(tmp_path: Path) -> None:
    logs = two_rank_logs(tmp_path)

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        pane = app.query_one(LogsPane)
        write_lines(logs / "rank1.log", ["one later"], "a")
        pane.poll()
        await pilot.pause()
        assert "rank 1 •" in screen(app)[0] and "rank 0 •" not in screen(app)[0]
        await pane.show_rank(1)
        await pilot.pause()
        assert "rank 1 •" not in screen(app)[0] and screen(app)[-1].startswith("  one later")

    drive(LogsPane(logs), script)


def test_show_failure_switches_to_the_rank_and_its_traceback(tmp_path: Path) -> None:
    logs = two_rank_logs(tmp_path)

    async def script(app: App[Any], pilot: Pilot[None]) -> None:
        pane = app.query_one(LogsPane)
        await pane.show_failure(1)
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "log-tab-rank1"
        assert pane.views[1].scroll_y == 1
        assert screen(app)[2].startswith("! Traceback (most recent call last)")

    drive(LogsPane(logs), script)


def test_snapshot_log_with_a_traceback(snap_compare: Any, tmp_path: Path) -> None:
    lines = [*steps(0, 12), "WARNING: 3 dataloader workers died, restarting them", *steps(12, 14),
             *TRACEBACK, "[W socket.cpp:663] rank 1 lost connection; the group stops"]
    assert snap_compare(WidgetApp(LogView(write_lines(tmp_path / "rank1.log", lines))), terminal_size=(80, 24))
