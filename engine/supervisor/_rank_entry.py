"""What torchrun starts as each rank under a supervisor: send this process's stdout and stderr
to ``logs/rank<RANK>.log``, then become ``python -u SCRIPT ARGS``.

The descriptors are redirected before the exec, so everything the rank writes (Python
tracebacks, C++ warnings, a segfault's message) lands in the file unbuffered: nothing is
lost when a rank crashes.
"""

from __future__ import annotations

import os
import sys

LOG_DIR_ENV = "TRAINDECK_LOG_DIR"


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m engine.supervisor._rank_entry SCRIPT [ARGS...]")
    log_dir = os.environ.get(LOG_DIR_ENV)
    if log_dir:
        path = os.path.join(log_dir, f"rank{os.environ.get('RANK', '0')}.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.execv(sys.executable, [sys.executable, "-u", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
