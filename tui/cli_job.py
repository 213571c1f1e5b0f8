"""``traindeck run`` / ``resume`` / ``ctl``: start a supervised job, start it again, steer it.

Torch-free. The supervisor runs in its own session, so the job outlives this command,
the terminal and the SSH connection; this command only starts it and (unless
``--detach``) follows it until it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from tui.errors import CLIError
from engine.runs import RunNotFound, read_run_file, resolve_run

__all__ = ["add_job_commands", "cmd_run"]

ACTIONS = ("pause", "resume", "checkpoint", "stop", "kill", "set")


def _torchrun_args(args: argparse.Namespace) -> list[str]:
    extra: list[str] = []
    if args.node_rank is not None:
        extra += ["--node-rank", str(args.node_rank)]
    if args.rdzv_endpoint:
        extra += ["--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint,
                  "--rdzv-id", args.rdzv_id or args.name or Path(args.script).stem]
    if args.max_restarts:
        extra += ["--max-restarts", str(args.max_restarts)]
    return extra


def _check_script(script: Path) -> None:
    if not script.is_file():
        raise CLIError(f"no such script: {script}")
    if script.suffix != ".py":
        raise CLIError(f"{script} is not a Python script (.py)")


# -- run ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    """Start a training script under a supervisor (a torchrun group with --devices/--nnodes) and follow it."""
    from engine._run_dir import choose_run_dir
    from engine.supervisor.launch import create_run

    script = Path(args.script)
    _check_script(script)
    if args.devices < 1 or args.nnodes < 1:
        raise CLIError(f"--devices {args.devices} --nnodes {args.nnodes}: both must be at least 1")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise CLIError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if args.max_restarts < 0:
        raise CLIError(f"--max-restarts {args.max_restarts}: must be 0 or more")
    if args.name and (Path(args.root_dir) / args.name / "run.json").exists():
        raise CLIError(f"a run named {args.name!r} already exists in {args.root_dir}; continue it with "
                     f"`traindeck resume {args.name}` or choose another --name")
    run_dir = choose_run_dir(args.root_dir, args.name).resolve()
    create_run(run_dir, [str(script), *args.script_args], devices=args.devices, nnodes=args.nnodes,
               torchrun_args=_torchrun_args(args))
    return _launch(run_dir, args.detach, args.text)


def cmd_resume(args: argparse.Namespace) -> int:
    """Start a new attempt of a stopped or failed run from its last valid checkpoint (same run directory)."""
    from engine.supervisor.launch import ResumeError, prepare_resume

    run = _lookup(args.run, args.root_dir)
    if run.live:
        raise CLIError(f"run {run.name!r} is live ({run.state}); stop it first or attach to it")
    try:
        attempt, checkpoint = prepare_resume(run.run_dir)
    except ResumeError as exc:
        raise CLIError(str(exc)) from None
    print(f"traindeck: resuming {run.name} (attempt {attempt}) from {checkpoint}", file=sys.stderr)
    return _launch(run.run_dir, args.detach, args.text)


def _launch(run_dir: Path, detach: bool, text: bool = False) -> int:
    """Start the supervisor in its own session, wait for its socket, then follow or return."""
    from engine.supervisor.launch import SupervisorStartError, start_supervisor

    try:
        record = start_supervisor(run_dir)
    except SupervisorStartError as exc:
        raise CLIError(str(exc)) from None
    name = record.get("name", run_dir.name)
    print(f"traindeck: run {name} started in {run_dir}", file=sys.stderr)
    if detach:
        print(f"  watch it:         traindeck attach {name}\n  follow its logs:  traindeck logs {name} -f\n"
              f"  control it:       traindeck ctl {name} pause|resume|checkpoint|stop|kill|set KEY=VALUE\n"
              f"  list runs:        traindeck ls", file=sys.stderr)
        return 0
    if not text and sys.stdin.isatty() and sys.stdout.isatty():
        return open_cockpit(run_dir, record["socket"])
    return follow(run_dir, record["socket"])


def open_cockpit(run_dir: Path | None, socket_path: str | None, root_dir: Path = Path("runs"),
                 sweep_dir: Path | None = None) -> int:
    """Run the Textual cockpit on a run, a sweep, or the run browser; the job is never tied to it."""
    from tui.app import TraindeckApp

    outcome = TraindeckApp(run_dir, socket_path, root_dir=root_dir, sweep_dir=sweep_dir).run()
    if outcome == "detached" and run_dir is not None:
        print(f"traindeck: detached; the job goes on. Re-attach with: traindeck attach {run_dir.name}",
              file=sys.stderr)
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """Open the cockpit on a run (live through its supervisor, finished from its files) or on a sweep."""
    from engine._sweep._summary import find_sweep

    sweep_dir = find_sweep(args.run, args.root_dir) if args.run else None
    if sweep_dir is not None:
        return open_cockpit(None, None, Path(args.root_dir), sweep_dir=sweep_dir)
    run = _lookup(args.run, args.root_dir)
    return open_cockpit(run.run_dir, run.socket if run.live else None, Path(args.root_dir))


def cmd_ui(args: argparse.Namespace) -> int:
    """Open the run browser: live and finished runs, open one, compare several."""
    return open_cockpit(None, None, Path(args.root_dir))


def follow(run_dir: Path, socket_path: str) -> int:
    """Print every rank's new log lines and the events until the run ends; Ctrl-C stops, twice kills."""
    from engine.client import Client, ConnectError

    interrupts = 0
    try:
        client = Client(socket_path, name=f"cli-follow:{os.getpid()}")
        client.connect()
    except ConnectError as exc:
        raise CLIError(str(exc)) from None
    with client:
        snapshot = client.subscribe(["logs", "events", "state"])
        multi = len(snapshot.get("state", {}).get("ranks", {})) > 1 or _devices(run_dir) > 1
        while True:
            try:
                message = client.recv(timeout=0.5)
            except KeyboardInterrupt:
                interrupts += 1
                action = "stop" if interrupts == 1 else "kill"
                print(f"\ntraindeck: {action} requested (Ctrl-C again to kill)" if interrupts == 1
                      else "\ntraindeck: killing the job", file=sys.stderr)
                client.send({"type": "command", "id": f"follow-{interrupts}", "action": action, "args": {}})
                continue
            except (OSError, EOFError):
                break
            if message is None:
                continue
            kind = message.get("type")
            if kind == "log":
                prefix = f"[rank {message['rank']}] " if multi else ""
                for line in message["lines"]:
                    print(prefix + line, flush=True)
            elif kind == "event" and message["event"].get("event") in ("failed", "killed", "stopped", "finished"):
                event = message["event"]
                failure = event.get("failure") or {}
                if failure.get("rank") is not None:
                    print(f"traindeck: rank {failure['rank']} failed: {failure.get('message')}", file=sys.stderr)
                if event.get("source") == "supervisor":
                    break  # the run has ended (its logs came before this): no need to wait out the linger
            elif kind == "bye":
                break
    record = read_run_file(run_dir) or {}
    print(f"traindeck: run {record.get('name', run_dir.name)} {record.get('state', 'ended')}", file=sys.stderr)
    status = record.get("exit_status")
    return status if isinstance(status, int) else 1


