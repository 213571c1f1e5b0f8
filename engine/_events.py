"""The run's append-only event log, ``<run dir>/events.jsonl``: one JSON object per line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["append_event", "find_event"]


def append_event(run_dir: Path | None, kind: str, source: str | None = None, **fields: Any) -> dict[str, Any] | None:
    """Append one event (and return it); a single O_APPEND write, so lines from several processes never interleave."""
    if run_dir is None:
        return None
    record = {"time": time.time(), "event": kind, "source": source or f"rank{os.environ.get('RANK', '0')}", **fields}
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(Path(run_dir) / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return record


def find_event(run_dir: Path, kind: str, since: float = 0.0) -> dict[str, Any] | None:
    """The last ``kind`` event written at or after ``since`` (unix time), or None."""
    found = None
    try:
        with open(Path(run_dir) / "events.jsonl") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == kind and record.get("time", 0) >= since:
                    found = record
    except OSError:
        return None
    return found
