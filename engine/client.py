"""A client of a run's supervisor socket, for the CLI, the TUI and tests; imports no torch.

``Client`` blocks (a socket with timeouts); ``AsyncClient`` does the same on asyncio, where
one task may ``recv`` live messages while another waits in ``request``. Messages that
arrive while a reply is awaited are kept, in order, for ``recv``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from engine._errors import TraindeckError
from engine.protocol import PROTOCOL_VERSION, ProtocolError, check, encode

__all__ = ["ConnectError", "RequestError", "Client", "AsyncClient"]

MAX_INCOMING_BYTES = 64 << 20  # a snapshot may be far longer than what peers may send the supervisor

Match = Callable[[dict], bool]


class ConnectError(TraindeckError, ConnectionError):
    """The supervisor cannot be reached, refused this client, or hung up; the message names the socket."""


class RequestError(TraindeckError):
    """The supervisor answered a request with an error or ``ok: false``."""


def _parse(line: bytes) -> dict:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the supervisor sent a line that is not JSON: {exc}") from None
    check(message)
    return message


def _answers(id: int | str) -> Match:
    return lambda m: m["type"] in ("reply", "error") and m.get("id") == id


def _is_snapshot(message: dict) -> bool:
    return message["type"] == "snapshot"


class _Session:
    """What both clients share: the hello, request ids, and the inbox of messages not yet taken."""

    def __init__(self, path: str | Path, name: str, role: str, timeout: float, hello_fields: dict) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.welcome: dict | None = None
        self._hello = {"type": "hello", "version": PROTOCOL_VERSION, "role": role, "name": name, **hello_fields}
        self._ids = itertools.count(1)
        self._inbox: deque[dict] = deque()
        self._claims: list[Match] = []  # messages a request or subscribe is waiting for; recv leaves them

    def _unclaimed(self, message: dict) -> bool:
        return not any(claim(message) for claim in self._claims)

    def _take(self, match: Match) -> dict | None:
        for i, message in enumerate(self._inbox):
            if match(message):
                del self._inbox[i]
                return message
        return None

    def _stamp(self, message: dict) -> dict:
        return {**message, "id": next(self._ids)}

    def _welcomed(self, message: dict | None) -> dict:
        if message is None:
            raise ConnectError(f"{self.path}: no welcome from the supervisor within {self.timeout:g} s")
        if message["type"] == "error":
            raise ConnectError(f"{self.path}: the supervisor refused the connection: {message['error']}")
        if message["type"] != "welcome" or message["version"] != PROTOCOL_VERSION:
            raise ConnectError(f"{self.path}: wrong protocol version or greeting ({message}); "
                               f"this client speaks version {PROTOCOL_VERSION}")
        self.welcome = message
        return message

    def _connect_error(self, exc: OSError) -> ConnectError:
        reason = {FileNotFoundError: "no such socket (has the run ended? `traindeck ls` lists live runs)",
                  ConnectionRefusedError: "connection refused (a stale socket: its supervisor has exited)",
                  PermissionError: "permission denied (the socket belongs to another user)"}.get(type(exc), str(exc))
        return ConnectError(f"{self.path}: {reason}")

    def _closed_error(self) -> ConnectError:
        return ConnectError(f"{self.path}: the supervisor closed the connection")


class Client(_Session):
    """A blocking connection; use as a context manager, or ``connect`` and ``close``. Not thread-safe."""

    def __init__(self, path: str | Path, name: str = "cli", role: str = "client", timeout: float = 5.0,
                 **hello_fields: Any) -> None:
        super().__init__(path, name, role, timeout, hello_fields)
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def __enter__(self) -> Client:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> dict:
        """Connect and say hello; returns the welcome (``run``, ``run_dir``) or raises ConnectError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise self._connect_error(exc) from exc
        self._sock = sock
        try:
            try:
                self.send(self._hello)
            except ConnectError:
                pass  # refused before the hello got there; the reason is what it sent first
            return self._welcomed(self._wait(lambda m: True, self.timeout))
        except BaseException:
            self.close()
            raise

    def request(self, message: dict, timeout: float | None = None) -> dict:
        """Send ``message`` with a fresh id; returns the ``reply`` or ``error`` carrying it, or raises TimeoutError."""
        message = self._stamp(message)
        match = _answers(message["id"])
        self.send(message)
        answer = self._wait(match, self.timeout if timeout is None else timeout)
        if answer is None:
            raise TimeoutError(f"{self.path}: no answer to {message['type']} {message['id']}")
        return answer

    def command(self, action: str, timeout: float | None = None, **args: Any) -> dict:
        """A control command (pause, resume, checkpoint, stop, kill, set) with its args; returns its one reply."""
        return self.request({"type": "command", "action": action, "args": args}, timeout)

    def subscribe(self, topics: Sequence[str], timeout: float | None = None) -> dict:
        """Subscribe to live topics; returns the snapshot that precedes the live messages."""
        self._claims.append(_is_snapshot)
        try:
            reply = self.request({"type": "subscribe", "topics": list(topics)}, timeout)
            if reply["type"] == "error" or not reply["ok"]:
                raise RequestError(f"subscribe refused: {reply.get('error', 'no reason given')}")
            snapshot = self._wait(_is_snapshot, self.timeout if timeout is None else timeout)
        finally:
            self._claims.remove(_is_snapshot)
        if snapshot is None:
            raise TimeoutError(f"{self.path}: no snapshot after subscribe")
        return snapshot

    def tail(self, rank: int, lines: int, timeout: float | None = None) -> dict:
        """The last ``lines`` lines of ``rank``'s log, in a reply's ``lines``."""
        return self.request({"type": "tail", "rank": rank, "lines": lines}, timeout)

    def send(self, message: dict) -> None:
        """Send one message as is (no id added); raises ConnectError when the connection is gone."""
        if self._sock is None:
            raise ConnectError(f"{self.path}: not connected")
        self._sock.settimeout(self.timeout)
        try:
            self._sock.sendall(encode(message))
        except OSError as exc:
            raise self._closed_error() from exc

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next message not awaited by a request; None after ``timeout`` (default: the client's)."""
        return self._wait(self._unclaimed, self.timeout if timeout is None else timeout)

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _wait(self, match: Match, timeout: float) -> dict | None:
        found = self._take(match)
        deadline = time.monotonic() + timeout
        while found is None:
            message = self._read(deadline)
            if message is None:
                return None
            if match(message):
                return message
            self._inbox.append(message)
        return found

    def _read(self, deadline: float) -> dict | None:
        """One message from the socket, None at the deadline; raises ConnectError when the supervisor hung up."""
        if self._sock is None:
            raise ConnectError(f"{self.path}: not connected")
        scanned = 0
        while (end := self._buffer.find(b"\n", scanned)) < 0:
            scanned = len(self._buffer)
            if scanned > MAX_INCOMING_BYTES:
                raise ProtocolError(f"the supervisor sent a line over {MAX_INCOMING_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                return None
            except OSError as exc:
                raise self._closed_error() from exc
            if not chunk:
                raise self._closed_error()
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return _parse(line)


class AsyncClient(_Session):
    """The asyncio client: one reader task files incoming messages; requests and ``recv`` may run concurrently."""

    def __init__(self, path: str | Path, name: str = "tui", role: str = "client", timeout: float = 5.0,
                 **hello_fields: Any) -> None:
        super().__init__(path, name, role, timeout, hello_fields)
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task | None = None
        self._arrived = asyncio.Event()
        self._failure: BaseException | None = None

    async def __aenter__(self) -> AsyncClient:
        if self._writer is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> dict:
        """Connect and say hello; returns the welcome or raises ConnectError."""
        try:
            reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_INCOMING_BYTES)
        except OSError as exc:
            raise self._connect_error(exc) from exc
        self._pump = asyncio.get_running_loop().create_task(self._read_all(reader))
        try:
            try:
                await self.send(self._hello)
            except ConnectError:
                pass  # refused before the hello got there; the reason is what it sent first
            return self._welcomed(await self._wait(lambda m: True, self.timeout))
        except BaseException:
            await self.close()
            raise

    async def request(self, message: dict, timeout: float | None = None) -> dict:
        """As ``Client.request``; other tasks may ``recv`` meanwhile without taking this answer."""
        message = self._stamp(message)
        match = _answers(message["id"])
        self._claims.append(match)
        try:
            await self.send(message)
            answer = await self._wait(match, self.timeout if timeout is None else timeout)
        finally:
            self._claims.remove(match)
        if answer is None:
            raise TimeoutError(f"{self.path}: no answer to {message['type']} {message['id']}")
        return answer

    async def command(self, action: str, timeout: float | None = None, **args: Any) -> dict:
        """A control command with its args; returns its one reply."""
        return await self.request({"type": "command", "action": action, "args": args}, timeout)

    async def subscribe(self, topics: Sequence[str], timeout: float | None = None) -> dict:
        """Subscribe to live topics; returns the snapshot that precedes the live messages."""
        self._claims.append(_is_snapshot)
        try:
            reply = await self.request({"type": "subscribe", "topics": list(topics)}, timeout)
            if reply["type"] == "error" or not reply["ok"]:
                raise RequestError(f"subscribe refused: {reply.get('error', 'no reason given')}")
            snapshot = await self._wait(_is_snapshot, self.timeout if timeout is None else timeout)
        finally:
            self._claims.remove(_is_snapshot)
        if snapshot is None:
            raise TimeoutError(f"{self.path}: no snapshot after subscribe")
        return snapshot

    async def tail(self, rank: int, lines: int, timeout: float | None = None) -> dict:
        """The last ``lines`` lines of ``rank``'s log, in a reply's ``lines``."""
        return await self.request({"type": "tail", "rank": rank, "lines": lines}, timeout)

    async def send(self, message: dict) -> None:
        """Send one message as is (no id added); raises ConnectError when the connection is gone."""
        if self._writer is None or self._writer.is_closing():
            raise ConnectError(f"{self.path}: not connected")
        self._writer.write(encode(message))
        try:
            await asyncio.wait_for(self._writer.drain(), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise self._closed_error() from exc

    async def recv(self, timeout: float | None = None) -> dict | None:
        """The next message not awaited by a request; None after ``timeout`` (default: the client's)."""
        return await self._wait(self._unclaimed, self.timeout if timeout is None else timeout)

    async def close(self) -> None:
        """Stop reading and close the socket; safe to call twice."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def _read_all(self, reader: asyncio.StreamReader) -> None:
        try:
            while (line := await reader.readline()).endswith(b"\n"):
                self._inbox.append(_parse(line))
                self._arrived.set()
        except ProtocolError as exc:
            self._failure = exc
        except ValueError:
            self._failure = ProtocolError(f"the supervisor sent a line over {MAX_INCOMING_BYTES} bytes")
        except OSError:
            pass
        finally:
            self._failure = self._failure or self._closed_error()
            self._arrived.set()

    async def _wait(self, match: Match, timeout: float) -> dict | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (found := self._take(match)) is None:
            if self._failure is not None:
                raise self._failure
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                return None
        return found
