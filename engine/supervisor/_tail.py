"""Following files that other processes append to (rank logs, the event log): new whole lines only."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FileTail", "last_lines"]

MAX_READ = 1 << 20


class FileTail:
    """New complete lines of ``path`` since the last call; survives the file appearing late or being truncated."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = path
        self._offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def read(self) -> list[str]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size < self._offset:
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(MAX_READ)
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_READ:
            lines.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


def last_lines(path: Path, count: int, block: int = 1 << 16) -> list[str]:
    """The last ``count`` lines of ``path`` read backwards from the end (never the whole file)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:]
