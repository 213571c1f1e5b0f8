"""The supervisor process: starts the job, serves the socket, and keeps the run's record.

One asyncio loop. Ranks send metrics, progress and command results; clients subscribe
and send commands, which go to rank 0 (it decides for the group, see engine/_control.py)
except ``kill``, which the supervisor carries out itself. Rank logs and the event log are
followed from their files (the files are the record; the socket is the live view).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from engine._events import append_event
from engine._failures import failed_ranks
from engine._rank_channel import SOCKET_ENV
from engine._run_dir import RESUME_ENV, RUN_DIR_ENV, RUN_NAME_ENV
from engine.protocol import STAGES
from engine.runs import read_run_file, update_run_file
from engine.history import MetricHistory
from engine.supervisor._job import Job, job_command
from engine.supervisor._paths import pointer_path, socket_path, write_pointer
from engine.supervisor._rank_entry import LOG_DIR_ENV
from engine.supervisor._server import Connection, SocketServer
from engine.supervisor._tail import FileTail, last_lines
from engine.supervisor._telemetry import TelemetrySampler

__all__ = ["Supervisor"]

log = logging.getLogger("traindeck")

TICK_S = 0.05
TELEMETRY_INTERVAL_S = 1.0
RUN_FILE_INTERVAL_S = 2.0
LOG_LINES_KEPT = 200
EVENTS_KEPT = 500
STOP_GRACE_S = 60.0
TERMINAL = ("finished", "failed", "stopped", "killed")


class Supervisor:
    """Everything one run needs while it is live; ``run()`` returns the job's exit status."""

    def __init__(self, run_dir: Path, linger_s: float = 3.0) -> None:
        self.run_dir = run_dir.resolve()
        record = read_run_file(self.run_dir)
        if record is None or "command" not in record:
            raise SystemExit(f"traindeck supervisor: {self.run_dir}/run.json is missing or has no command")
        self.record = record
        self.name = record.get("name") or self.run_dir.name
        self.linger_s = linger_s
        self.history = MetricHistory()
        self._unrecorded: list[tuple[int, float, dict[str, float | None]]] = []  # broadcast, not yet in history
        self.telemetry = TelemetrySampler()
        self.latest_telemetry: dict[str, Any] = {}
        self.state = "starting"
        self.progress: dict[int, dict[str, Any]] = {}
        self.ranks: dict[int, dict[str, Any]] = {}
        self.logs: dict[int, collections.deque[str]] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.exit_status: int | None = None
        self.failure: dict[str, Any] | None = None
        self._rank0: Connection | None = None
        self._pending: dict[int, tuple[Connection, Any, str, dict[str, Any]]] = {}
        self._queued: list[tuple[Connection, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        self._stop_requested = False
        self._killed = False
        self._kill_at: float | None = None
        self._tails: dict[Path, FileTail] = {}
        self._metrics_file: TextIO | None = None
        self._job: Job | None = None
        self._state_sent = 0.0
        self._state_dirty = True
        self.server = SocketServer(socket_path(self.run_dir), self.name, str(self.run_dir), self)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        await self.server.start()
        write_pointer(self.run_dir, os.getpid())
        self._start_job()
        try:
            await self._watch()
            await self._linger()
        finally:
            await self.server.close()
            self.telemetry.close()
            pointer_path(self.run_dir).unlink(missing_ok=True)
            if self._metrics_file is not None:
                self._metrics_file.close()
        return self.exit_status if self.exit_status is not None else 1

    def _start_job(self) -> None:
        record, logs = self.record, self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for path in logs.glob("rank*.log"):
            self._tails[path] = FileTail(path, from_end=True)
        self._tails[self.run_dir / "events.jsonl"] = FileTail(self.run_dir / "events.jsonl", from_end=True)
        extra_env = record.get("env") if isinstance(record.get("env"), dict) else {}
        env = {**os.environ, **{str(k): str(v) for k, v in extra_env.items()}, RUN_DIR_ENV: str(self.run_dir),
               RUN_NAME_ENV: self.name, LOG_DIR_ENV: str(logs), SOCKET_ENV: str(self.server.path),
               "PYTHONUNBUFFERED": "1"}
        if record.get("attempt", 1) > 1:
            env[RESUME_ENV] = "1"
        command = job_command(record["command"], record.get("devices", 1), record.get("nnodes", 1),
                              record.get("torchrun_args", []))
        self._job = Job(command, env, record.get("cwd") or os.getcwd(), logs / "launcher.log")
        self._event("started", pid=self._job.pid, attempt=record.get("attempt", 1), command=command)
        update_run_file(self.run_dir, state="starting", supervisor_pid=os.getpid(), socket=str(self.server.path),
                        host=socket.gethostname(), exit_status=None, failure=None)

    async def _watch(self) -> None:
        """Tick until the job has exited: follow files, sample telemetry, send state."""
        next_telemetry = next_record = 0.0
        while True:
            status = self._job.poll()
            self._follow_files()
            now = time.monotonic()
            if now >= next_telemetry:
                next_telemetry = now + TELEMETRY_INTERVAL_S
                self._discover_logs()
                self._sample_telemetry()
            if self._kill_at is not None and now >= self._kill_at:
                self._job.kill()
                self._kill_at = None
            if status is not None:
                self._discover_logs()
                self._follow_files()
                self._finish(status)
                return
            if now >= next_record:
                next_record = now + RUN_FILE_INTERVAL_S
                self._write_run_file()
            self._send_state()
            await asyncio.sleep(TICK_S)

    def _finish(self, status: int) -> None:
        self.exit_status = status
        if self._killed:
            self.state = "killed"
        elif self._stop_requested and status in (0, 75):
            self.state = "stopped"
        elif status == 0:
            self.state = "finished"
        else:
            self.state = "failed"
            ranks = failed_ranks(self.run_dir, self._job.started)
            if ranks:
                text = (self.run_dir / "failures" / f"rank{ranks[0]}.txt").read_text().strip().splitlines()
                self.failure = {"rank": ranks[0], "exit_status": status, "message": text[-1] if text else ""}
            else:
                self.failure = {"rank": None, "exit_status": status,
                                "message": f"the job exited with status {status}; see logs/"}
        for sup_id in list(self._pending):
            self._answer(sup_id, ok=False, error=f"the job ended ({self.state}) before applying it")
        for conn, message in self._queued:
            conn.send({"type": "reply", "id": message["id"], "ok": False, "error": f"the job ended ({self.state})"})
        self._queued.clear()
        self._event(self.state, exit_status=status, failure=self.failure)
        self._state_dirty = True
        self._send_state()
        self._write_run_file()

    async def _linger(self) -> None:
        """Keep serving briefly so attached clients see the final state, then say goodbye."""
        deadline = time.monotonic() + self.linger_s
        while time.monotonic() < deadline:
            self._follow_files()
            await asyncio.sleep(TICK_S)
        for conn in list(self.server.connections):
            conn.close(f"run {self.state}")

    def request_stop(self, reason: str) -> None:
        """Graceful stop from outside (SIGTERM/SIGINT): ranks save and exit; killed if they do not."""
        if self._job is None or self._job.poll() is not None:
            return
        log.warning(f"stopping the job ({reason})")
        self._stop_requested = True
        self._set_state("stopping")
        self._job.signal_ranks(signal.SIGTERM, self._rank_pids())
        self._kill_at = time.monotonic() + STOP_GRACE_S

    # -- socket handler --------------------------------------------------------------------

    def on_hello(self, conn: Connection) -> None:
        if conn.role != "rank":
            return
        rank = conn.hello.get("rank", 0)
        info = {k: conn.hello.get(k) for k in ("pid", "host", "device", "local_rank")}
        self.ranks[rank] = info
        self._discover_logs()
        self._event("rank_up", rank=rank, **info)
        if rank == 0:
            self._rank0 = conn
            queued, self._queued = self._queued, []
            for client, message in queued:
                self._forward(client, message)

    def on_message(self, conn: Connection, message: dict[str, Any]) -> None:
        getattr(self, f"_on_{message['type']}")(conn, message)

    def on_disconnect(self, conn: Connection) -> None:
        if conn is self._rank0:
            self._rank0 = None
            for sup_id in list(self._pending):
                self._answer(sup_id, ok=False, error="rank 0 disconnected before applying it")
            if self._job is not None and self._job.poll() is None and self.state not in TERMINAL:
                self._set_state("restarting" if self.record.get("torchrun_args") else "stopping")

    def _on_metrics(self, conn: Connection, message: dict[str, Any]) -> None:
        """On disk (metrics.jsonl), then to clients, then (later in the loop) into the history snapshots send."""
        if self._metrics_file is None:
            self._metrics_file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        points, lines, numbers = [], [], []
        for point in message["points"]:
            if not (isinstance(point, dict) and isinstance(point.get("step"), int)
                    and isinstance(point.get("values"), dict)):
                continue
            when = point.get("time") if isinstance(point.get("time"), (int, float)) else time.time()
            parsed = {str(k): _metric_value(v) for k, v in point["values"].items()}
            values = {k: point["values"][k] for k, v in parsed.items() if v is not None}
            line = {"step": point["step"], "time": when, "metrics": values}
            if point.get("stage") in STAGES:
                line["stage"] = point["stage"]
            lines.append(json.dumps(line) + "\n")
            points.append({"step": point["step"], "time": when, "values": values})
            numbers.append((point["step"], when, parsed))
        if not points:
            return
        self._metrics_file.write("".join(lines))
        self._metrics_file.flush()
        self.server.broadcast("metrics", {"type": "metrics", "points": points})
        if not self._unrecorded:  # once the clients' writers have run; a snapshot records them first
            asyncio.get_running_loop().call_soon(self._record_history)
        self._unrecorded.extend(numbers)

    def _record_history(self) -> None:
        unrecorded, self._unrecorded = self._unrecorded, []
        for step, when, parsed in unrecorded:
            for name, number in parsed.items():
                if number is not None:
                    self.history.add(name, step, when, number)

    def _on_progress(self, conn: Connection, message: dict[str, Any]) -> None:
        self.progress[message["rank"]] = message
        if message["rank"] == 0 and self.state not in TERMINAL and not self._stop_requested:
            if self.state != "checkpointing" or not self._checkpoint_pending():
                self._set_state(message["state"])
        self._state_dirty = True

    def _on_applied(self, conn: Connection, message: dict[str, Any]) -> None:
        if isinstance(message["id"], int) and message["id"] in self._pending:
            self._answer(message["id"], ok=message["ok"], error=message.get("error"), step=message.get("step"),
                         detail=message.get("detail"))

    def _on_subscribe(self, conn: Connection, message: dict[str, Any]) -> None:
        conn.subscriptions = set(message["topics"])
        conn.send({"type": "reply", "id": message["id"], "ok": True})
        logs = {str(rank): list(lines) for rank, lines in self.logs.items()}
        for path in sorted((self.run_dir / "logs").glob("rank*.log")):
            rank = path.stem.removeprefix("rank")
            logs.setdefault(rank, last_lines(path, LOG_LINES_KEPT))
        self._record_history()
        conn.send({"type": "snapshot", "history": self.history.snapshot(), "state": self.state_dict(),
                   "logs": logs, "events": list(self.events), "telemetry": self.latest_telemetry})

    def _on_tail(self, conn: Connection, message: dict[str, Any]) -> None:
        path = self.run_dir / "logs" / f"rank{message['rank']}.log"
        if not path.exists():
            conn.send({"type": "reply", "id": message["id"], "ok": False, "error": f"no log for rank {message['rank']}"})
            return
        conn.send({"type": "reply", "id": message["id"], "ok": True, "lines": last_lines(path, message["lines"])})

    def _on_command(self, conn: Connection, message: dict[str, Any]) -> None:
        if self.state in TERMINAL:
            conn.send({"type": "reply", "id": message["id"], "ok": False, "error": f"the run is {self.state}"})
            return
        action, args = message["action"], message.get("args") or {}
        if action == "kill":
            grace = args.get("grace_s", 5.0)
            grace = float(grace) if isinstance(grace, (int, float)) and 0 <= grace <= 3600 else 5.0
            self._killed = True
            self._set_state("stopping")
            self._job.signal_ranks(signal.SIGTERM, self._rank_pids())
            self._kill_at = time.monotonic() + grace
            self._event("command", action="kill", args={"grace_s": grace}, client=conn.name, ok=True)
            conn.send({"type": "reply", "id": message["id"], "ok": True})
            return
        if self._rank0 is None and self.ranks and 0 not in self.ranks:
            conn.send({"type": "reply", "id": message["id"], "ok": False,
                       "error": "rank 0 runs on another node: send commands to the supervisor of node 0"})
            return
        if self._rank0 is None:
            self._queued.append((conn, message))
            return
        self._forward(conn, message)

    def _forward(self, conn: Connection, message: dict[str, Any]) -> None:
        sup_id = next(self._ids)
        args = message.get("args") or {}
        self._pending[sup_id] = (conn, message["id"], message["action"], args)
        if message["action"] == "checkpoint":
            self._set_state("checkpointing")
        self._rank0.send({"type": "command", "id": sup_id, "action": message["action"], "args": args})

    def _answer(self, sup_id: int, ok: bool, error: str | None = None, step: int | None = None,
                detail: dict[str, Any] | None = None) -> None:
        conn, client_id, action, args = self._pending.pop(sup_id)
        reply: dict[str, Any] = {"type": "reply", "id": client_id, "ok": ok}
        for key, value in (("error", error), ("step", step), ("detail", detail)):
            if value is not None:
                reply[key] = value
        conn.send(reply)
        if action == "stop" and ok:
            self._stop_requested = True
            self._set_state("stopping")
        elif action == "checkpoint" and self.state == "checkpointing" and not self._checkpoint_pending():
            self._set_state(self.progress.get(0, {}).get("state", "running"))
        self._event("command", action=action, args=args, client=conn.name, ok=ok, step=step, error=error,
                    detail=detail)

    def _checkpoint_pending(self) -> bool:
        return any(action == "checkpoint" for _, _, action, _ in self._pending.values())

    # -- files, telemetry, state -----------------------------------------------------------

    def _discover_logs(self) -> None:
        """Follow rank logs that appeared (at rank hello and once a second, not every tick)."""
        for path in (self.run_dir / "logs").glob("rank*.log"):
            self._tails.setdefault(path, FileTail(path))

    def _follow_files(self) -> None:
        for path, tail in self._tails.items():
            lines = tail.read()
            if not lines:
                continue
            if path.name == "events.jsonl":
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    self.events.append(event)
                    self.server.broadcast("events", {"type": "event", "event": event})
                    if event.get("event") == "restarted":
                        self._set_state("restarting")
            else:
                rank = int(path.stem.removeprefix("rank"))
                self.logs.setdefault(rank, collections.deque(maxlen=LOG_LINES_KEPT)).extend(lines)
                self.server.broadcast("logs", {"type": "log", "rank": rank, "lines": lines})

    def _sample_telemetry(self) -> None:
        ranks = {rank: info["pid"] for rank, info in self.ranks.items() if isinstance(info.get("pid"), int)}
        sample = self.telemetry.sample(ranks)
        for entry in sample["ranks"]:
            progress = self.progress.get(entry["rank"], {})
            entry.update(step=progress.get("step"), step_time=progress.get("step_time"))
        self.latest_telemetry = sample
        self.server.broadcast("telemetry", {"type": "telemetry", "sample": sample})

    def _rank_pids(self) -> list[int]:
        return [info["pid"] for info in self.ranks.values() if isinstance(info.get("pid"), int)]

    def _set_state(self, state: str) -> None:
        """A new state is on disk (run.json) at once, and sent to clients at the next tick."""
        if state != self.state and self.state not in TERMINAL:
            self.state = state
            self._state_dirty = True
            self._write_run_file()

    def state_dict(self) -> dict[str, Any]:
        lead = self.progress.get(0, {})
        return {"run": self.name, "run_dir": str(self.run_dir), "state": self.state,
                "attempt": self.record.get("attempt", 1), "devices": self.record.get("devices", 1),
                "nnodes": self.record.get("nnodes", 1), "started": self._job.started if self._job else None,
                **{k: lead.get(k) for k in ("stage", "epoch", "step", "batch", "batches", "step_time",
                                            "max_steps", "max_epochs")},
                "ranks": {str(r): {**self.ranks.get(r, {}), **{k: p.get(k) for k in ("step", "state", "step_time")}}
                          for r, p in sorted(self.progress.items())},
                "exit_status": self.exit_status, "failure": self.failure}

    def _send_state(self) -> None:
        now = time.monotonic()
        if self._state_dirty and now - self._state_sent >= 0.1:
            self._state_dirty, self._state_sent = False, now
            self.server.broadcast("state", {"type": "state", "state": self.state_dict()})

    def _write_run_file(self) -> None:
        lead = self.progress.get(0, {})
        update_run_file(self.run_dir, state=self.state, step=lead.get("step"), epoch=lead.get("epoch"),
                        exit_status=self.exit_status, failure=self.failure)

    def _event(self, kind: str, **fields: Any) -> None:
        append_event(self.run_dir, kind, source="supervisor", **fields)


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None
