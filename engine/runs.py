"""The run registry: what each run directory says about its run, for ``traindeck ls`` and ``logs``.

Torch-free and stdlib-only, so the CLI answers at once. ``run.json`` is written by the
supervisor through ``write_run_file``/``update_run_file`` (temp file + rename, so readers
never see half a file); runs started without it are described from ``events.jsonl`` and
``metrics.jsonl``. Files are only ever read from their ends. Layout and states: docs/runs.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from engine._errors import TraindeckError
from engine.supervisor._paths import read_pointers

__all__ = ["RUN_FILE", "TERMINAL_STATES", "RunInfo", "RunNotFound", "list_runs", "load_run", "read_run_file",
           "resolve_run", "supervisor_alive", "tail_offset", "update_run_file", "write_json_file", "write_run_file"]

RUN_FILE = "run.json"
TERMINAL_STATES = frozenset({"finished", "failed", "stopped", "killed"})
_MARKERS = (RUN_FILE, "events.jsonl", "metrics.jsonl", "logs")
_TAIL_BYTES = 256 * 1024
_BLOCK = 64 * 1024
_FAILURE_GRACE_S = 5.0


class RunNotFound(TraindeckError, LookupError):
    """No run, or more than one, matches what was asked for; the message names the candidates."""


@dataclass
class RunInfo:
    """One run as its directory describes it; ``live`` means its supervisor is running now."""

    name: str
    run_dir: Path
    state: str
    live: bool
    step: int | None = None
    epoch: int | None = None
    created: datetime | None = None
    updated: datetime | None = None
    attempt: int | None = None
    host: str | None = None
    supervisor_pid: int | None = None
    socket: str | None = None
    failure: dict[str, Any] | None = None
    command: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields as plain JSON values (path and times as strings), as ``ls --json`` prints them."""
        record = dataclasses.asdict(self)
        record["run_dir"] = str(self.run_dir)
        record["created"] = self.created.isoformat() if self.created else None
        record["updated"] = self.updated.isoformat() if self.updated else None
        return record


