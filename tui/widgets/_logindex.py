"""The line index behind the log views: offsets of line ends, read on demand, and a merged index of several files."""

from __future__ import annotations

import os
import re
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate, islice
from pathlib import Path

CHUNK = 1 << 20
TAIL_BYTES = 1 << 20
MERGED_TAIL_LINES = 1000
MERGED_MAX_LINES = 500_000
LINE_CAP = 16_384
TRACEBACK_SCAN_LINES = 1000
_MARK = b"Traceback (most recent call last)"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ERROR = re.compile(r"^[\w.]*(?:Error|Exception)\b|\b(?:ERROR|CRITICAL|FATAL)\b")
_GUTTER = {"traceback": "!", "error": "!", "warning": "*", "": " "}


def _newlines(chunk: bytes, pos: int) -> array:
    """Offsets of the b"\\n" in ``chunk``, which starts at file offset ``pos`` (numpy for big chunks)."""
    if len(chunk) >= 1 << 16:
        try:
            import numpy
        except ImportError:
            pass
        else:
            found = numpy.flatnonzero(numpy.frombuffer(chunk, numpy.uint8) == 10) + pos
            return array("Q", found.astype(numpy.uint64).tobytes())
    parts = chunk.split(b"\n")
    parts.pop()
    return array("Q", islice(accumulate(map(len, parts), lambda at, n: at + n + 1, initial=pos - 1), 1, None))


def _scan(path: Path, start: int, stop: int, floor: int) -> tuple[array, list[int], int]:
    """Newline offsets and traceback-marker offsets in bytes [start, stop), and where reading ended.

    A marker that began before ``start`` (not before ``floor``) and ends after it is found too.
    """
    ends, marks, keep = array("Q"), [], len(_MARK) - 1
    with open(path, "rb") as f:
        f.seek(start - min(keep, start - floor))
        carry, pos = f.read(min(keep, start - floor)), start
        while pos < stop and (chunk := f.read(min(CHUNK, stop - pos))):
            ends.extend(_newlines(chunk, pos))
            if (i := (carry + chunk[:keep]).find(_MARK)) >= 0:
                marks.append(pos - len(carry) + i)
            i = chunk.find(_MARK)
            while i >= 0:
                marks.append(pos + i)
                i = chunk.find(_MARK, i + 1)
            carry, pos = (carry + chunk[-keep:])[-keep:], pos + len(chunk)
    return ends, marks, pos


def _clean(raw: bytes) -> str:
    """A line as a terminal would show it: decoded, no colour codes, last \\r segment, tabs expanded."""
    text = _ANSI.sub("", raw[:LINE_CAP].decode("utf-8", "replace").rstrip("\r"))
    return _CONTROL.sub("\ufffd", text.rpartition("\r")[2].expandtabs())


