"""Where a run's control socket lives: a private per-user directory, outside the run directory.

Unix socket paths are short (108 bytes) and network filesystems do not carry sockets, so
the socket goes to ``$XDG_RUNTIME_DIR/traindeck`` (or ``/tmp/traindeck-<uid>``), a 0700
directory. Beside each socket a ``<id>.json`` pointer names the run directory, so
``traindeck ls`` finds live runs started from any working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = ["socket_dir", "socket_path", "pointer_path", "write_pointer", "read_pointers"]

SOCKET_DIR_ENV = "TRAINDECK_SOCKET_DIR"


def socket_dir() -> Path:
    """The per-user socket directory, created 0700; refuses one owned by someone else or open to others."""
    override = os.environ.get(SOCKET_DIR_ENV)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if override:
        path = Path(override)
    elif runtime and Path(runtime).is_dir():
        path = Path(runtime) / "traindeck"
    else:
        path = Path("/tmp") / f"traindeck-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.getuid()}; remove it or set "
                              f"${SOCKET_DIR_ENV}")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _socket_id(run_dir: Path) -> str:
    """A short file name for a run: readable name plus a hash of the absolute run directory."""
    resolved = str(Path(run_dir).resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name)[:40]
    return f"{readable}-{digest}"


def socket_path(run_dir: Path) -> Path:
    return socket_dir() / f"{_socket_id(run_dir)}.sock"


def pointer_path(run_dir: Path) -> Path:
    return socket_dir() / f"{_socket_id(run_dir)}.json"


def write_pointer(run_dir: Path, pid: int) -> Path:
    """Record that the supervisor ``pid`` serves ``run_dir`` (read by ``traindeck ls``)."""
    path = pointer_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_dir": str(Path(run_dir).resolve()), "pid": pid,
                               "socket": str(socket_path(run_dir))}))
    os.replace(tmp, path)
    return path


def read_pointers() -> list[dict[str, Any]]:
    """Every pointer in the socket directory (live or stale; the caller checks the pid)."""
    found = []
    for path in sorted(socket_dir().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("run_dir"), str):
            record["pointer"] = str(path)
            found.append(record)
    return found
