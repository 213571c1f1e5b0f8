"""The ``traindeck`` command: one subcommand per job a user has.

Nothing here imports torch: ``traindeck --help`` must answer at once, and the
training itself always runs in a child process started from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from tui.errors import CLIError

__all__ = ["main"]

DEMO_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "demo.py"




def cmd_demo(args: argparse.Namespace) -> int:
    """Train the built-in demo (a small transformer learning to sort digits) in the cockpit.

    --devices N, --detach, --text and --name are taken by traindeck; other arguments go to the demo.
    """
    from tui.cli_job import cmd_run

    if not DEMO_SCRIPT.is_file():
        raise CLIError(f"the demo script is missing ({DEMO_SCRIPT}); run from a source checkout of traindeck")
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--devices", type=int, default=1)
    own.add_argument("--name")
    own.add_argument("--root-dir", default="runs")
    own.add_argument("--detach", action="store_true")
    own.add_argument("--text", action="store_true")
    mine, demo_args = own.parse_known_args(args.demo_args)
    run_args = argparse.Namespace(script=str(DEMO_SCRIPT), script_args=demo_args, nnodes=1, node_rank=None,
                                  rdzv_endpoint=None, rdzv_id=None, max_restarts=0, **vars(mine))
    return cmd_run(run_args)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _human_age(created: str) -> str:
    from tui.cli_runs import age

    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return created
    return f"{created} ({age(then)} ago)" if then <= datetime.now(timezone.utc) else created


def _human_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_human_value(v)}" for k, v in value.items()) or "(none)"
    return "-" if value is None else str(value)


def cmd_ckpt_inspect(args: argparse.Namespace) -> int:
    """Show a checkpoint's step, epoch, metrics and size, and verify its checksum (without loading it)."""
    from engine._checkpoint_format import read_header, verify
    from engine._errors import CheckpointError

    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"no such checkpoint: {path}")
    if path.is_dir():
        raise CLIError(f"{path} is a directory; pass a checkpoint file")
    try:
        header: dict[str, Any] = read_header(path)
    except CheckpointError as exc:
        header, (valid, reason) = {}, (False, str(exc))
    else:
        valid, reason = verify(path)
    summary = header.get("summary", {})
    report = {
        "path": str(path),
        "valid": valid,
        "reason": reason,
        "format_version": header.get("format_version"),
        "step": summary.get("step"),
        "epoch": summary.get("epoch"),
        "metrics": summary.get("metrics", {}),
        "world_size": summary.get("world_size"),
        "created": header.get("created"),
        "size_bytes": path.stat().st_size,
        "summary": summary,
    }
    if args.json:
        print(json.dumps(report))
        return 0 if valid else 1
    version = report["format_version"]
    rows = [
        ("path", str(path)),
        ("format", f"traindeck checkpoint, version {version}" if version is not None else "-"),
        ("step", _human_value(report["step"])),
        ("epoch", _human_value(report["epoch"])),
        ("metrics", _human_value(report["metrics"]) if header else "-"),
        ("world size", _human_value(report["world_size"])),
    ]
    known = {"step", "epoch", "metrics", "world_size"}
    rows += [(key.replace("_", " "), _human_value(value)) for key, value in summary.items() if key not in known]
    rows += [
        ("created", _human_age(report["created"]) if report["created"] else "-"),
        ("size", f"{_human_bytes(report['size_bytes'])} ({report['size_bytes']} bytes)"),
        ("valid", f"yes: {reason}" if valid else f"NO: {reason}"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    return 0 if valid else 1


def build_parser() -> argparse.ArgumentParser:
    from tui.cli_job import add_job_commands
    from tui.cli_runs import add_run_commands
    from tui.cli_sweep import add_sweep_commands

    parser = argparse.ArgumentParser(
        prog="traindeck",
        description="A PyTorch training engine with a terminal cockpit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_job_commands(sub)
    add_run_commands(sub)
    add_sweep_commands(sub)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="arguments for examples/demo.py (see --help)")
    demo.set_defaults(func=cmd_demo)
    ckpt = sub.add_parser("ckpt", help="inspect checkpoint files", description="Inspect checkpoint files.")
    ckpt.set_defaults(func=lambda _args: ckpt.print_help() or 0)
    ckpt_sub = ckpt.add_subparsers(dest="ckpt_command", metavar="COMMAND")
    inspect = ckpt_sub.add_parser("inspect", help=cmd_ckpt_inspect.__doc__, description=cmd_ckpt_inspect.__doc__
                                  + " Exit status: 0 valid, 1 invalid, 2 missing.")
    inspect.add_argument("path", help="the checkpoint file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    inspect.set_defaults(func=cmd_ckpt_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        args.demo_args = extra + args.demo_args
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from tui.cli_job import open_cockpit

            return open_cockpit(None, None)
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"traindeck: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