class _LineIndex:
    """One file's newline offsets from byte ``base`` on, and the lines where tracebacks start."""

    dropped = 0

    def __init__(self, path: Path, head: bool = True) -> None:
        self.path, self.head, self.generation, self.ino = path, head, 0, None
        self.base = self.size = 0
        self.ends, self.tracebacks = array("Q"), array("Q")
        self.head_pending = False
        self._tb_ends: dict[int, tuple[int | None, int]] = {}
        self.scan()

    def _restart(self, st: os.stat_result) -> None:
        """Forget everything; index from the start of the first line in the last ``TAIL_BYTES``."""
        self.generation, self.ino = self.generation + 1, st.st_ino
        self.ends, self.tracebacks, self._tb_ends = array("Q"), array("Q"), {}
        self.base = 0
        if st.st_size > TAIL_BYTES:
            with open(self.path, "rb") as f:
                f.seek(st.st_size - TAIL_BYTES)
                self.base = st.st_size - TAIL_BYTES + f.read(CHUNK).find(b"\n") + 1
        self.size, self.head_pending = self.base, self.base > 0 and self.head

    def scan(self) -> str | None:
        """Index the bytes appended since the last call: "grew", "reset" (shrank or replaced) or None."""
        before, reset = self.size, False
        try:
            st = os.stat(self.path)
            if reset := st.st_ino != self.ino or st.st_size < self.size:
                self._restart(st)
            if st.st_size > self.size:
                ends, marks, self.size = _scan(self.path, self.size, st.st_size, self.base)
                self.ends.extend(ends)
                self.tracebacks.extend(bisect_left(self.ends, mark) for mark in marks)
        except OSError:
            pass
        return "reset" if reset else "grew" if self.size > before else None

    def has_new_data(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return st.st_ino != self.ino or st.st_size != self.size

    def scan_head(self) -> tuple[int, array, array]:
        """Index the bytes before ``base`` (slow; run in a thread) for ``apply_head``."""
        ends, marks, _ = _scan(self.path, 0, self.base, 0)
        return self.generation, ends, array("Q", (bisect_left(ends, mark) for mark in marks))

    def apply_head(self, head: tuple[int, array, array]) -> int | None:
        """Prepend what ``scan_head`` found; the number of lines added, None if the file was reset since."""
        generation, ends, tracebacks = head
        if generation != self.generation or not self.head_pending:
            return None
        shift = len(ends)
        ends.extend(self.ends)
        tracebacks.extend(line + shift for line in self.tracebacks)
        self.ends, self.tracebacks, self.base, self.head_pending = ends, tracebacks, 0, False
        self._tb_ends = {start + shift: (None if end is None else end + shift, seen + shift)
                         for start, (end, seen) in self._tb_ends.items()}
        return shift

    @property
    def line_count(self) -> int:
        return len(self.ends) + (self.size > self._start(len(self.ends)))

    def _start(self, i: int) -> int:
        return self.base if i == 0 else self.ends[i - 1] + 1

    def _end(self, i: int) -> int:
        return self.ends[i] if i < len(self.ends) else self.size

    def read(self, first: int, count: int) -> list[str]:
        """Lines ``first`` to ``first + count - 1`` (fewer past the end), one read when they are near."""
        last = min(first + count, self.line_count)
        if first >= last:
            return []
        start, lines = self._start(first), []
        try:
            with open(self.path, "rb") as f:
                if self._end(last - 1) - start <= CHUNK:
                    f.seek(start)
                    data = f.read(self._end(last - 1) - start)
                    return [_clean(data[self._start(i) - start:self._end(i) - start]) for i in range(first, last)]
                for i in range(first, last):
                    f.seek(self._start(i))
                    lines.append(_clean(f.read(min(LINE_CAP, self._end(i) - self._start(i)))))
        except OSError:
            pass
        return lines + [""] * (last - first - len(lines))

    def lines(self, first: int, count: int, prefix: str = "") -> list[tuple[str, str]]:
        """``(text, kind)`` of lines; kind is "traceback", "error", "warning" or ""."""
        return [(prefix + text, self.kind(i, text)) for i, text in enumerate(self.read(first, count), first)]

    def kind(self, i: int, text: str) -> str:
        k = bisect_right(self.tracebacks, i) - 1
        if k >= 0:
            end = self._traceback_end(self.tracebacks[k])
            if end is None or i < end:
                return "traceback"
            if i == end:
                return "error"
        if _ERROR.search(text):
            return "error"
        return "warning" if "warn" in text.lower() else ""

    def _traceback_end(self, start: int) -> int | None:
        """The unindented line ending the traceback at ``start``; None while it is still being written."""
        end, seen = self._tb_ends.get(start, (None, start + 1))
        limit = min(len(self.ends), start + TRACEBACK_SCAN_LINES)
        while end is None and seen < limit:
            for i, text in enumerate(self.read(seen, min(64, limit - seen)), seen):
                if text and not text[0].isspace():
                    end = i
                    break
            seen = min(seen + 64, limit) if end is None else seen
        if end is None and seen >= start + TRACEBACK_SCAN_LINES:
            end = seen
        self._tb_ends[start] = (end, seen)
        return end

    def find(self, needle: str, line: int, forward: bool) -> int | None:
        """The first line after ``line`` (or last before it) holding ``needle``, reading the file in chunks."""
        pattern, count = needle.lower().encode(), self.line_count
        lo, hi = (line + 1, count) if forward else (0, line)
        if not pattern or lo >= hi or count == 0:
            return None
        lo, hi = self._start(max(lo, 0)), self._end(min(hi, count) - 1)
        try:
            with open(self.path, "rb") as f:
                while True:
                    at = lo if forward else max(lo, hi - CHUNK)
                    f.seek(at)
                    chunk = f.read(min(CHUNK, hi - at)).lower()
                    i = chunk.find(pattern) if forward else chunk.rfind(pattern)
                    if i >= 0:
                        return bisect_left(self.ends, at + i)
                    if not chunk or (at + len(chunk) >= hi if forward else at <= lo):
                        return None
                    if forward:
                        lo = at + len(chunk) - len(pattern) + 1
                    else:
                        hi = at + len(pattern) - 1
        except OSError:
            return None

    def last_traceback(self) -> int | None:
        return self.tracebacks[-1] if self.tracebacks else None


class _Merged:
    """Several files as one list of (file, line) pairs: each file's last lines, then lines as polls find them.

    Past ``MERGED_MAX_LINES`` the oldest half is dropped (counted in ``dropped``), so a long run stays small.
    """

    head_pending = False

    def __init__(self) -> None:
        self.files: list[_LineIndex] = []
        self.prefixes: list[str] = []
        self.taken: list[int] = []
        self.which, self.local = array("H"), array("Q")
        self.dropped = 0

    def add(self, path: Path, prefix: str) -> None:
        self.files.append(_LineIndex(path, head=False))
        self.prefixes.append(prefix)
        self.taken.append(0)
        self._take(len(self.files) - 1, tail=True)

    def _take(self, k: int, tail: bool = False) -> None:
        count = self.files[k].line_count
        first = max(self.taken[k], count - MERGED_TAIL_LINES) if tail else self.taken[k]
        self.which.extend([k] * (count - first))
        self.local.extend(range(first, count))
        self.taken[k] = count

    def scan(self) -> str | None:
        changed = None
        for k, index in enumerate(self.files):
            status = index.scan()
            if status == "reset":
                keep = [i for i, w in enumerate(self.which) if w != k]
                self.which = array("H", (self.which[i] for i in keep))
                self.local = array("Q", (self.local[i] for i in keep))
                self.taken[k], changed = 0, "reset"
            if status:
                self._take(k, tail=status == "reset")
                changed = changed or "grew"
        if len(self.which) > MERGED_MAX_LINES:
            cut = len(self.which) - MERGED_MAX_LINES // 2
            del self.which[:cut], self.local[:cut]
            self.dropped += cut
        return changed

    def has_new_data(self) -> bool:
        return any(index.has_new_data() for index in self.files)

    @property
    def line_count(self) -> int:
        return len(self.which)

    def lines(self, first: int, count: int) -> list[tuple[str, str]]:
        """Runs of consecutive lines of one file are read with one read."""
        out: list[tuple[str, str]] = []
        y, last = first, min(first + count, len(self.which))
        while y < last:
            k, start, run = self.which[y], self.local[y], 1
            while y + run < last and self.which[y + run] == k and self.local[y + run] == start + run:
                run += 1
            out += self.files[k].lines(start, run, self.prefixes[k])
            y += run
        return out

    def find(self, needle: str, line: int, forward: bool) -> int | None:
        needle, y = needle.lower(), line + 1 if forward else line - 1
        while 0 <= y < len(self.which):
            first = y if forward else max(0, y - 255)
            block = self.lines(first, 256 if forward else y - first + 1)
            hits = [i for i, (text, _) in enumerate(block, first) if needle in text.lower()]
            if hits:
                return hits[0] if forward else hits[-1]
            y = first + len(block) if forward else first - 1
        return None

    def last_traceback(self) -> int | None:
        for y in range(len(self.which) - 1, -1, -1):
            starts, line = self.files[self.which[y]].tracebacks, self.local[y]
            i = bisect_left(starts, line)
            if i < len(starts) and starts[i] == line:
                return y
        return None
