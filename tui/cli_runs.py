"""``traindeck ls`` and ``traindeck logs``: list runs, and print or follow a rank's output.

Torch-free; everything comes from run directories (``engine.runs``). Logs are read from
their end backwards and copied in blocks, so the tail of a many-gigabyte log prints at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from engine.runs import RunInfo, RunNotFound, list_runs, load_run, resolve_run, tail_offset
from tui.errors import CLIError

__all__ = ["add_run_commands", "cmd_logs", "cmd_ls"]

POLL_INTERVAL_S = 0.2
NEWEST_SHOWN = 20
_BLOCK = 64 * 1024
_MAX_LINE = 1024 * 1024


def age(created: datetime | None, now: datetime | None = None) -> str:
    """How long before ``now`` ``created`` was, in the unit that reads best ("45 s", "3 min", "2 h", "3 days")."""
    if created is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(timezone.utc)) - created).total_seconds())
    for limit, unit, name in ((120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h"), (float("inf"), 86400, "days")):
        if seconds < limit:
            return f"{seconds / unit:.0f} {name}"
    raise AssertionError("unreachable")


def print_table(rows: list[list[str]]) -> None:
    """Rows as columns aligned on their widest cell; a closed pipe (``| head``) ends it quietly."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    try:
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


def _is_under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def cmd_ls(args: argparse.Namespace) -> int:
    """List runs, newest first: those under --root-dir and live ones started elsewhere."""
    root = Path(args.root_dir)
    runs = list_runs(root)
    if args.json:
        print(json.dumps([run.to_json() for run in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs under {root}/ and no live runs elsewhere", file=sys.stderr)
        return 0
    older = [run for run in runs if not run.live][NEWEST_SHOWN:]
    shown = runs if args.all else [run for run in runs if run not in older]
    outside = any(not _is_under(run.run_dir, root) for run in shown)
    rows = [["NAME", "STATE", "STEP", "EPOCH", "AGE"] + (["DIR"] if outside else [])]
    for run in shown:
        row = [run.name, run.state, _dash(run.step), _dash(run.epoch), age(run.created)]
        rows.append(row + ([str(run.run_dir) if not _is_under(run.run_dir, root) else ""] if outside else []))
    print_table(rows)
    if len(shown) < len(runs):
        print(f"({len(runs) - len(shown)} older runs not shown; --all lists them)", file=sys.stderr)
    return 0


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the end of a rank's log (logs/rank<N>.log); with -f, keep printing while the run is live."""
    try:
        run = resolve_run(args.run, Path(args.root_dir))
    except RunNotFound as exc:
        raise CLIError(str(exc)) from exc
    follow = args.follow and run.live
    if args.follow and not run.live:
        print(f"traindeck: run '{run.name}' is {run.state}, not live: printing its log without following",
              file=sys.stderr)
    try:
        tails = [_LogTail(path, prefix, args.lines, final=not follow) for path, prefix in _logs(run, args.rank, follow)]
        if follow:
            _follow(run, args.rank, tails)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _drop_stdout()
    return 0


def _drop_stdout() -> None:
    """The reader went away (``traindeck ... | head``): send what is left to /dev/null, quietly."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _ranks(logs: Path) -> list[int]:
    names = (p.name.removeprefix("rank").removesuffix(".log") for p in logs.glob("rank*.log"))
    return sorted(int(n) for n in names if n.isdigit())


def _logs(run: RunInfo, rank: int | str, waiting: bool) -> list[tuple[Path, str]]:
    """The (path, line prefix) pairs to print; a live run being followed may have none yet."""
    logs = run.run_dir / "logs"
    ranks = _ranks(logs)
    if rank == "all":
        if ranks or waiting:
            return [(logs / f"rank{r}.log", f"[rank {r}] ") for r in ranks]
        raise CLIError(f"run '{run.name}' has no logs yet ({logs}/rank<N>.log appear when its ranks start)")
    if rank in ranks or waiting:
        return [(logs / f"rank{rank}.log", "")]
    if ranks:
        raise CLIError(f"run '{run.name}' has no log for rank {rank} (ranks with logs: "
                     f"{', '.join(map(str, ranks))})")
    raise CLIError(f"run '{run.name}' has no logs yet ({logs}/rank<N>.log appear when its ranks start)")


class _LogTail:
    """One log being printed: prints its last ``lines`` lines, then what is appended on each ``poll``."""

    def __init__(self, path: Path, prefix: str, lines: int, final: bool) -> None:
        self.path, self.prefix, self.offset, self.inode = path, prefix, 0, None
        self.poll(lines=lines, final=final)

    def poll(self, lines: int = 0, final: bool = False) -> None:
        """Print whole lines added since the last poll (and a last unfinished one when ``final``)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            info = os.fstat(f.fileno())
            if self.inode is not None and (info.st_ino != self.inode or info.st_size < self.offset):
                print(f"traindeck: {self.path} was truncated or replaced; reading it from the start", file=sys.stderr)
                self.offset = 0
            if self.inode is None:
                self.offset = tail_offset(f, lines, info.st_size) if lines else 0
            self.inode = info.st_ino
            self.offset = _copy(f, self.offset, info.st_size, self.prefix, final)


def _copy(f: BinaryIO, start: int, end: int, prefix: str, final: bool) -> int:
    """Print the whole lines of ``f`` in [start, end), each after ``prefix``; returns where printing stopped."""
    f.seek(start)
    pos, carry = start, b""
    while pos < end:
        block = f.read(min(_BLOCK, end - pos))
        if not block:
            break
        pos += len(block)
        data = carry + block
        cut = data.rfind(b"\n") + 1 or (len(data) if len(data) > _MAX_LINE else 0)
        _write(data[:cut], prefix)
        carry = data[cut:]
    if final and carry:
        _write(carry + b"\n", prefix)
        carry = b""
    return pos - len(carry)


def _write(data: bytes, prefix: str) -> None:
    text = data.decode("utf-8", errors="replace")
    if prefix and text:
        lines = text.split("\n")
        last = lines.pop()
        text = "".join(f"{prefix}{line}\n" for line in lines) + (prefix + last if last else "")
    sys.stdout.write(text)


def _follow(run: RunInfo, rank: int | str, tails: list[_LogTail]) -> None:
    """Print appended lines until the run is no longer live and every log has been read to its end."""
    while True:
        sys.stdout.flush()
        time.sleep(POLL_INTERVAL_S)
        live = load_run(run.run_dir, run.name).live
        if rank == "all":
            known = {tail.path for tail in tails}
            tails += [_LogTail(path, prefix, 0, False) for path, prefix in _logs(run, "all", True) if path not in known]
        for tail in tails:
            tail.poll(final=not live)
        if not live:
            sys.stdout.flush()
            return


def _rank(value: str) -> int | str:
    if value == "all":
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a rank number or 'all', got {value!r}")


def _lines(value: str) -> int:
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number of lines (0: the whole file), got {value!r}")


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``ls`` and ``logs`` on the ``traindeck`` subcommand parsers."""
    ls = sub.add_parser("ls", help=cmd_ls.__doc__, description=cmd_ls.__doc__)
    ls.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    ls.add_argument("--all", action="store_true",
                    help=f"list every run (default: live runs and the newest {NEWEST_SHOWN} others)")
    ls.add_argument("--json", action="store_true", help="print every run as a JSON list, for scripts")
    ls.set_defaults(func=cmd_ls)
    logs = sub.add_parser("logs", help=cmd_logs.__doc__, description=cmd_logs.__doc__)
    logs.add_argument("run", nargs="?", help="run name, unique prefix of one, or run directory "
                                             "(default: the only live run)")
    logs.add_argument("--rank", type=_rank, default=0, help="whose log: a rank number or 'all' (default 0)")
    logs.add_argument("-n", "--lines", type=_lines, default=100,
                      help="print the last LINES lines (default 100; 0: the whole file)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing appended lines until the run ends (Ctrl-C stops)")
    logs.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    logs.set_defaults(func=cmd_logs)
