"""A rank's connection to its supervisor: metrics and progress out, commands in, never blocking a step.

The Trainer only appends to a bounded queue; a background thread writes to the socket and
another reads commands. If the supervisor is slow the oldest queued messages are dropped
(and counted); if it is gone the channel goes quiet and training is unaffected (the
supervisor's death takes the job down by itself, see ``_launcher``). Imports no torch.
"""

from __future__ import annotations

import atexit
import collections
import os
import socket
import threading
from typing import Any

from engine import protocol
from engine._announce import log

__all__ = ["RankChannel", "SOCKET_ENV", "connect_from_env"]

SOCKET_ENV = "TRAINDECK_SOCKET"
MAX_QUEUED = 100_000


class RankChannel:
    """Sends this rank's messages to the supervisor and collects the commands it forwards."""

    def __init__(self, sock: socket.socket, stream: Any, rank: int) -> None:
        self.rank = rank
        self.dropped = 0
        self.commands: collections.deque[dict[str, Any]] = collections.deque()
        self._sock = sock
        self._stream = stream
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="traindeck-channel-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="traindeck-channel-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message``; returns at once (drops the oldest queued message when full)."""
        if self._closed:
            return
        with self._wake:
            if len(self._outbox) >= MAX_QUEUED:
                self._outbox.popleft()
                self.dropped += 1
            self._outbox.append(message)
            self._wake.notify()

    def take_commands(self) -> list[dict[str, Any]]:
        """Commands received since the last call, oldest first."""
        taken = []
        while self.commands:
            taken.append(self.commands.popleft())
        return taken

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then close the socket."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._writer.join(timeout)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._outbox and not self._closed:
                    self._wake.wait()
                batch = list(self._outbox)
                self._outbox.clear()
                closing = self._closed
            if batch:
                try:
                    self._sock.sendall(b"".join(protocol.encode(m) for m in batch))
                except OSError:
                    self._closed = True
                    return
            if closing:
                return

    def _read_loop(self) -> None:
        try:
            for line in self._stream:
                try:
                    message = protocol.decode(line)
                except protocol.ProtocolError as exc:
                    log.warning(f"ignoring a malformed message from the supervisor: {exc}")
                    continue
                if message["type"] == "command":
                    self.commands.append(message)
        except (OSError, ValueError):
            pass


def connect_from_env(rank: int, local_rank: int, device: str, timeout: float = 5.0) -> RankChannel | None:
    """The channel to the supervisor named by ``$TRAINDECK_SOCKET``, or None when there is none."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        hello = {"type": "hello", "version": protocol.PROTOCOL_VERSION, "role": "rank", "name": f"rank{rank}",
                 "rank": rank, "local_rank": local_rank, "pid": os.getpid(), "host": socket.gethostname(),
                 "device": device}
        sock.sendall(protocol.encode(hello))
        stream = sock.makefile("rb")
        welcome = protocol.decode(stream.readline())
    except (OSError, protocol.ProtocolError) as exc:
        sock.close()
        log.warning(f"could not reach the supervisor at {path} ({exc}); training without live control")
        return None
    if welcome.get("type") != "welcome":
        sock.close()
        log.warning(f"the supervisor at {path} refused this rank: {welcome.get('error', welcome)}")
        return None
    sock.settimeout(None)
    channel = RankChannel(sock, stream, rank)
    atexit.register(channel.close)
    return channel