def _devices(run_dir: Path) -> int:
    record = read_run_file(run_dir) or {}
    return int(record.get("devices") or 1) * int(record.get("nnodes") or 1)


# -- ctl ---------------------------------------------------------------------------------

def cmd_ctl(args: argparse.Namespace) -> int:
    """Send a command to a live run: pause, resume, checkpoint, stop, kill, or set KEY=VALUE."""
    from engine.client import Client, ConnectError

    words = list(args.words)
    run_query = None if words[0] in ACTIONS else words.pop(0)
    if not words or words[0] not in ACTIONS:
        raise CLIError(f"expected an action ({', '.join(ACTIONS)}) after the run name, got {' '.join(words) or 'nothing'}")
    action, rest = words[0], words[1:]
    command_args = _command_args(action, rest, args)
    run = _lookup(run_query, args.root_dir, live_only=True)
    try:
        with Client(run.socket, name=f"cli:{os.environ.get('USER', 'user')}@{socket.gethostname()}") as client:
            reply = client.command(action, timeout=args.timeout, **command_args)
    except ConnectError as exc:
        raise CLIError(f"run {run.name!r}: {exc}") from None
    except TimeoutError:
        raise CLIError(f"run {run.name!r} did not answer within {args.timeout:g} s (a long step or validation?); "
                     "the command may still be applied") from None
    if args.json:
        print(json.dumps(reply))
    elif reply.get("ok"):
        where = f" at step {reply['step']}" if reply.get("step") is not None else ""
        detail = reply.get("detail") or {}
        extra = f": {detail['path']}" if "path" in detail else (
            f": {detail['key']} {detail.get('old')} -> {detail.get('new')}" if "key" in detail else "")
        print(f"{run.name}: {action} applied{where}{extra}")
    else:
        print(f"{run.name}: {action} refused: {reply.get('error')}", file=sys.stderr)
    return 0 if reply.get("ok") else 1


