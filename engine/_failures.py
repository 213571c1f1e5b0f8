"""A failing rank's traceback, written where the launcher reads it back to report it first."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

__all__ = ["write_failure", "report_failures", "failed_ranks"]


def write_failure(run_dir: Path | None, rank: int, exc: BaseException) -> None:
    """``<run dir>/failures/rank<N>.txt`` with the traceback (best effort: never masks ``exc``)."""
    if run_dir is None:
        return
    try:
        directory = Path(run_dir) / "failures"
        directory.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (directory / f"rank{rank}.txt").write_text(text)
    except OSError:
        pass


def report_failures(run_dir: Path, since: float) -> list[int]:
    """Print each failed rank and its traceback to stderr, first failure first; returns those ranks.

    Only files written at or after ``since`` (unix time: when the launch started) count: a rerun in the same run directory (``--resume``) must not report the
    failures of the run before it. The first file written is the root cause: the other
    ranks usually fail because of it (gloo's "Connection closed by peer"), so they come
    after it whatever their rank.
    """
    directory = Path(run_dir) / "failures"
    ranks = failed_ranks(run_dir, since)
    for rank in ranks:
        text = (directory / f"rank{rank}.txt").read_text().rstrip()
        last = text.splitlines()[-1] if text else "no traceback"
        print(f"traindeck: rank {rank} failed: {last}\n{text}\n", file=sys.stderr)
    return ranks


def failed_ranks(run_dir: Path, since: float) -> list[int]:
    """Ranks that wrote a traceback at or after ``since``, root cause (the first written) first."""
    directory = Path(run_dir) / "failures"
    if not directory.is_dir():
        return []
    files = []
    for path in directory.glob("rank*.txt"):
        try:
            mtime_ns = path.stat().st_mtime_ns
        except OSError:
            continue
        if mtime_ns >= since * 1e9:
            files.append((mtime_ns, int(path.stem.removeprefix("rank"))))
    return [rank for _, rank in sorted(files)]
