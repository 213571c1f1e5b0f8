"""Specification of the supervisor's socket server: who may connect, what a line must be, and that
no client, however broken or slow, can harm the server or the other clients.

The server runs on its own event-loop thread (``ServerThread``); tests talk to it over real
unix sockets, with the bare ``Raw`` socket where they must send what a real client never would.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from engine.client import Client
from engine.protocol import FROM_CLIENT, FROM_RANK, MAX_LINE_BYTES, MAX_PENDING_MESSAGES, PROTOCOL_VERSION, check, encode
from engine.supervisor._paths import SOCKET_DIR_ENV, socket_dir, socket_path
from engine.supervisor._server import MAX_ERRORS, Connection, SocketServer

SNAPSHOT = {"type": "snapshot", "history": {"loss": []}, "state": {"state": "running"}, "logs": {"0": ["hi"]},
            "events": []}


class Recorder:
    """A handler that records what it is given and answers like a tiny supervisor."""

    def __init__(self) -> None:
        self.hellos: list[Connection] = []
        self.messages: list[dict] = []
        self.senders: list[str | None] = []  # the role of each message's sender
        self.disconnects: list[Connection] = []

    def on_hello(self, conn: Connection) -> None:
        self.hellos.append(conn)

    def on_message(self, conn: Connection, message: dict) -> None:
        self.messages.append(message)
        self.senders.append(conn.role)
        if message["type"] == "subscribe":
            conn.subscribe(message["topics"])
            conn.reply(message)
            conn.send(SNAPSHOT)
        elif message["type"] == "command" and message["action"] == "kill" and message["args"].get("explode"):
            raise RuntimeError("handler exploded")
        elif message["type"] == "command" and message["action"] != "resume":  # resume: never answered
            conn.reply(message, step=12)
        elif message["type"] == "tail":
            conn.reply(message, lines=[f"line {i}" for i in range(message["lines"])])

    def on_disconnect(self, conn: Connection) -> None:
        self.disconnects.append(conn)


class ServerThread:
    """A SocketServer on its own event-loop thread, so tests can use blocking sockets against it."""

    def __init__(self, path: Path, handler: Any) -> None:
        self.path = path
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = SocketServer(path, "demo", "/runs/demo", handler)

    def start(self) -> ServerThread:
        self.thread.start()
        self.call(self.server.start)
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (awaiting it if it is a coroutine function) and return the result."""
        async def invoke() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(30)

    def broadcast(self, topic: str, message: dict) -> None:
        self.call(self.server.broadcast, topic, message)

    def tasks(self) -> int:
        return self.call(lambda: len(self.server._tasks))

    def stop(self) -> None:
        self.call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Raw:
    """A bare socket speaking lines, for sending what a well-behaved client never would."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, message: dict) -> None:
        self.send(json.dumps(message).encode() + b"\n")

    def hello(self, role: str = "client", **fields: Any) -> dict:
        self.send_json({"type": "hello", "version": PROTOCOL_VERSION, "role": role, "name": "raw", **fields})
        return self.read()

    def read(self) -> dict | None:
        """The next message, or None once the server has closed the connection."""
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:  # what a unix socket closed with our unread data in it reports
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def read_until_closed(self) -> list[dict]:
        messages = []
        while (message := self.read()) is not None:
            messages.append(message)
        return messages

    def alive(self) -> bool:
        """Drain whatever has arrived without waiting; False once the server has hung up."""
        self.sock.setblocking(False)
        try:
            while self.sock.recv(1 << 16):
                pass
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def handler() -> Recorder:
    return Recorder()


@pytest.fixture
def server(sock_dir: Path, handler: Recorder) -> Iterator[ServerThread]:
    running = ServerThread(sock_dir / "run.sock", handler).start()
    yield running
    running.stop()


@pytest.fixture
def raw(server: ServerThread) -> Iterator[Raw]:
    conn = Raw(server.path)
    yield conn
    conn.close()


def assert_still_serving(server: ServerThread) -> None:
    with Client(server.path) as client:
        assert client.tail(0, 2) == {"type": "reply", "id": 1, "ok": True, "lines": ["line 0", "line 1"]}


# --- hello -------------------------------------------------------------------------------------------------------


def test_hello_is_answered_with_a_welcome_naming_the_run(server: ServerThread, handler: Recorder, raw: Raw) -> None:
    assert raw.hello() == {"type": "welcome", "version": PROTOCOL_VERSION, "run": "demo", "run_dir": "/runs/demo"}
    eventually(lambda: len(handler.hellos) == 1)
    conn = handler.hellos[0]
    assert (conn.role, conn.name, conn.uid, conn.pid) == ("client", "raw", os.getuid(), os.getpid())
    assert server.call(lambda: server.server.connections) == [conn]


def test_a_wrong_protocol_version_is_refused_and_closed(server: ServerThread, handler: Recorder, raw: Raw) -> None:
    raw.send_json({"type": "hello", "version": PROTOCOL_VERSION + 98, "role": "client"})
    error, bye = raw.read_until_closed()
    assert error["type"] == "error" and str(PROTOCOL_VERSION + 98) in error["error"]
    assert f"version {PROTOCOL_VERSION}" in error["error"]
    assert bye["type"] == "bye"
    assert handler.hellos == []


def test_a_first_message_other_than_hello_is_refused_and_closed(server: ServerThread, handler: Recorder,
                                                                raw: Raw) -> None:
    raw.send_json({"type": "tail", "id": 1, "rank": 0, "lines": 5})
    error, bye = raw.read_until_closed()
    assert error == {"type": "error", "id": 1, "error": "the first message must be hello, got 'tail'"}
    assert handler.hellos == [] and handler.messages == []


def test_a_hello_with_an_unknown_role_is_refused(server: ServerThread, raw: Raw) -> None:
    raw.send_json({"type": "hello", "version": PROTOCOL_VERSION, "role": "admin"})
    error, bye = raw.read_until_closed()
    assert "role" in error["error"] and bye["type"] == "bye"


def test_a_peer_that_never_says_hello_is_closed(server: ServerThread, raw: Raw,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.supervisor._server.HELLO_TIMEOUT_S", 0.2)
    silent = Raw(server.path)
    assert silent.read_until_closed() == [{"type": "error", "error": "no hello within 0.2 s"},
                                          {"type": "bye", "reason": "hello timeout"}]
    silent.close()


def test_a_second_hello_is_answered_with_an_error(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    raw.send_json({"type": "hello", "version": PROTOCOL_VERSION, "role": "rank"})
    assert raw.read() == {"type": "error", "error": "hello was already received"}


def test_a_handler_failing_in_on_hello_refuses_the_connection(server: ServerThread, handler: Recorder,
                                                             raw: Raw) -> None:
    handler.on_hello = lambda conn: 1 / 0
    assert raw.hello()["type"] == "welcome"
    error, bye = raw.read_until_closed()
    assert "ZeroDivisionError" in error["error"] and bye["type"] == "bye"
    del handler.on_hello
    assert_still_serving(server)


# --- bad lines ---------------------------------------------------------------------------------------------------

BAD_LINES = {
    "malformed JSON": b'{"type": "tail", "id": 3,\n',
    "not an object": b"[1, 2, 3]\n",
    "unknown type": b'{"type": "format_disk", "id": 3}\n',
    "wrong field type": b'{"type": "tail", "id": 3, "rank": "zero", "lines": 5}\n',
    "missing field": b'{"type": "tail", "id": 3, "rank": 0}\n',
    "non-finite number": b'{"type": "progress", "rank": 0, "stage": "train", "state": "running", "epoch": 0, '
                         b'"step": 1, "batch": 1, "time": NaN}\n',
    "nested too deeply": b"[" * 100_000 + b"\n",
    "invalid UTF-8": b'{"type": "tail", "id": 3, "rank": 0, "lines": 5, "note": "\xff\xfe"}\n',
}


@pytest.mark.parametrize("line", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_gets_an_error_reply_and_the_connection_keeps_working(server: ServerThread, handler: Recorder,
                                                                        raw: Raw, line: bytes) -> None:
    raw.hello()
    raw.send(line)
    error = raw.read()
    assert error["type"] == "error" and error["error"]
    raw.send_json({"type": "tail", "id": 4, "rank": 0, "lines": 1})
    assert raw.read() == {"type": "reply", "id": 4, "ok": True, "lines": ["line 0"]}
    assert [m["id"] for m in handler.messages] == [4]


def test_invalid_utf8_is_named_in_the_error(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    raw.send(BAD_LINES["invalid UTF-8"])
    assert "not valid UTF-8" in raw.read()["error"]


def test_an_error_reply_carries_the_id_of_the_refused_message(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    raw.send_json({"type": "tail", "id": "abc", "rank": 0, "lines": 0})
    assert raw.read() == {"type": "error", "id": "abc", "error": "tail: lines must be between 1 and 100000"}


def test_blank_lines_are_ignored(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    raw.send(b"\n  \n\r\n")
    raw.send_json({"type": "tail", "id": 1, "rank": 0, "lines": 1})
    assert raw.read()["type"] == "reply"


def test_a_line_of_exactly_the_limit_is_accepted(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    line = json.dumps({"type": "tail", "id": 1, "rank": 0, "lines": 1}).encode()
    raw.send(line + b" " * (MAX_LINE_BYTES - len(line)) + b"\n")
    assert raw.read()["type"] == "reply"


def test_an_oversized_line_is_refused_and_closed_without_being_buffered(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    sent = 0

    def flood() -> None:
        nonlocal sent
        try:
            while sent < 64 * MAX_LINE_BYTES:
                raw.sock.sendall(b"x" * 65536)
                sent += 65536
        except OSError:
            pass

    sender = threading.Thread(target=flood)
    sender.start()
    error, bye = raw.read_until_closed()
    sender.join(10)
    assert error == {"type": "error", "error": f"line exceeds the limit of {MAX_LINE_BYTES} bytes"}
    assert bye == {"type": "bye", "reason": "line too long"}
    assert sent < 16 * MAX_LINE_BYTES
    assert_still_serving(server)


def test_too_many_errors_close_the_connection(server: ServerThread, raw: Raw) -> None:
    raw.hello()
    raw.send(b"nonsense\n" * (MAX_ERRORS + 50))
    messages = raw.read_until_closed()
    assert [m["type"] for m in messages] == ["error"] * MAX_ERRORS + ["bye"]
    assert messages[-1]["reason"] == f"too many errors ({MAX_ERRORS})"


# --- roles -------------------------------------------------------------------------------------------------------


def test_a_client_may_not_send_rank_messages(server: ServerThread, handler: Recorder, raw: Raw) -> None:
    raw.hello()
    raw.send_json({"type": "applied", "id": 9, "ok": True})
    error = raw.read()
    assert error["id"] == 9 and error["error"].startswith("a client may not send 'applied'")
    assert handler.messages == []


def test_a_rank_may_not_send_client_requests(server: ServerThread, handler: Recorder, raw: Raw) -> None:
    raw.hello(role="rank", rank=0)
    raw.send_json({"type": "command", "id": 9, "action": "stop"})
    assert raw.read()["error"].startswith("a rank may not send 'command'")
    assert handler.messages == []


def test_each_role_reaches_the_handler_with_its_own_messages(server: ServerThread, handler: Recorder) -> None:
    rank, client = Raw(server.path), Raw(server.path)
    rank.hello(role="rank", rank=1, local_rank=1, host="node0", device="cuda:1")
    client.hello()
    rank.send_json({"type": "metrics", "points": [{"step": 1, "time": 0.5, "values": {"loss": 2.0}}]})
    client.send_json({"type": "tail", "id": 1, "rank": 1, "lines": 1})
    client.read()
    eventually(lambda: len(handler.messages) == 2)
    assert sorted(m["type"] for m in handler.messages) == ["metrics", "tail"]
    assert {c.role: c.hello.get("rank") for c in handler.hellos} == {"rank": 1, "client": None}
    rank.close()
    client.close()


# --- lifecycle ---------------------------------------------------------------------------------------------------


def test_a_half_closed_connection_gets_its_replies_then_is_closed(server: ServerThread, handler: Recorder,
                                                                 raw: Raw) -> None:
    raw.hello()
    raw.send_json({"type": "tail", "id": 1, "rank": 0, "lines": 1})
    raw.sock.shutdown(socket.SHUT_WR)
    reply, bye = raw.read_until_closed()
    assert reply["id"] == 1 and bye == {"type": "bye", "reason": "end of input"}
    eventually(lambda: len(handler.disconnects) == 1)
    eventually(lambda: server.tasks() == 0)


def test_a_handler_exception_is_answered_with_an_error_and_logged(server: ServerThread, raw: Raw,
                                                                  traindeck_log: pytest.LogCaptureFixture) -> None:
    raw.hello()
    raw.send_json({"type": "command", "id": 5, "action": "kill", "args": {"explode": True}})
    assert raw.read() == {"type": "error", "id": 5,
                          "error": "the supervisor failed to handle this message: RuntimeError: handler exploded"}
    raw.send_json({"type": "command", "id": 6, "action": "pause"})
    assert raw.read() == {"type": "reply", "id": 6, "ok": True, "step": 12}
    assert any("handler on_message failed" in r.getMessage() and r.exc_info for r in traindeck_log.records)


def test_disconnect_is_reported_to_the_handler(server: ServerThread, handler: Recorder) -> None:
    with Client(server.path):
        eventually(lambda: len(handler.hellos) == 1)
    eventually(lambda: handler.disconnects == handler.hellos)
    assert server.call(lambda: server.server.connections) == []


def test_close_says_bye_to_every_client_and_removes_the_socket(sock_dir: Path, handler: Recorder) -> None:
    running = ServerThread(sock_dir / "run.sock", handler).start()
    raw = Raw(running.path)
    raw.hello()
    running.stop()
    assert raw.read_until_closed() == [{"type": "bye", "reason": "the supervisor is shutting down"}]
    assert not running.path.exists()
    raw.close()


def test_close_does_not_wait_for_a_client_that_never_reads(sock_dir: Path, handler: Recorder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.supervisor._server.CLOSE_GRACE_S", 0.3)
    running = ServerThread(sock_dir / "run.sock", handler).start()
    stalled = Raw(running.path)
    stalled.hello()
    stalled.send_json({"type": "subscribe", "id": 1, "topics": ["logs"]})
    eventually(lambda: handler.messages)
    running.call(lambda: [running.server.broadcast("logs", {"type": "log", "rank": 0, "lines": ["z" * 10_000]})
                          for _ in range(1000)])
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 2.0
    assert stalled.read_until_closed()[-1]["type"] == "log"  # cut off after the grace: no bye
    stalled.close()


def test_a_stale_socket_file_is_replaced(sock_dir: Path, handler: Recorder) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "run.sock"))
    stale.close()
    running = ServerThread(sock_dir / "run.sock", handler).start()
    assert_still_serving(running)
    running.stop()


def test_a_live_socket_is_not_taken_over(server: ServerThread, handler: Recorder) -> None:
    second = SocketServer(server.path, "other", "/runs/other", handler)
    with pytest.raises(FileExistsError, match="another supervisor"):
        server.call(second.start)
    assert_still_serving(server)


# --- who may connect ---------------------------------------------------------------------------------------------


def test_the_socket_is_0600_in_a_0700_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                handler: Recorder) -> None:
    short = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))
    monkeypatch.setenv(SOCKET_DIR_ENV, str(short / "sockets"))
    running = ServerThread(socket_path(tmp_path / "runs" / "demo"), handler).start()
    try:
        assert stat.S_IMODE(socket_dir().stat().st_mode) == 0o700
        assert stat.S_ISSOCK(running.path.stat().st_mode)
        assert stat.S_IMODE(running.path.stat().st_mode) == 0o600
    finally:
        running.stop()
        shutil.rmtree(short)


PEER_SCRIPT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"type": "hello", "version": %d, "role": "client"}\\n')
except BrokenPipeError:  # the server may refuse before the hello is sent
    pass
try:
    while chunk := s.recv(65536):
        sys.stdout.write(chunk.decode())
except ConnectionResetError:  # a unix socket closed with our hello unread
    pass
""" % PROTOCOL_VERSION


