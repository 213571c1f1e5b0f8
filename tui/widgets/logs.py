"""Rank log viewers that leave big, growing logs on disk: ``LogView``, ``MergedLogView`` and ``LogsPane``.

A view keeps only the offsets of the line ends (``array('Q')``, 8 bytes a line) and reads the
lines on screen with seek + read. Opening indexes the last MiB at once (the end shows at
once) and the rest in a thread; ``poll()`` reads only the bytes appended since. A file that
shrank or was replaced is indexed afresh. Invalid UTF-8 shows as U+FFFD, ANSI colour codes
are dropped and a carriage-return progress line shows its last state.

Gutter marks, so highlights survive NO_COLOR: "!" a traceback block (from "Traceback (most
recent call last)" to the unindented exception line that ends it, which is bold) or an
ERROR line, "*" a warning, ">" the current search match (matches are reversed). Search is
case-insensitive for ASCII letters.

The merged view starts with the last ``MERGED_TAIL_LINES`` lines of each file, file after
file in rank order, then appends new lines in the order polls find them (rank order within
one poll), each prefixed "[rank N] ".
"""

from __future__ import annotations

import re
from array import array
from pathlib import Path
from typing import Optional

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import on
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.cache import LRUCache
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.geometry import Size
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import TabbedContent, TabPane
from textual.worker import get_current_worker

from tui.widgets._logindex import _GUTTER, _LineIndex, _Merged

__all__ = ["LogView", "LogsPane", "MergedLogView"]


