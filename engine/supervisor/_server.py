"""The supervisor's unix-socket server: peer check, hello, line framing, and one outbox per connection.

Generic on purpose: it checks every line against ``engine.protocol`` and the sender's role,
then hands valid messages to a ``Handler`` (the supervisor), which knows what they mean.
A client that never reads costs the server a bounded queue and nothing else: live
messages beyond ``MAX_PENDING_MESSAGES`` drop the oldest, and a flood of replies closes
the connection. All methods run on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import logging
import os
import socket
import stat
import struct
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from engine.protocol import (
    FROM_CLIENT, FROM_RANK, MAX_LINE_BYTES, MAX_PENDING_MESSAGES, PROTOCOL_VERSION, ProtocolError, decode, encode,
)

__all__ = ["Handler", "Connection", "SocketServer", "ServerState", "MAX_ERRORS", "MAX_QUEUED_BYTES"]

logger = logging.getLogger("traindeck")

MAX_ERRORS = 100  # error replies to one connection before it is closed
MAX_QUEUED_BYTES = 64 << 20  # unsent replies/snapshots to one connection before it is closed
HELLO_TIMEOUT_S = 10.0
CLOSE_GRACE_S = 2.0  # time a closing connection gets to take what is queued for it
_YIELD_EVERY = 64  # lines handled from one connection before letting others run
_BATCH_BYTES = 64 << 10


class Handler(Protocol):
    """What the server calls, on the loop's thread; exceptions are logged and answered with an error, never fatal.

    ``on_disconnect`` follows every ``on_hello``, even one that raised.
    """

    def on_hello(self, conn: Connection) -> None: ...
    def on_message(self, conn: Connection, message: dict) -> None: ...
    def on_disconnect(self, conn: Connection) -> None: ...


class Connection:
    """One peer: who it is (hello, SO_PEERCRED) and an outbox drained by one writer task."""

    def __init__(self, writer: asyncio.StreamWriter, uid: int, pid: int) -> None:
        self.role: str | None = None
        self.name = f"pid-{pid}"
        self.hello: dict = {}
        self.uid = uid
        self.pid = pid
        self.subscriptions: set[str] = set()
        self.closed = False
        self.errors = 0
        self._writer = writer
        self._seq = itertools.count()
        self._replies: deque[tuple[int, bytes]] = deque()
        self._live: deque[tuple[int, bytes]] = deque()
        self._reply_bytes = 0
        self._dropped = 0
        self._ready = asyncio.Event()
        self._deadline: asyncio.TimerHandle | None = None
        self._task = asyncio.get_running_loop().create_task(self._write_loop())

    def __repr__(self) -> str:
        return f"<Connection {self.name} role={self.role} pid={self.pid} uid={self.uid}>"

    @property
    def queued(self) -> int:
        """Messages waiting to be written (replies plus live ones)."""
        return len(self._replies) + len(self._live)

    def subscribe(self, topics: Iterable[str]) -> None:
        """Set the topics ``SocketServer.broadcast`` delivers here (replacing earlier ones); then send the snapshot."""
        self.subscriptions = set(topics)

    def send(self, message: dict, live: bool = False) -> None:
        """Queue a message without blocking; ``live`` ones may be dropped (oldest first) for a slow reader.

        A no-op once closed; raises ValueError for what JSON cannot carry (NaN, infinity).
        """
        self._push(encode(message), live)

    def reply(self, request: dict, ok: bool = True, **fields: Any) -> None:
        """Answer ``request`` with a ``reply`` carrying its id."""
        self.send({"type": "reply", "id": request["id"], "ok": ok, **fields})

    def error(self, text: str, id: int | str | None = None) -> None:
        """Send an ``error``, with the id of the message it answers when there is one."""
        self.send({"type": "error", "error": text} if id is None else {"type": "error", "error": text, "id": id})

    def close(self, reason: str = "") -> None:
        """Send ``bye`` after what is queued, then close; a peer that does not read is cut off after a grace."""
        if self.closed:
            return
        self._push(encode({"type": "bye", "reason": reason}), live=False)
        self.closed = True
        self._ready.set()
        self._deadline = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._writer.transport.abort)

    async def wait_closed(self) -> None:
        await self._task

    def _push(self, data: bytes, live: bool) -> None:
        if self.closed:
            return
        if live:
            if len(self._live) >= MAX_PENDING_MESSAGES:
                self._live.popleft()
                self._dropped += 1
            self._live.append((next(self._seq), data))
        else:
            self._replies.append((next(self._seq), data))
            self._reply_bytes += len(data)
            if self._reply_bytes > MAX_QUEUED_BYTES:
                logger.warning("closing %r: %d bytes of replies unread", self, self._reply_bytes)
                self._abort()
                return
        self._ready.set()

    def _abort(self) -> None:
        self._replies.clear()
        self._live.clear()
        self.closed = True
        self._writer.transport.abort()
        self._ready.set()

    def _next(self) -> bytes | None:
        """The oldest queued message; a ``dropped`` notice goes ahead of the first live message after a drop."""
        if self._replies and (not self._live or self._replies[0][0] < self._live[0][0]):
            data = self._replies.popleft()[1]
            self._reply_bytes -= len(data)
            return data
        if not self._live:
            return None
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return encode({"type": "dropped", "count": count})
        return self._live.popleft()[1]

    def _batch(self) -> bytes:
        """Queued messages, oldest first, up to about ``_BATCH_BYTES``: one write per batch, not per message."""
        parts, size = [], 0
        while size < _BATCH_BYTES and (data := self._next()) is not None:
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    async def _write_loop(self) -> None:
        try:
            while not self._writer.is_closing():
                await self._ready.wait()
                self._ready.clear()
                while (batch := self._batch()) and not self._writer.is_closing():
                    self._writer.write(batch)
                    await self._writer.drain()
                    await asyncio.sleep(0)  # drain does not yield while the peer keeps up; others must run
                if self.closed:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._replies.clear()
            self._live.clear()
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), CLOSE_GRACE_S)
            except asyncio.CancelledError:
                self._writer.transport.abort()
                raise
            except Exception:
                self._writer.transport.abort()


class ServerState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    CLOSED = "closed"


class SocketServer:
    """Serves the run's socket: ``start``, then ``broadcast`` live data; ``close`` ends every connection."""

    def __init__(self, path: Path, run: str, run_dir: str, handler: Handler) -> None:
        self.path = Path(path)
        self.run = run
        self.run_dir = str(run_dir)
        self.state = ServerState.NEW
        self.connections: list[Connection] = []
        self._handler = handler
        self._all: set[Connection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        """Bind (replacing a stale socket file, never a live one), make it 0600, listen."""
        if self.state is not ServerState.NEW:
            raise RuntimeError(f"cannot start a socket server that is {self.state.value}")
        _remove_stale(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE_BYTES)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino
        self.state = ServerState.SERVING

    async def close(self) -> None:
        """Say bye to every connection, stop listening and remove the socket file; idempotent."""
        if self.state is ServerState.CLOSED:
            return
        self.state = ServerState.CLOSED
        if self._server is not None:
            self._server.close()
        for conn in list(self._all):
            conn.close("the supervisor is shutting down")
        tasks = list(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S + 1)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def broadcast(self, topic: str, message: dict) -> None:
        """Live-send ``message`` to every connection subscribed to ``topic``; encoded once."""
        data = encode(message)
        for conn in self.connections:
            if topic in conn.subscriptions:
                conn._push(data, live=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        pid, uid = _peer(writer)
        conn = Connection(writer, uid, pid)
        self._all.add(conn)
        try:
            if self.state is not ServerState.SERVING:
                conn.close("the supervisor is shutting down")
            elif uid not in (0, os.getuid()):
                logger.warning("refused a connection from uid %d (pid %d) to %s", uid, pid, self.path)
                conn.error(f"uid {uid} may not connect: this run belongs to uid {os.getuid()}")
                conn.close("permission denied")
            elif await self._greet(conn, reader):
                await self._read_loop(conn, reader)
        except Exception:
            logger.exception("socket server: %r failed", conn)
        finally:
            conn.close()
            if conn in self.connections:
                self.connections.remove(conn)
                self._call(conn, self._handler.on_disconnect)
            await conn.wait_closed()
            self._all.discard(conn)
            self._tasks.discard(task)

    async def _greet(self, conn: Connection, reader: asyncio.StreamReader) -> bool:
        """Read the hello; answer welcome and register the connection, or an error and close."""
        line = await self._next_line(conn, reader, HELLO_TIMEOUT_S)
        message = None if line is None else self._parse(conn, line)
        if message is not None and message["type"] != "hello":
            conn.error(f"the first message must be hello, got {message['type']!r}", message.get("id"))
        elif message is not None and message["version"] != PROTOCOL_VERSION:
            conn.error(f"protocol version {message['version']} is not supported; "
                       f"this supervisor speaks version {PROTOCOL_VERSION}")
        elif message is not None:
            conn.role, conn.hello = message["role"], message
            conn.name = message.get("name") or f"{conn.role}-{conn.pid}"
            conn.send({"type": "welcome", "version": PROTOCOL_VERSION, "run": self.run, "run_dir": self.run_dir})
            self.connections.append(conn)
            if self._call(conn, self._handler.on_hello):
                return True
        conn.close("hello refused")
        return False

    async def _read_loop(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        allowed = FROM_RANK if conn.role == "rank" else FROM_CLIENT
        for count in itertools.count(1):
            line = await self._next_line(conn, reader)
            if line is None or conn.closed:
                return
            message = self._parse(conn, line)
            if message is None:
                pass
            elif message["type"] == "hello":
                self._refuse(conn, "hello was already received", message.get("id"))
            elif message["type"] not in allowed:
                self._refuse(conn, f"a {conn.role} may not send {message['type']!r}; "
                                   f"allowed: {', '.join(sorted(allowed - {'hello'}))}", message.get("id"))
            else:
                self._call(conn, self._handler.on_message, message)
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _next_line(self, conn: Connection, reader: asyncio.StreamReader,
                         timeout: float | None = None) -> bytes | None:
        """The next non-blank line, or None once the connection is to end (closing it when it must)."""
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout)
            except ValueError:
                conn.error(f"line exceeds the limit of {MAX_LINE_BYTES} bytes")
                conn.close("line too long")
                return None
            except asyncio.TimeoutError:
                conn.error(f"no hello within {timeout:g} s")
                conn.close("hello timeout")
                return None
            except (ConnectionError, OSError):
                return None
            if not line:
                conn.close("end of input")
                return None
            if line.strip():
                return line[:-1] if line.endswith(b"\n") else line

    def _parse(self, conn: Connection, line: bytes) -> dict | None:
        try:
            return decode(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._refuse(conn, f"line is not valid UTF-8 (bad byte at offset {exc.start})")
        except ProtocolError as exc:
            self._refuse(conn, str(exc), _id_of(line))
        return None

    def _refuse(self, conn: Connection, text: str, id: int | str | None = None) -> None:
        conn.errors += 1
        conn.error(text, id)
        if conn.errors >= MAX_ERRORS:
            conn.close(f"too many errors ({MAX_ERRORS})")

    def _call(self, conn: Connection, method: Callable[..., None], *args: Any) -> bool:
        """Call the handler; on an exception log it and answer an error, so one bad message harms nothing else."""
        try:
            method(conn, *args)
            return True
        except Exception as exc:
            logger.exception("supervisor handler %s failed for %r", method.__name__, conn)
            id = args[0].get("id") if args else None
            conn.error(f"the supervisor failed to handle this message: {type(exc).__name__}: {exc}", id)
            return False


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    """(pid, uid) of the peer from SO_PEERCRED; where the OS lacks it, the 0700 directory is the only guard."""
    if not hasattr(socket, "SO_PEERCRED"):
        return 0, os.getuid()
    try:
        creds = writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0, -1
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def _id_of(line: bytes) -> int | str | None:
    """The id of a refused message when it parses far enough to have one, so the error can name it."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    found = message.get("id") if isinstance(message, dict) else None
    return found if isinstance(found, (int, str)) and not isinstance(found, bool) else None


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse to touch a live socket or a file that is not a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise FileExistsError(f"{path}: another supervisor is serving this socket")