def read_run_file(run_dir: str | Path) -> dict[str, Any] | None:
    """``run.json`` as a dict, None when absent, ``{"state": "unknown", "reason": ...}`` when unreadable."""
    try:
        text = (Path(run_dir) / RUN_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return {"state": "unknown", "reason": f"cannot read {RUN_FILE}: {exc}"}
    try:
        record = json.loads(text)
    except ValueError as exc:
        return {"state": "unknown", "reason": f"{RUN_FILE} is not valid JSON ({exc})"}
    if not isinstance(record, dict):
        return {"state": "unknown", "reason": f"{RUN_FILE} does not hold a JSON object"}
    return record


def write_run_file(run_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Replace ``run.json`` atomically with ``record`` plus ``updated`` (now); returns what was written."""
    record = {**record, "updated": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    write_json_file(Path(run_dir) / RUN_FILE, record)
    return record


def write_json_file(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as indented JSON to a temp file, fsync it, and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=2, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update_run_file(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` and rewrite it atomically (for its single writer, the supervisor).

    Raises FileNotFoundError when there is no run.json yet and ValueError when it is damaged.
    """
    record = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{Path(run_dir) / RUN_FILE} does not hold a JSON object; rewrite it with write_run_file")
    return write_run_file(run_dir, {**record, **fields})


def supervisor_alive(pid: Any) -> bool:
    """Whether ``pid`` is a running traindeck supervisor of this user, not a dead one's reused pid."""
    if not _is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return b"engine.supervisor" in cmdline


def tail_offset(f: BinaryIO, lines: int, end: int | None = None) -> int:
    """Where the last ``lines`` lines of the binary file ``f`` (up to ``end``) begin; reads backwards in blocks."""
    end = f.seek(0, os.SEEK_END) if end is None else end
    if lines <= 0 or end == 0:
        return 0
    f.seek(end - 1)
    pos = end - 1 if f.read(1) == b"\n" else end
    count = 0
    while pos > 0:
        start = max(0, pos - _BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            count += 1
            if count == lines:
                return start + index + 1
        pos = start
    return 0


def load_run(run_dir: str | Path, name: str | None = None) -> RunInfo:
    """Everything ``run_dir`` says about its run; a missing or damaged file never raises."""
    run_dir = Path(run_dir)
    record = read_run_file(run_dir)
    step, epoch, metric_time = _metrics_tail(run_dir / "metrics.jsonl")
    if record is None:
        return _plain_run(run_dir, name, step, epoch, metric_time)
    state = record.get("state") if isinstance(record.get("state"), str) else "unknown"
    reason = record.get("reason") if isinstance(record.get("reason"), str) else None
    pid = _int(record.get("supervisor_pid"))
    host = record.get("host") if isinstance(record.get("host"), str) else None
    live = False
    if state not in TERMINAL_STATES and state != "unknown":
        live = (host is not None and host != socket.gethostname()) or supervisor_alive(pid)
        if not live:
            state, reason = "lost", f"run.json says {state!r} but its supervisor (pid {pid}) is gone"
    updated = _time(record.get("updated"))
    from_file, from_metrics = (_int(record.get("step")), _int(record.get("epoch"))), (step, epoch)
    newest_first = (from_file, from_metrics) if metric_time is None or (updated and updated > metric_time) \
        else (from_metrics, from_file)
    step, epoch = (a if a is not None else b for a, b in zip(*newest_first))
    command = record.get("command")
    return RunInfo(
        name=name or (record.get("name") if isinstance(record.get("name"), str) else run_dir.name),
        run_dir=run_dir, state=state, live=live, step=step, epoch=epoch,
        created=_time(record.get("created")) or _dir_time(run_dir), updated=updated or metric_time,
        attempt=_int(record.get("attempt")), host=host, supervisor_pid=pid,
        socket=record.get("socket") if isinstance(record.get("socket"), str) else None,
        failure=record.get("failure") if isinstance(record.get("failure"), dict) else None,
        command=[str(a) for a in command] if isinstance(command, list) else [], reason=reason,
    )


def list_runs(root: str | Path) -> list[RunInfo]:
    """Runs under ``root`` (``root/<name>``, sweep trials ``root/<sweep>/<trial>``) and live ones elsewhere; newest first."""
    found: dict[Path, RunInfo] = {}
    for run_dir, name in _run_dirs(Path(root)):
        found.setdefault(run_dir.resolve(), load_run(run_dir, name))
    try:
        pointers = read_pointers()
    except OSError:
        pointers = []
    for pointer in pointers:
        run_dir = Path(pointer["run_dir"])
        if run_dir.resolve() not in found and _looks_like_run(run_dir) and supervisor_alive(pointer.get("pid")):
            found[run_dir.resolve()] = load_run(run_dir)
    return sorted(found.values(), key=lambda r: r.created.timestamp() if r.created else 0.0, reverse=True)


def resolve_run(query: str | None, root: str | Path, live_only: bool = False) -> RunInfo:
    """The run ``query`` names: exact name, unique name prefix, or run directory; None means the one live run."""
    root = Path(root)
    runs = list_runs(root)
    if query is None:
        live = [r for r in runs if r.live]
        if len(live) == 1:
            return live[0]
        if live:
            raise RunNotFound(f"{len(live)} live runs ({_names(live)}): name one")
        if runs:
            raise RunNotFound(f"no live run; name one: {_names(runs)}")
        raise RunNotFound(f"no live run, and no runs under {root}/")
    run = _match(query, runs, root)
    if live_only and not run.live:
        raise RunNotFound(f"run '{run.name}' is not live (state {run.state})")
    return run


def _match(query: str, runs: list[RunInfo], root: Path) -> RunInfo:
    matches = [r for r in runs if r.name == query] or [r for r in runs if r.name.startswith(query)]
    if len(matches) == 1:
        return matches[0]
    path = Path(query)
    if _looks_like_run(path):
        return next((r for r in runs if r.run_dir.resolve() == path.resolve()), None) or load_run(path)
    if matches:
        names = _names(matches) if len({r.name for r in matches}) == len(matches) else \
            ", ".join(sorted(str(r.run_dir) for r in matches))
        raise RunNotFound(f"'{query}' is ambiguous: matches {names}")
    listing = f"runs: {_names(runs)}" if runs else "there are none"
    raise RunNotFound(f"no run named '{query}' under {root}/ ({listing})")


def _plain_run(run_dir: Path, name: str | None, step: int | None, epoch: int | None,
               metric_time: datetime | None) -> RunInfo:
    """A run started without the supervisor: its state from its last event and failure files."""
    last_event = _last_record(_tail_chunk(run_dir / "events.jsonl"))
    event_time = _time(last_event.get("time"))
    failed_at, failure = _last_failure(run_dir)
    if failure and failed_at > (event_time.timestamp() if event_time else 0.0) \
            and failed_at + _FAILURE_GRACE_S >= (metric_time.timestamp() if metric_time else 0.0):
        state, reason = "failed", None
    elif last_event.get("event") == "preempted":
        state, reason, failure = "preempted", None, None
    else:
        state, reason, failure = "unknown", "no run.json (started without the supervisor): its end is not recorded", None
    created = _time(_first_record(run_dir / "events.jsonl").get("time")) or \
        _time(_first_record(run_dir / "metrics.jsonl").get("time")) or _dir_time(run_dir)
    return RunInfo(name=name or run_dir.name, run_dir=run_dir, state=state, live=False, step=step, epoch=epoch,
                   created=created, updated=max((t for t in (event_time, metric_time) if t), default=None),
                   failure=failure, reason=reason)


def _last_failure(run_dir: Path) -> tuple[float, dict[str, Any] | None]:
    """When the newest ``failures/rank<N>.txt`` was written, and its rank and last traceback line."""
    try:
        mtime, path = max((p.stat().st_mtime, p) for p in (run_dir / "failures").glob("rank*.txt"))
        lines = path.read_text(errors="replace").strip().splitlines()
    except (OSError, ValueError):
        return 0.0, None
    return mtime, {"rank": _int(path.stem.removeprefix("rank")), "message": lines[-1] if lines else ""}


def _run_dirs(root: Path) -> Iterator[tuple[Path, str]]:
    for child in _subdirs(root):
        if _looks_like_run(child):
            yield child, child.name
        else:
            for trial in _subdirs(child):
                if _looks_like_run(trial):
                    yield trial, f"{child.name}/{trial.name}"


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []


def _looks_like_run(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _MARKERS)


def _metrics_tail(path: Path) -> tuple[int | None, int | None, datetime | None]:
    """Step and time of the last metrics line, and the epoch of the last line near the end that has one."""
    chunk = _tail_chunk(path)
    last = _last_record(chunk)
    if not last:
        return None, None, None
    epoch = _epoch(last) if _epoch(last) is not None else _epoch(_last_record(chunk, b'"epoch"'))
    return _int(last.get("step")), epoch, _time(last.get("time"))


def _tail_chunk(path: Path) -> bytes:
    """The whole lines within the last 256 KiB of ``path``; b"" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES)
            f.seek(start)
            chunk = f.read()
    except OSError:
        return b""
    return chunk[chunk.find(b"\n") + 1:] if start else chunk


def _last_record(chunk: bytes, key: bytes = b"") -> dict[str, Any]:
    """The last line of ``chunk`` holding a JSON object (and containing ``key``); {} when none does."""
    end = len(chunk)
    while end > 0:
        at = chunk.rfind(key, 0, end) if key else end - 1
        if at < 0:
            return {}
        start = chunk.rfind(b"\n", 0, at) + 1
        stop = chunk.find(b"\n", at)
        record = _parse(chunk[start:stop if stop >= 0 else len(chunk)])
        if record:
            return record
        end = start
    return {}


def _parse(line: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return record
    return {}


def _epoch(record: dict[str, Any]) -> int | None:
    metrics = record.get("metrics")
    return _int(metrics.get("epoch")) if isinstance(metrics, dict) else None


def _first_record(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return _parse(f.readline(_TAIL_BYTES))
    except OSError:
        return {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int | None:
    """``value`` as an int when it is one (JSON may spell it 3.0 or "3"), else None."""
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        number = float(value) if isinstance(value, (float, str)) else value
        if _is_int(number) or (isinstance(number, float) and number.is_integer()):
            return int(number)
    return None


def _time(value: Any) -> datetime | None:
    """A unix time or ISO-8601 string as an aware UTC datetime; None for anything else."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _dir_time(path: Path) -> datetime | None:
    with contextlib.suppress(OSError):
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    return None


def _names(runs: list[RunInfo], limit: int = 10) -> str:
    names = sorted(r.name for r in runs)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
