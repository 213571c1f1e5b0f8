"""Keeping CPython's full garbage collections out of a fit.

A process that imported torch holds 200-500k objects the collector tracks. A training loop
allocates steadily (metric values that live until the next flush, batches, autograd graphs),
and each time the survivors have grown the oldest generation by a quarter, CPython scans all
of it: on the bench model logging 50 values a step that was a 205-290 ms stall every
1.5-2 s, collecting nothing. So after the first full collection in a fit (the heap has just
been cleaned: nothing is kept that was garbage), what is alive is frozen (``gc.freeze``) and
later collections scan only objects made since. The fit's end unfreezes it. A fit that never
triggers a full collection is left alone and pays nothing.
"""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["HeapFreezer"]


class HeapFreezer:
    """Watches for a fit's first full collection, then freezes the heap at the next call of ``maybe_freeze``."""

    def __init__(self) -> None:
        self.frozen = False
        self._collected = False
        self._watching = False

    def start(self) -> None:
        self._collected = False
        if not self._watching:
            gc.callbacks.append(self._on_collection)
            self._watching = True

    def maybe_freeze(self) -> None:
        """Freeze if a full collection has run since ``start``. Left alone when the program turned
        the collector off or froze objects itself."""
        if not self._collected:
            return
        self._stop_watching()
        if not self.frozen and gc.isenabled() and gc.get_freeze_count() == 0:
            gc.freeze()
            self.frozen = True

    def release(self) -> None:
        self._stop_watching()
        if self.frozen:
            gc.unfreeze()
            self.frozen = False

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            self._collected = True

    def _stop_watching(self) -> None:
        self._collected = False
        if self._watching:
            gc.callbacks.remove(self._on_collection)
            self._watching = False
