"""The supervisor's socket protocol: every message type, its fields, and how a line is checked.

One JSON object per line over a unix socket. Both sides import this module (the
supervisor, the ranks, the CLI and the TUI), so a message is spelled in one place;
``docs/protocol.md`` is the same contract in prose. Imports no torch.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_LINE_BYTES",
    "ProtocolError",
    "ACTIONS",
    "TOPICS",
    "STAGES",
    "encode",
    "decode",
    "check",
]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20  # a longer line is refused and the connection closed
MAX_PENDING_MESSAGES = 2000  # live messages queued for one client before the oldest are dropped

ROLES = ("client", "rank")
ACTIONS = ("pause", "resume", "checkpoint", "stop", "kill", "set")
TOPICS = ("metrics", "telemetry", "logs", "events", "state")
STAGES = ("train", "validate", "test", "predict")  # a metrics point's optional "stage": an epoch-end reduction

_Number = (int, float)
# field -> (accepted types, required). Unknown fields are ignored, so either side may add optional ones.
_SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # both directions, first message of a connection
    "hello": {"version": ((int,), True), "role": ((str,), True), "name": ((str,), False),
              "rank": ((int,), False), "local_rank": ((int,), False), "pid": ((int,), False),
              "host": ((str,), False), "device": ((str,), False)},
    # client -> supervisor
    "subscribe": {"id": ((int, str), True), "topics": ((list,), True)},
    "command": {"id": ((int, str), True), "action": ((str,), True), "args": ((dict,), False)},
    "tail": {"id": ((int, str), True), "rank": ((int,), True), "lines": ((int,), True)},
    # rank -> supervisor
    "metrics": {"points": ((list,), True)},
    "progress": {"rank": ((int,), True), "stage": ((str,), True), "state": ((str,), True),
                 "epoch": ((int,), True), "step": ((int,), True), "batch": ((int,), True),
                 "batches": ((int,), False), "step_time": (_Number, False), "max_steps": ((int,), False),
                 "max_epochs": ((int,), False), "time": (_Number, True)},
    "applied": {"id": ((int, str), True), "ok": ((bool,), True), "step": ((int,), False),
                "error": ((str,), False), "detail": ((dict,), False)},
    # supervisor -> client
    "welcome": {"version": ((int,), True), "run": ((str,), True), "run_dir": ((str,), True)},
    "reply": {"id": ((int, str), True), "ok": ((bool,), True), "error": ((str,), False)},
    "snapshot": {"history": ((dict,), True), "state": ((dict,), True), "logs": ((dict,), True),
                 "events": ((list,), True), "telemetry": ((dict,), False)},
    "state": {"state": ((dict,), True)},
    "telemetry": {"sample": ((dict,), True)},
    "log": {"rank": ((int,), True), "lines": ((list,), True)},
    "event": {"event": ((dict,), True)},
    "dropped": {"count": ((int,), True)},
    "error": {"error": ((str,), True), "id": ((int, str), False)},
    "bye": {"reason": ((str,), False)},
}

# What each side may send; anything else from that side is answered with an error.
FROM_CLIENT = frozenset({"hello", "subscribe", "command", "tail"})
FROM_RANK = frozenset({"hello", "metrics", "progress", "applied"})


class ProtocolError(ValueError):
    """A line that is not a valid message; the text says what was wrong, for the error reply."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of UTF-8 JSON; non-finite floats become null, which JSON can hold."""
    try:
        text = json.dumps(message, separators=(",", ":"), allow_nan=False, default=_jsonable)
    except ValueError:
        text = json.dumps(_nulled(message), separators=(",", ":"), allow_nan=False, default=_jsonable)
    return (text + "\n").encode()


def _nulled(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulled(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def decode(line: bytes | str) -> dict[str, Any]:
    """Parse and check one line; raises ProtocolError naming the problem."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes exceeds the limit of {MAX_LINE_BYTES}")
    try:
        message = json.loads(line, parse_float=_parse_finite, parse_constant=_parse_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    check(message)
    return message


def _parse_finite(text: str) -> float:
    """A JSON number as a float; NaN, Infinity and overflowing literals are refused, since encode cannot send them on."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text[:20]}")
    return value


def check(message: Any) -> None:
    """Raise ProtocolError unless ``message`` is an object of a known type with well-typed fields."""
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing string field 'type'")
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    for field, (types, required) in schema.items():
        if field not in message or message[field] is None:
            if required:
                raise ProtocolError(f"{kind}: missing field {field!r}")
            continue
        value = message[field]
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(f"{kind}: field {field!r} must be {_names(types)}, got bool")
        if not isinstance(value, types):
            raise ProtocolError(f"{kind}: field {field!r} must be {_names(types)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{kind}: field {field!r} must be finite")
    if kind == "hello" and message["role"] not in ROLES:
        raise ProtocolError(f"hello: role must be one of {', '.join(ROLES)}, got {message['role']!r}")
    if kind == "command" and message["action"] not in ACTIONS:
        raise ProtocolError(f"command: unknown action {message['action']!r}; one of {', '.join(ACTIONS)}")
    if kind == "subscribe":
        unknown = [t for t in message["topics"] if t not in TOPICS]
        if unknown:
            raise ProtocolError(f"subscribe: unknown topics {unknown}; known: {', '.join(TOPICS)}")
    if kind == "tail" and not 0 < message["lines"] <= 100_000:
        raise ProtocolError("tail: lines must be between 1 and 100000")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "dict": "an object",
                        "list": "an array", "bool": "true/false"}[t.__name__] for t in types)
