"""Preemption signals only raise a flag; the Trainer acts on it at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Iterable

__all__ = ["PreemptionWatch", "PREEMPTED_EXIT_CODE"]

from engine._launcher import PREEMPTED_EXIT_CODE


class PreemptionWatch:
    """Installs handlers for ``signals`` while active; ``received`` names the first one caught."""

    def __init__(self, signals: Iterable[str]) -> None:
        self.signals = [self._lookup(name) for name in signals]
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _lookup(name: str) -> signal.Signals:
        try:
            return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        except KeyError:
            from engine._errors import ConfigError

            raise ConfigError(f"preemption_signals: {name!r} is not a signal name (e.g. 'SIGTERM')") from None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
