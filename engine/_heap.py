"""Keeping CPython's full garbage collections out of a long fit.

A process that imported torch holds 200-300k objects the collector tracks. A training loop
allocates steadily (metric values that live until the next flush, batches, autograd graphs),
and each time the survivors have grown the oldest generation by a quarter, CPython scans all
of it: on the bench model logging 50 values a step that was a 205-290 ms stall every
1.5-2 s, collecting nothing. Once a fit has run ``SETTLE_AFTER_S``, the heap is collected
once and what is alive is frozen (``gc.freeze``), so later collections scan only objects made
since. The fit's end unfreezes it, so whatever becomes garbage afterwards is collected as usual.
"""

from __future__ import annotations

import gc
import time

__all__ = ["HeapFreezer", "SETTLE_AFTER_S"]

SETTLE_AFTER_S = 2.0


class HeapFreezer:
    """Freezes the heap once a fit has run a while; a short fit never pays for the collection."""

    def __init__(self) -> None:
        self._due: float | None = None
        self.frozen = False

    def start(self) -> None:
        self._due = time.monotonic() + SETTLE_AFTER_S

    def maybe_freeze(self) -> None:
        """Collect and freeze if the fit has run long enough (once). Left alone when the
        program turned the collector off or froze objects itself."""
        if self._due is None or time.monotonic() < self._due:
            return
        self._due = None
        if gc.isenabled() and gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()
            self.frozen = True

    def release(self) -> None:
        self._due = None
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
