"""Reading and writing checkpoint files: atomic writes, verified safe loads, clear errors.

The file layout lives in ``engine._checkpoint_format`` (readable without torch). A save
streams ``torch.save`` into a temp file next to the target while hashing it, fills in
the reserved header, fsyncs, renames over the target and fsyncs the directory: a crash
at any moment leaves the previous file at the path intact. A temp file left behind by a
killed writer is removed by the next save to the same path (a live writer holds an
``flock`` on its temp file, so only dead writers' files are removed).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from engine._checkpoint_format import (
    FORMAT_VERSION,
    MAGIC,
    check_payload,
    encode_header,
    parse_header,
    read_header,
    reserved_header_width,
    temp_prefix,
    verify,
)
from engine._errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "read_header", "verify"]

_TEMP_SUFFIX = ".tmp"


class _HashingSink:
    """A write-only stream for ``torch.save`` that hashes and counts what it forwards to ``f``.

    torch.save swallows an exception raised by ``write`` and fails later with an unrelated
    message, so the first OSError is kept here and re-raised by the caller.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(data).cast("B")
        try:
            self._f.write(view)
        except OSError as exc:
            self.error = exc
            raise
        self._digest.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class _PayloadReader(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``f`` starting at ``offset``.

    Lets ``torch.load`` read the payload straight from the file, so it is never held in
    memory as one more copy beside the loaded tensors.
    """

    def __init__(self, f: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self._f = f
        self._offset = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + pos < 0:
            raise ValueError(f"negative seek position {base + pos}")
        self._pos = base + pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._length - self._pos))
        if want == 0:
            return 0
        self._f.seek(self._offset + self._pos)
        got = self._f.readinto(view[:want]) or 0
        self._pos += got
        return got


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    return f"{reason} ({name})" if name else reason


def _lock(fd: int, blocking: bool) -> bool | None:
    """Take an exclusive flock: True if taken, False if another process holds it, None if unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _remove_dead_temps(path: Path) -> None:
    """Delete temp files of earlier saves to ``path`` whose writer has died (best effort)."""
    prefix = temp_prefix(path)
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(_TEMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        temp = path.parent / name
        try:
            fd = os.open(temp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, blocking=False) is True:
                temp.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create and lock a fresh temp file beside ``path`` (mode 0666 less the umask, like a normal file).

    A dead-temp sweep by another saver may unlink the file between its creation and the
    lock; then its link count is 0 and a new one is made.
    """
    while True:
        temp = path.parent / f"{temp_prefix(path)}{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _lock(fd, blocking=True)
            if os.fstat(fd).st_nlink > 0:
                return fd, temp
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Write ``state`` to ``path`` atomically; the previous file at ``path`` survives any crash.

    ``summary`` (step, epoch, metrics, world_size, ...) goes into the JSON header, where
    ``traindeck ckpt inspect`` reads it without torch. OS failures (disk full, file too
    large, permissions) raise CheckpointError and leave no temp file behind.
    """
    path = Path(path)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    width = reserved_header_width(created, summary)
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        fd, temp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(b" " * (width - 1) + b"\n")
            sink = _HashingSink(f)
            try:
                torch.save(state, sink)
            except Exception:
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.seek(len(MAGIC))
            f.write(encode_header(sink.size, sink.hexdigest(), created, summary, width))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        temp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {_os_reason(exc)}") from exc
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, *, verify_checksum: bool = True) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, checking its header, length and sha256 first.

    Loading is ``weights_only``: nothing in the file can run code. Any defect raises
    CheckpointError naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            header = parse_header(f, path)
            if verify_checksum:
                check_payload(f, path, header)
            payload = _PayloadReader(f, header["payload_offset"], header["payload_bytes"])
            try:
                state = torch.load(payload, map_location="cpu", weights_only=True)
            except OSError:
                raise
            except Exception as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                intact = "an intact payload" if verify_checksum else "a payload (checksum not checked)"
                raise CheckpointError(f"checkpoint {path} has {intact} that torch cannot load safely "
                                      f"({type(exc).__name__}: {first_line})") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_os_reason(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def check_compatible(module: Any, saved: dict[str, Any], path: Path) -> None:
    """Refuse, before touching ``module``, a state dict whose keys or shapes differ from it."""
    current = module.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    reshaped = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                for k, v in current.items() if k in saved and hasattr(saved[k], "shape")
                and tuple(saved[k].shape) != tuple(v.shape)]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"not in the model: {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if reshaped:
            parts.append("different shapes: " + "; ".join(reshaped[:5]))
        raise CheckpointError(f"checkpoint {path} does not match {type(module).__name__} (" + ", ".join(parts)
                              + "); was the model changed since it was saved?")
