"""The ``traindeck`` command: one subcommand per job a user has.

Nothing here imports torch: ``traindeck --help`` must answer at once, and the
training itself always runs in a child process started from here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

DEMO_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _run_script(script: Path, script_args: Sequence[str]) -> int:
    if not script.is_file():
        raise CLIError(f"no such script: {script}")
    if script.suffix != ".py":
        raise CLIError(f"{script} is not a Python script (.py)")
    try:
        return subprocess.call([sys.executable, str(script), *script_args])
    except KeyboardInterrupt:
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    """Run a training script in this terminal (headless, one process)."""
    if args.devices not in (None, 1):
        raise CLIError(f"--devices {args.devices}: this version runs one process per job; "
                       "multi-device launch is not available yet")
    if args.name:
        os.environ["TRAINDECK_RUN_NAME"] = args.name
    return _run_script(Path(args.script), args.script_args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the built-in demo (a small transformer learning to sort digits)."""
    if not DEMO_SCRIPT.is_file():
        raise CLIError(f"the demo script is missing ({DEMO_SCRIPT}); run from a source checkout of traindeck")
    return _run_script(DEMO_SCRIPT, args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traindeck",
        description="A PyTorch training engine with a terminal cockpit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    run.add_argument("--devices", type=int, default=None, help="number of devices (1 in this version)")
    run.add_argument("--name", help="run name (the run directory is runs/NAME)")
    run.add_argument("script", help="the training script (a .py file)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="arguments for examples/demo.py (see --help)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = extra + args.demo_args
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"traindeck: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
