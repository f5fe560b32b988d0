"""Garbage collection in a long-running Orrery process.

CPython's full (generation 2) collection walks every object the collector tracks, and an
Orrery process keeps many for long: actor states, cached server documents, the holds'
indexes. In the all-in-one process after 4,000 boots a full collection took 15-75 ms,
and every request in flight waited for it: servers/detail's p99 was 80 ms, 60 of them
the collector's.

So after each full collection the survivors are frozen (``gc.freeze``): they have shown
themselves long-lived, and the next full collections walk only what came since (1-15 ms
in the same run; servers/detail p99 20 ms). A frozen object is never examined for
cycles again, so a cycle of objects that die after being frozen would be kept: every
``refreeze_seconds`` the next full collection first unfreezes everything and walks it all
once, so such garbage lives at most that long.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: how long objects stay frozen before one full collection walks them all again
REFREEZE_SECONDS = 600.0


class CollectorPolicy:
    """Freezes what survives each full collection; thaws all every ``refreeze_seconds``."""

    def __init__(self, refreeze_seconds: float = REFREEZE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.refreeze_seconds = refreeze_seconds
        self._clock = clock
        self._thawed_at = clock()
        #: full collections seen, and how many of them were followed by a thaw
        self.full, self.thaws = 0, 0

    def install(self) -> CollectorPolicy:
        gc.callbacks.append(self._on_collect)
        return self

    def remove(self) -> None:
        """Stop, and hand every frozen object back to the collector."""
        if self._on_collect in gc.callbacks:
            gc.callbacks.remove(self._on_collect)
        gc.unfreeze()

    def _on_collect(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        self.full += 1
        now = self._clock()
        if now - self._thawed_at >= self.refreeze_seconds:
            # the next full collection walks everything once (what was frozen included)
            gc.unfreeze()
            self._thawed_at = now
            self.thaws += 1
        else:
            gc.freeze()