def _command_args(action: str, rest: list[str], args: argparse.Namespace) -> dict[str, Any]:
    if action == "set":
        if len(rest) != 1 or "=" not in rest[0]:
            raise CLIError("set needs one KEY=VALUE, e.g. `traindeck ctl RUN set lr=3e-4`")
        key, _, text = rest[0].partition("=")
        try:
            value = float(text)
        except ValueError:
            raise CLIError(f"bad KEY=VALUE {rest[0]!r}: {text!r} is not a number") from None
        if not key.isidentifier():
            raise CLIError(f"bad KEY=VALUE {rest[0]!r}: {key!r} is not a name")
        out: dict[str, Any] = {"key": key, "value": int(value) if text.strip().lstrip("-").isdigit() else value}
        if args.group is not None:
            out["group"] = int(args.group) if args.group.isdigit() else args.group
        return out
    if rest:
        raise CLIError(f"{action} takes no arguments, got {' '.join(rest)}")
    if action == "stop":
        return {"checkpoint": not args.no_checkpoint}
    if action == "kill":
        return {"grace_s": args.grace}
    return {}


def _lookup(query: str | None, root_dir: str, live_only: bool = False) -> Any:
    try:
        return resolve_run(query, Path(root_dir), live_only=live_only)
    except RunNotFound as exc:
        raise CLIError(str(exc)) from None


# -- parsers -----------------------------------------------------------------------------

def add_job_commands(sub: Any) -> None:
    """Register ``run``, ``resume`` and ``ctl`` on the ``traindeck`` parser."""
    run = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    run.add_argument("--devices", type=int, default=1, help="processes (devices) per node (default 1)")
    run.add_argument("--nnodes", type=int, default=1, help="number of nodes (torchrun --nnodes)")
    run.add_argument("--node-rank", type=int, default=None, help="this node's rank (torchrun --node-rank)")
    run.add_argument("--rdzv-endpoint", help="HOST:PORT of the rendezvous, the same on every node")
    run.add_argument("--rdzv-id", help="job id shared by all nodes (default: the run name)")
    run.add_argument("--max-restarts", type=int, default=0,
                     help="restart the group this many times after a failure, resuming from the last checkpoint")
    run.add_argument("--name", help="run name (the run directory is ROOT_DIR/NAME)")
    run.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    run.add_argument("--detach", action="store_true", help="start the job and return at once")
    run.add_argument("--text", action="store_true", help="follow the logs as text instead of opening the cockpit")
    run.add_argument("script", help="the training script (a .py file)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help=cmd_resume.__doc__, description=cmd_resume.__doc__)
    resume.add_argument("run", nargs="?", help="run name or unique prefix")
    resume.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    resume.add_argument("--detach", action="store_true", help="start the job and return at once")
    resume.add_argument("--text", action="store_true", help="follow the logs as text instead of opening the cockpit")
    resume.set_defaults(func=cmd_resume)

    attach = sub.add_parser("attach", help=cmd_attach.__doc__, description=cmd_attach.__doc__)
    attach.add_argument("run", nargs="?",
                        help="run or sweep name, or a unique run prefix (default: the one live run)")
    attach.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    attach.set_defaults(func=cmd_attach)

    ui = sub.add_parser("ui", help=cmd_ui.__doc__, description=cmd_ui.__doc__)
    ui.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    ui.set_defaults(func=cmd_ui)

    ctl = sub.add_parser("ctl", help=cmd_ctl.__doc__, description=cmd_ctl.__doc__
                         + " RUN may be a name, a unique prefix, or omitted when one run is live.",
                         usage="traindeck ctl [RUN] {pause,resume,checkpoint,stop,kill,set KEY=VALUE} [options]")
    ctl.add_argument("words", nargs="+", metavar="[RUN] ACTION", help="the run (optional) and the action")
    ctl.add_argument("--group", help="set: only this param group (its 'name', or an index)")
    ctl.add_argument("--no-checkpoint", action="store_true", help="stop: exit without saving a checkpoint")
    ctl.add_argument("--grace", type=float, default=5.0, help="kill: seconds between SIGTERM and SIGKILL (default 5)")
    ctl.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply (default 30)")
    ctl.add_argument("--json", action="store_true", help="print the reply as JSON")
    ctl.add_argument("--root-dir", default="runs", help="where run directories live (default: runs)")
    ctl.set_defaults(func=cmd_ctl)