def python_runnable_by(uid: int) -> str | None:
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            if subprocess.run([python, "-c", "pass"], user=uid, capture_output=True, timeout=20).returncode == 0:
                return python
        except OSError:
            continue
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_a_peer_with_another_uid_is_refused(server: ServerThread, handler: Recorder, sock_dir: Path) -> None:
    python = python_runnable_by(65534)
    if python is None:
        pytest.skip("no python interpreter that uid 65534 may execute")
    os.chmod(sock_dir, 0o755)  # test only: past the file permissions, so that the uid check is what refuses
    os.chmod(server.path, 0o777)
    done = subprocess.run([python, "-c", PEER_SCRIPT, str(server.path)], user=65534, capture_output=True,
                          timeout=30, text=True)
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert messages == [{"type": "error", "error": f"uid 65534 may not connect: this run belongs to uid {os.getuid()}"},
                        {"type": "bye", "reason": "permission denied"}]
    assert handler.hellos == []


# --- slow and hostile clients ------------------------------------------------------------------------------------


def _metrics(step: int) -> dict:
    return {"type": "metrics", "points": [{"step": step, "time": 0.0, "values": {"loss": 1.0, "pad": "x" * 100}}]}


def _step(message: dict | None) -> int | None:
    return message["points"][0]["step"] if message and message["type"] == "metrics" else None


