"""Plain-words messages to the console: start-up summary, warnings, automatic actions."""

from __future__ import annotations

import logging
import sys

__all__ = ["log"]

log = logging.getLogger("traindeck")


def _install_console_handler() -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[traindeck] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


_install_console_handler()