class LogView(ScrollView, can_focus=True):
    """A rank log read from disk on demand; follows new lines until the user scrolls up.

    Posts no messages; the owner calls ``poll()`` (on a timer or when the supervisor says new
    lines arrived) and ``search()`` (from its search input).
    """

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        overflow-y: scroll;
        overflow-x: auto;
        &:focus { background-tint: $foreground 5%; }
    }
    LogView > .log-view--traceback { color: $error; }
    LogView > .log-view--error { color: $error; text-style: bold; }
    LogView > .log-view--warning { color: $warning; }
    LogView > .log-view--match { text-style: reverse; }
    """
    COMPONENT_CLASSES = {"log-view--traceback", "log-view--error", "log-view--warning", "log-view--match"}
    BINDINGS = [
        Binding("up", "move(-1)", "Line up", show=False),
        Binding("down", "move(1)", "Line down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "top", "Top", show=False),
        Binding("end", "bottom", "Follow", show=False),
        Binding("n", "search_next", "Next match"),
        Binding("N", "search_previous", "Previous match"),
    ]

    follow: var[bool] = var(True)
    """Whether the view stays at the end as lines arrive; False once scrolled up, True again at the end."""
    match_line: var[Optional[int]] = var[Optional[int]](None)
    """The line of the current search match, if any."""
    search_pattern: var[str] = var("")
    """What ``search_next``/``search_previous`` look for; its matches are highlighted."""

    def __init__(self, path: str | Path | None = None, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        """``path``: the log file (need not exist yet); None makes an empty merged view (see ``MergedLogView``)."""
        super().__init__(name=name, id=id, classes=classes)
        self._doc: _LineIndex | _Merged = _Merged() if path is None else _LineIndex(Path(path))
        self._cache: LRUCache[int, tuple[str, str]] = LRUCache(1024)
        self._widest = 0
        self._jump_pending = False
        self.search_wrapped = False
        """Whether the last search went past the end (or start) and came round."""

    @property
    def line_count(self) -> int:
        return self._doc.line_count

    @property
    def indexing(self) -> bool:
        """True while the part of the file before its last MiB is still being indexed in a thread."""
        return self._doc.head_pending

    def lines(self, first: int, count: int) -> list[str]:
        """The text of lines ``first`` to ``first + count - 1`` as shown (merged views: with prefixes)."""
        return [text for text, _ in self._doc.lines(first, count)]

    def has_new_data(self) -> bool:
        """Whether the file grew since the last poll (one stat, nothing read)."""
        return self._doc.has_new_data()

    def poll(self) -> bool:
        """Read the bytes appended since the last poll and redraw; True if the file changed."""
        dropped = self._doc.dropped
        status = self._doc.scan()
        if status is None:
            return False
        self._cache.clear()
        if shift := self._doc.dropped - dropped:
            self.match_line = None if self.match_line is None or self.match_line < shift else self.match_line - shift
            if not self.follow:
                self.scroll_to(y=max(0, self.scroll_y - shift), animate=False)
        if status == "reset":
            self.match_line, self.follow = None, True
            if self.is_mounted:
                self._start_head()
        self._sync_size()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()
        return True

    def search(self, pattern: str, forward: bool = True) -> bool:
        """Go to the next (previous) line holding ``pattern``, case-insensitively, wrapping round; True if found.

        Starts after the current match when it is on screen, else from the top (bottom) line on screen.
        """
        self.search_pattern, self.search_wrapped = pattern, False
        top, height = self.scroll_offset.y, self.scrollable_content_region.height
        if self.match_line is not None and top <= self.match_line < top + height:
            at = self.match_line
        else:
            at = top - 1 if forward else top + height
        found = self._doc.find(pattern, at, forward) if pattern else None
        if found is None and pattern:
            found = self._doc.find(pattern, -1 if forward else self._doc.line_count, forward)
            self.search_wrapped = found is not None
        if found is None:
            self.match_line = None
            self.refresh()
            return False
        self.match_line = found
        self._show(found)
        return True

    def search_next(self) -> bool:
        return self.search(self.search_pattern, True)

    def search_previous(self) -> bool:
        return self.search(self.search_pattern, False)

    def jump_to_last_traceback(self) -> bool:
        """Put the start of the file's last traceback at the top; False if none (yet: see ``indexing``)."""
        line = self._doc.last_traceback()
        self._jump_pending = line is None and self._doc.head_pending
        if line is not None:
            self._show(line, top=True)
        return line is not None

    def action_move(self, lines: int) -> None:
        self.scroll_to(y=self.scroll_y + lines, animate=False)

    def action_page(self, pages: int) -> None:
        self.scroll_to(y=self.scroll_y + pages * max(1, self.scrollable_content_region.height - 1), animate=False)

    def action_top(self) -> None:
        self.scroll_to(y=0, animate=False)

    def action_bottom(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)

    def action_search_next(self, forward: bool = True) -> None:
        if not self.search_pattern:
            return
        if not self.search(self.search_pattern, forward):
            self.notify(f"not found: {self.search_pattern}", severity="warning")
        elif self.search_wrapped:
            self.notify("search wrapped round", timeout=2)

    def action_search_previous(self) -> None:
        self.action_search_next(forward=False)

    def on_mount(self) -> None:
        self._sync_size()
        self.scroll_end(animate=False, x_axis=False)
        self._start_head()

    def on_resize(self) -> None:
        if self.follow:
            self.scroll_end(animate=False, x_axis=False)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self.follow = round(new_value) >= self.max_scroll_y

    def watch_match_line(self) -> None:
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index, width, base = scroll_y + y, self.scrollable_content_region.width, self.rich_style
        if index >= self._doc.line_count:
            return Strip.blank(width, base)
        text, kind = self._line(index, scroll_y)
        style = base + self._style(kind) if kind else base
        body = Text(text, no_wrap=True, end="")
        body.stylize(style)
        if self.search_pattern:
            lowered, needle = text.lower(), self.search_pattern.lower()
            for match in re.finditer(re.escape(needle), lowered):
                body.stylize(self._style("match"), match.start(), match.end())
        mark = _GUTTER[kind] + (">" if index == self.match_line else " ")
        line = Strip(body.render(self.app.console), cell_len(text)).crop_extend(scroll_x, scroll_x + width - 2, base)
        return Strip.join([Strip([Segment(mark, style)], 2), line])

    def _style(self, kind: str) -> Style:
        return self.get_component_rich_style(f"log-view--{kind}", partial=True)

    def _line(self, index: int, scroll_y: int) -> tuple[str, str]:
        """A line from the cache; a miss reads the whole screen's worth in one go."""
        if index not in self._cache:
            for i, line in enumerate(self._doc.lines(scroll_y, max(self.size.height, index - scroll_y + 1)), scroll_y):
                self._cache[i] = line
                if cell_len(line[0]) > self._widest:
                    self._widest = cell_len(line[0])
                    self.call_later(self._sync_size)
        return self._cache.get(index) or ("", "")

    def _sync_size(self) -> None:
        self.virtual_size = Size(self._widest + 2, self._doc.line_count)

    def _show(self, line: int, top: bool = False) -> None:
        height = self.scrollable_content_region.height
        if top or not self.scroll_y <= line < self.scroll_y + height:
            self.scroll_to(y=line if top else max(0, line - height // 3), animate=False)
        self.refresh()

    def _start_head(self) -> None:
        if self._doc.head_pending:
            self.run_worker(self._index_head, thread=True, exclusive=True, group="log-head", exit_on_error=False)

    def _index_head(self) -> None:
        head = self._doc.scan_head()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._apply_head, head)

    def _apply_head(self, head: tuple[int, array, array]) -> None:
        shift = self._doc.apply_head(head)
        if shift is None:
            return
        self._cache.clear()
        if self.match_line is not None:
            self.match_line += shift
        following = self.follow
        self._sync_size()
        if following:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.scroll_to(y=self.scroll_y + shift, animate=False)
        if self._jump_pending:
            self.jump_to_last_traceback()
        self.refresh()


class MergedLogView(LogView):
    """Several rank logs in one view, each line prefixed (see the module docstring for the order)."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(None, name=name, id=id, classes=classes)

    def add_file(self, path: str | Path, prefix: str) -> None:
        """Add a file: its last lines now, its new lines as polls find them."""
        assert isinstance(self._doc, _Merged)
        self._doc.add(Path(path), prefix)
        self._cache.clear()
        if self.is_mounted:
            self._sync_size()
            if self.follow:
                self.scroll_end(animate=False, immediate=True, x_axis=False)


class LogsPane(Widget):
    """A "merged" tab and one tab per rank log (added as the logs appear); tabs that grew unseen show "•"."""

    DEFAULT_CSS = """
    LogsPane { height: 1fr; }
    LogsPane > TabbedContent { height: 1fr; }
    LogsPane TabPane { padding: 0; height: 1fr; }
    LogsPane LogView { height: 1fr; }
    """

    def __init__(self, logs_dir: str | Path, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        """``logs_dir``: the run's ``logs/`` directory, holding ``rank<N>.log`` files."""
        super().__init__(name=name, id=id, classes=classes)
        self.logs_dir = Path(logs_dir)
        self.views: dict[int, LogView] = {}
        self.merged = MergedLogView(id="log-merged")
        self._initial = self._found_ranks()

    def compose(self) -> ComposeResult:
        with TabbedContent(id="log-tabs"):
            yield TabPane("merged", self.merged, id="log-tab-merged")
            for rank in self._initial:
                yield self._pane(rank)

    def _found_ranks(self) -> list[int]:
        paths = self.logs_dir.glob("rank*.log") if self.logs_dir.is_dir() else ()
        return sorted(int(p.stem[4:]) for p in paths if p.stem[4:].isdigit())

    def _pane(self, rank: int) -> TabPane:
        path = self.logs_dir / f"rank{rank}.log"
        self.views[rank] = LogView(path, id=f"log-rank{rank}")
        self.merged.add_file(path, f"[rank {rank}] ")
        return TabPane(f"rank {rank}", self.views[rank], id=f"log-tab-rank{rank}")

    @property
    def _tabs(self) -> TabbedContent:
        return self.query_one("#log-tabs", TabbedContent)

    @property
    def active_view(self) -> LogView | None:
        pane = self._tabs.active_pane
        return None if pane is None else pane.query_one(LogView)

    def add_rank(self, rank: int) -> AwaitComplete:
        """Add a tab for ``rank`` (after the lower ranks) and its file to the merged view; no-op if present."""
        if rank in self.views:
            return AwaitComplete.nothing()
        after = max((r for r in self.views if r < rank), default=None)
        pane = self._pane(rank)
        return self._tabs.add_pane(pane, after="log-tab-merged" if after is None else f"log-tab-rank{after}")

    def poll(self) -> None:
        """Add tabs for new rank logs, read the shown view's new lines, and mark other tabs that grew."""
        for rank in self._found_ranks():
            self.add_rank(rank)
        active = self.active_view
        for rank, view in [(None, self.merged), *self.views.items()]:
            if view is active:
                view.poll()
            elif view.has_new_data():
                self._label(rank, "•")

    def show_rank(self, rank: int) -> AwaitComplete:
        """Switch to ``rank``'s tab (adding it if needed); optionally awaitable."""
        return AwaitComplete(self._show(rank, failure=False))

    def show_failure(self, rank: int) -> AwaitComplete:
        """Switch to ``rank``'s tab and put the start of its last traceback at the top."""
        return AwaitComplete(self._show(rank, failure=True))

    async def _show(self, rank: int, failure: bool) -> None:
        await self.add_rank(rank)
        self._tabs.active = f"log-tab-rank{rank}"
        view = self.views[rank]
        view.poll()
        if failure:
            view.jump_to_last_traceback()

    def _label(self, rank: int | None, mark: str = "") -> None:
        pane_id = "log-tab-merged" if rank is None else f"log-tab-rank{rank}"
        try:
            self._tabs.get_tab(pane_id).label = ("merged" if rank is None else f"rank {rank}") + (f" {mark}" if mark else "")
        except NoMatches:
            pass

    @on(TabbedContent.TabActivated)
    def _shown(self, event: TabbedContent.TabActivated) -> None:
        view = event.pane.query_one(LogView)
        view.poll()
        self._label(next((r for r, v in self.views.items() if v is view), None))