def _received(messages: list[dict]) -> tuple[list[int], int]:
    """Steps of the metrics received, and the total of the dropped notices."""
    steps = [m["points"][0]["step"] for m in messages if m["type"] == "metrics"]
    return steps, sum(m["count"] for m in messages if m["type"] == "dropped")


def test_a_client_that_never_reads_slows_no_one_and_learns_what_it_missed(server: ServerThread) -> None:
    n = 20_000
    stalled = Raw(server.path)
    stalled.hello()
    stalled.send_json({"type": "subscribe", "id": 1, "topics": ["metrics"]})
    assert [stalled.read()["type"], stalled.read()["type"]] == ["reply", "snapshot"]
    live = Client(server.path)
    live.connect()
    live.subscribe(["metrics"])
    seen: list[dict] = []

    def read_live() -> None:
        while (message := live.recv(10)) is not None:
            seen.append(message)
            if _step(message) == n - 1:
                return

    reader = threading.Thread(target=read_live)
    reader.start()
    started = time.monotonic()
    for start in range(0, n, 500):
        server.call(lambda s=start: [server.server.broadcast("metrics", _metrics(i)) for i in range(s, s + 500)])
    reader.join(10)
    assert not reader.is_alive() and _step(seen[-1]) == n - 1, "the reading client did not get the last message"
    assert time.monotonic() - started < 10
    steps, dropped = _received(seen)
    assert len(steps) + dropped == n and steps == sorted(steps)

    queued = server.call(lambda: {c.name: c.queued for c in server.server.connections})
    assert queued["raw"] <= MAX_PENDING_MESSAGES
    reply_started = time.monotonic()
    assert live.tail(0, 1)["ok"] and time.monotonic() - reply_started < 1.0
    live.close()

    late = [stalled.read()]
    while _step(late[-1]) != n - 1:
        late.append(stalled.read())
    steps, dropped = _received(late)
    assert dropped > 0 and len(steps) + dropped == n and steps == sorted(steps)
    stalled.close()


