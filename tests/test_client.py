"""Specification of the socket client the CLI and the TUI use: replies matched by id, live messages
kept for ``recv``, timeouts that return or raise, and connection failures that say what happened.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from engine.client import AsyncClient, Client, ConnectError, RequestError
from engine.protocol import PROTOCOL_VERSION
from engine.supervisor._server import Connection
from test_server import SNAPSHOT, Recorder, ServerThread, python_runnable_by, eventually


class Chatty(Recorder):
    """Broadcasts an event to subscribers just before each command reply, so replies arrive amid live messages."""

    server: ServerThread

    def on_message(self, conn: Connection, message: dict) -> None:
        if message["type"] == "command":
            self.server.server.broadcast("events", {"type": "event", "event": {"before": message["id"]}})
        elif message["type"] == "subscribe" and "state" in message["topics"]:
            conn.reply(message, ok=False, error="state is not served here")
            return
        super().on_message(conn, message)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def handler() -> Chatty:
    return Chatty()


@pytest.fixture
def server(sock_dir: Path, handler: Chatty) -> Iterator[ServerThread]:
    running = ServerThread(sock_dir / "run.sock", handler).start()
    handler.server = running
    yield running
    running.stop()


def event(id: int) -> dict:
    return {"type": "event", "event": {"before": id}}


def test_connect_returns_the_welcome(server: ServerThread) -> None:
    with Client(server.path) as client:
        assert client.welcome == {"type": "welcome", "version": PROTOCOL_VERSION, "run": "demo",
                                  "run_dir": "/runs/demo"}


def test_a_rank_connects_with_its_hello_fields(server: ServerThread, handler: Chatty) -> None:
    with Client(server.path, name="rank1", role="rank", rank=1, local_rank=1, host="node0", device="cpu") as rank:
        rank.send({"type": "metrics", "points": [{"step": 3, "time": 1.0, "values": {"loss": None}}]})
        eventually(lambda: len(handler.messages) == 1)
    conn = handler.hellos[0]
    assert (conn.name, conn.role, conn.hello["rank"], conn.hello["device"]) == ("rank1", "rank", 1, "cpu")


def test_request_returns_the_reply_with_its_id_and_keeps_live_messages_for_recv(server: ServerThread) -> None:
    with Client(server.path) as client:
        client.subscribe(["events"])
        first, second = client.command("pause"), client.command("checkpoint")
        assert first == {"type": "reply", "id": 2, "ok": True, "step": 12}
        assert second == {"type": "reply", "id": 3, "ok": True, "step": 12}
        assert [client.recv(1), client.recv(1)] == [event(2), event(3)]


def test_command_sends_its_args_and_waits_at_most_its_timeout(server: ServerThread, handler: Chatty) -> None:
    with Client(server.path) as client:
        assert client.command("stop", checkpoint=False)["ok"]
        with pytest.raises(TimeoutError):
            client.command("resume", timeout=0.2)
    assert [m["args"] for m in handler.messages if m["type"] == "command"] == [{"checkpoint": False}, {}]


def test_entering_a_connected_client_keeps_its_connection(server: ServerThread, handler: Chatty) -> None:
    client = Client(server.path)
    client.connect()
    with client:
        assert client.tail(0, 1)["ok"]
    assert len(handler.hellos) == 1


def test_a_refused_request_returns_the_error_with_its_id(server: ServerThread) -> None:
    with Client(server.path) as client:
        answer = client.request({"type": "tail", "rank": 0, "lines": 0})
    assert answer == {"type": "error", "id": 1, "error": "tail: lines must be between 1 and 100000"}


def test_subscribe_returns_the_snapshot_and_live_messages_follow(server: ServerThread) -> None:
    with Client(server.path) as client:
        assert client.subscribe(["metrics", "events"]) == SNAPSHOT
        server.broadcast("metrics", {"type": "metrics", "points": []})
        assert client.recv(1) == {"type": "metrics", "points": []}


def test_a_refused_subscribe_raises_request_error(server: ServerThread) -> None:
    with Client(server.path) as client, pytest.raises(RequestError, match="state is not served here"):
        client.subscribe(["state"])


def test_tail_returns_the_requested_lines(server: ServerThread) -> None:
    with Client(server.path) as client:
        assert client.tail(0, 3)["lines"] == ["line 0", "line 1", "line 2"]


def test_recv_returns_none_after_its_timeout(server: ServerThread) -> None:
    with Client(server.path) as client:
        started = time.monotonic()
        assert client.recv(0.2) is None
        assert 0.2 <= time.monotonic() - started < 1.0


def test_an_unanswered_request_raises_timeout_error(server: ServerThread) -> None:
    with Client(server.path) as client, pytest.raises(TimeoutError, match="no answer to command 1"):
        client.request({"type": "command", "action": "resume"}, timeout=0.2)


def test_a_missing_socket_raises_connect_error_naming_it(sock_dir: Path) -> None:
    path = sock_dir / "gone.sock"
    with pytest.raises(ConnectError, match="no such socket") as caught:
        Client(path).connect()
    assert str(path) in str(caught.value)


def test_a_stale_socket_raises_connect_error_saying_refused(sock_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "stale.sock"))
    stale.close()
    with pytest.raises(ConnectError, match="connection refused"):
        Client(sock_dir / "stale.sock").connect()


def test_a_wrong_protocol_version_raises_connect_error(server: ServerThread) -> None:
    with pytest.raises(ConnectError, match=f"refused the connection: protocol version 99 .* version {PROTOCOL_VERSION}"):
        Client(server.path, version=99).connect()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_a_peer_with_another_uid_gets_connect_error_naming_its_uid(server: ServerThread, sock_dir: Path) -> None:
    python = python_runnable_by(65534)
    if python is None:
        pytest.skip("no python interpreter that uid 65534 may execute")
    os.chmod(sock_dir, 0o755)  # test only: past the file permissions, so that the uid check is what refuses
    os.chmod(server.path, 0o777)
    script = ("import sys\nfrom engine.client import Client, ConnectError\n"
              "try:\n    Client(sys.argv[1]).connect()\nexcept ConnectError as exc:\n    print(exc)\n")
    repo = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([python, "-c", script, str(server.path)], user=65534, capture_output=True, text=True,
                          timeout=30, cwd="/", env={"PYTHONPATH": repo, "PATH": os.environ.get("PATH", "")})
    assert done.stdout.strip() == (f"{server.path}: the supervisor refused the connection: "
                                   f"uid 65534 may not connect: this run belongs to uid {os.getuid()}"), done.stderr


def test_recv_delivers_the_bye_then_raises_connect_error(server: ServerThread) -> None:
    with Client(server.path) as client:
        server.call(server.server.close)
        assert client.recv(2) == {"type": "bye", "reason": "the supervisor is shutting down"}
        with pytest.raises(ConnectError, match="closed the connection"):
            client.recv(2)


# --- AsyncClient ---------------------------------------------------------------------------------------------------


def test_async_request_and_recv_run_concurrently(server: ServerThread) -> None:
    async def scenario() -> tuple[list[dict], list[dict]]:
        async with AsyncClient(server.path) as client:
            await client.subscribe(["events"])
            live = asyncio.ensure_future(asyncio.gather(*(client.recv(2) for _ in range(3))))
            replies = [await client.command("pause"), await client.command("stop", checkpoint=False),
                       await client.command("checkpoint")]
            return replies, await live

    replies, live = asyncio.run(scenario())
    assert [(r["type"], r["id"]) for r in replies] == [("reply", 2), ("reply", 3), ("reply", 4)]
    assert sorted(m["event"]["before"] for m in live) == [2, 3, 4]


def test_async_connect_returns_the_welcome_and_subscribe_the_snapshot(server: ServerThread) -> None:
    async def scenario() -> tuple[dict, dict, dict]:
        async with AsyncClient(server.path) as client:
            return client.welcome, await client.subscribe(["metrics"]), await client.tail(0, 1)

    welcome, snapshot, tail = asyncio.run(scenario())
    assert welcome["run"] == "demo" and snapshot == SNAPSHOT and tail["lines"] == ["line 0"]


def test_async_recv_returns_none_after_its_timeout(server: ServerThread) -> None:
    async def scenario() -> dict | None:
        async with AsyncClient(server.path) as client:
            return await client.recv(0.2)

    assert asyncio.run(scenario()) is None


def test_async_unanswered_request_raises_timeout_error(server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.path) as client:
            await client.request({"type": "command", "action": "resume"}, timeout=0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(scenario())


def test_async_missing_socket_raises_connect_error(sock_dir: Path) -> None:
    with pytest.raises(ConnectError, match="no such socket"):
        asyncio.run(AsyncClient(sock_dir / "gone.sock").connect())


def test_async_wrong_protocol_version_raises_connect_error(server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.path, version=99):
            pass

    with pytest.raises(ConnectError, match="protocol version 99"):
        asyncio.run(scenario())


def test_async_recv_delivers_the_bye_then_raises_connect_error(server: ServerThread) -> None:
    async def scenario() -> dict | None:
        async with AsyncClient(server.path) as client:
            await asyncio.get_running_loop().run_in_executor(None, server.call, server.server.close)
            bye = await client.recv(2)
            with pytest.raises(ConnectError, match="closed the connection"):
                await client.recv(2)
            return bye

    assert asyncio.run(scenario()) == {"type": "bye", "reason": "the supervisor is shutting down"}
