"""``python -m engine.supervisor RUN_DIR``: supervise the run whose ``run.json`` the CLI wrote."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from engine.supervisor._supervisor import Supervisor

LINGER_ENV = "TRAINDECK_LINGER_S"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.supervisor", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--linger", type=float, default=float(os.environ.get(LINGER_ENV, 3.0)),
                        help="seconds to keep serving clients after the job ends (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor: %(message)s", stream=sys.stderr)
    return asyncio.run(Supervisor(args.run_dir, linger_s=args.linger).run())


if __name__ == "__main__":
    sys.exit(main())