def test_replies_beyond_the_byte_limit_close_a_client_that_never_reads(server: ServerThread, handler: Recorder,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.supervisor._server.MAX_QUEUED_BYTES", 1 << 20)
    stalled = Raw(server.path)
    stalled.hello()
    eventually(lambda: len(handler.hellos) == 1)
    conn = handler.hellos[0]
    big = {"type": "log", "rank": 0, "lines": ["y" * 1000] * 100}
    server.call(lambda: [conn.send(big) for _ in range(200)])
    assert server.call(lambda: conn.closed)
    stalled.read_until_closed()
    assert_still_serving(server)
    stalled.close()


VALID = [
    {"type": "subscribe", "id": 1, "topics": ["metrics", "logs"]},
    {"type": "command", "id": 2, "action": "set", "args": {"key": "lr", "value": 0.1, "group": 0}},
    {"type": "tail", "id": 3, "rank": 0, "lines": 10},
    {"type": "metrics", "points": [{"step": 1, "time": 1.0, "values": {"loss": 0.5}}]},
    {"type": "progress", "rank": 0, "stage": "train", "state": "running", "epoch": 0, "step": 5, "batch": 5,
     "batches": 100, "step_time": 0.01, "time": 12.5},
    {"type": "applied", "id": 2, "ok": True, "step": 40, "detail": {"lr": 0.1}},
    {"type": "hello", "version": PROTOCOL_VERSION, "role": "client"},
]
JUNK = [None, True, -1, 10**400, 1.5, "", "x" * 1000, [], {}, [[[[[]]]]], {"a": {"b": [1, {"c": None}]}}]


def _fuzz_line(rng: random.Random) -> bytes:
    """One hostile line: random bytes, or a valid message mutated, re-typed, inflated or cut short."""
    kind = rng.random()
    if kind < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))) + b"\n"
    if kind < 0.2:
        return "".join(rng.choice('{}[]":,-.0123456789eEtype ') for _ in range(rng.randrange(200))).encode() + b"\n"
    message = dict(rng.choice(VALID))
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice([f for f in message if f != "type" or rng.random() < 0.1] + ["extra"])
        roll = rng.random()
        if roll < 0.3:
            message.pop(field, None)
        elif roll < 0.8:
            message[field] = rng.choice(JUNK)
        else:
            message[field] = json.loads("[" * 50 + "]" * 50)
    text = json.dumps(message)
    if kind < 0.35:
        text = text[:rng.randrange(len(text) + 1)]
    elif kind < 0.4:
        text = text.replace("1", "1e999", 1).replace("0.5", "NaN", 1)
    elif kind < 0.41:
        text = "[" * rng.randrange(1000, 200_000) + text
    return text.encode() + b"\n"


def test_the_server_survives_fuzzing_and_its_handler_sees_only_valid_messages(server: ServerThread,
                                                                              handler: Recorder) -> None:
    rng = random.Random(20240601)

    def fresh(i: int) -> Raw:
        conn = Raw(server.path)
        if rng.random() < 0.8:  # the rest fuzz the hello itself
            conn.hello(role="rank" if i % 2 else "client", rank=i)
        return conn

    conns = [fresh(i) for i in range(6)]
    for i in range(6000):
        slot = i % len(conns)
        try:
            conns[slot].send(_fuzz_line(rng))
        except OSError:
            pass
        if not conns[slot].alive():
            conns[slot].close()
            conns[slot] = fresh(slot)
    for conn in conns:
        conn.close()

    assert_still_serving(server)
    assert handler.messages, "some mutated messages stay valid and reach the handler"
    for message, role in zip(handler.messages, handler.senders):
        check(message)
        encode(message)
        assert message["type"] in (FROM_RANK if role == "rank" else FROM_CLIENT) - {"hello"}
    eventually(lambda: server.tasks() == 0)
