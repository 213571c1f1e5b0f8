"""The checkpoint file format, readable without torch: header, checksum, temp-file names.

A checkpoint file is three parts::

    TRAINDECK-CKPT\\n                     magic line (15 bytes)
    {"format_version": 1, ...}\\n          one JSON header line, space-padded before the newline
    <payload_bytes bytes>                 torch.save(state), zip container

The header holds ``format_version``, ``payload`` (``"torch.save"``), ``payload_bytes``,
``sha256`` (hex digest of the payload), ``created`` (ISO 8601, UTC) and ``summary``
(whatever the writer passed: step, epoch, metrics, world_size, ...). Everything here
uses only json/hashlib/os so that the CLI can inspect and verify checkpoints without
importing torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import IO, Any

from engine._errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "encode_header",
    "reserved_header_width",
    "parse_header",
    "read_header",
    "check_payload",
    "verify",
    "temp_prefix",
    "jsonable",
]

MAGIC = b"TRAINDECK-CKPT\n"
FORMAT_VERSION = 1
PAYLOAD_KIND = "torch.save"
MAX_HEADER_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_REQUIRED = {"format_version": int, "payload_bytes": int, "sha256": str, "summary": dict}


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON: non-finite floats become "nan"/"inf", scalars with ``item()`` become numbers.

    A checkpoint must never fail to save because a summary held a numpy float or a 0-d tensor.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def encode_header(payload_bytes: int, sha256: str, created: str, summary: dict[str, Any] | None,
                  width: int | None = None) -> bytes:
    """The header line, padded with spaces to ``width`` bytes (newline included) when given."""
    header = {
        "format_version": FORMAT_VERSION,
        "payload": PAYLOAD_KIND,
        "payload_bytes": payload_bytes,
        "sha256": sha256,
        "created": created,
        "summary": jsonable(summary or {}),
    }
    line = json.dumps(header, allow_nan=False, separators=(", ", ": ")).encode()
    if width is None:
        return line + b"\n"
    if len(line) + 1 > width:
        raise ValueError(f"header of {len(line) + 1} bytes does not fit its reserved {width} bytes")
    return line + b" " * (width - len(line) - 1) + b"\n"


def reserved_header_width(created: str, summary: dict[str, Any] | None) -> int:
    """Bytes to reserve for the header before the payload's length and digest are known."""
    return len(encode_header(2**63 - 1, "0" * 64, created, summary))


def parse_header(f: IO[bytes], path: Path) -> dict[str, Any]:
    """Read magic and header from ``f`` (at offset 0) and add ``payload_offset``; raises CheckpointError."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        if magic.startswith(_ZIP_MAGIC):
            raise CheckpointError(f"{path} is not a traindeck checkpoint (it is a plain torch.save file; "
                                  "load it with torch.load)")
        if MAGIC.startswith(magic):
            raise CheckpointError(f"checkpoint {path} is truncated: the file ends inside the magic line")
        raise CheckpointError(f"{path} is not a traindeck checkpoint (no TRAINDECK-CKPT magic line)")
    line = f.readline(MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_HEADER_BYTES:
            raise CheckpointError(f"checkpoint {path} has a corrupt header: no end of line in its first "
                                  f"{MAX_HEADER_BYTES} bytes")
        raise CheckpointError(f"checkpoint {path} is truncated: the file ends inside the header "
                              f"({len(line)} bytes of header)")
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has a corrupt header (not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt header (a JSON {type(header).__name__}, "
                              "not an object)")
    version = header.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, which is newer than this "
                              f"traindeck understands ({FORMAT_VERSION}); upgrade traindeck to read it")
    for key, kind in _REQUIRED.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise CheckpointError(f"checkpoint {path} has a corrupt header: {key!r} is missing or not "
                                  f"a JSON {kind.__name__}")
    if version < 1 or header["payload_bytes"] < 0 or len(header["sha256"]) != 64:
        raise CheckpointError(f"checkpoint {path} has a corrupt header: impossible values "
                              f"(format_version={version}, payload_bytes={header['payload_bytes']})")
    header["payload_offset"] = f.tell()
    return header


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of the checkpoint at ``path``, plus ``payload_offset``; reads only the first line(s).

    Raises CheckpointError when the file is missing, not a checkpoint, or from a newer traindeck.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return parse_header(f, path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc


def check_payload(f: IO[bytes], path: Path, header: dict[str, Any]) -> None:
    """Check the payload's length and sha256 by streaming it; raises CheckpointError naming the reason.

    ``f`` is left at an unspecified position.
    """
    expected = header["payload_bytes"]
    total = os.fstat(f.fileno()).st_size - header["payload_offset"]
    if total < expected:
        raise CheckpointError(f"checkpoint {path} is truncated: payload is {total} of {expected} bytes")
    if total > expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: {total - expected} unexpected bytes after "
                              f"the {expected}-byte payload")
    f.seek(header["payload_offset"])
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    remaining = expected
    while remaining:
        got = f.readinto(view[:min(remaining, CHUNK_BYTES)])
        if not got:
            raise CheckpointError(f"checkpoint {path} is truncated: payload is {expected - remaining} of "
                                  f"{expected} bytes")
        digest.update(view[:got])
        remaining -= got
    if digest.hexdigest() != header["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch (sha256 of the payload is "
                              f"{digest.hexdigest()[:16]}…, the header says {header['sha256'][:16]}…)")


def verify(path: str | Path) -> tuple[bool, str]:
    """(True, "sha256 verified") for an intact checkpoint, else (False, the reason); never raises."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = parse_header(f, path)
            check_payload(f, path, header)
    except CheckpointError as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"cannot read checkpoint {path}: {exc.strerror or exc}"
    return True, f"sha256 of the {header['payload_bytes']}-byte payload verified"


def temp_prefix(path: Path) -> str:
    """Name prefix of the temp files a save to ``path`` writes next to it (``.NAME.`` + random + ``.tmp``)."""
    return f".{path.name}."
