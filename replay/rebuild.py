"""``rebuild``: projections refolded from position 0 while the system runs.

The projections are rebuilt together by ``ProjectionHub.rebuild``, reading the log once
for all of them up to the head it had when the rebuild began, at least.

On PostgreSQL they are folded into tables beside the live ones, by one worker process
per core for the projections that fold each stream alone, and swapped in at the end
(store.pg_rebuild): readers see the old tables until then, and a live process folding
the same projections goes on undisturbed. On SQLite their tables and checkpoints are
dropped and recreated and the log folded into them in batches; a live process folding the
same projection notices its checkpoint moved back and folds from there too; whichever
commits a batch first moves the checkpoint, the other goes on from it (the checkpoint is
compare-and-swapped), so the two never fold an event twice.

While it runs, the collector of this process looks at young objects every 50,000
allocations rather than every 700: a rebuild allocates a few objects per event and keeps
few, and the collections walked its rows over and over.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO

import msgspec

from replay.errors import NotFound
from store.pg_rebuild import WORKER_GC_THRESHOLDS
from store.projections import Projection, ProjectionHost, ProjectionHub


class Rebuilt(msgspec.Struct, frozen=True, kw_only=True):
    """One projection rebuilt: the events this run folded, its checkpoint, how fast."""

    projection: str
    events: int
    checkpoint: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class ProgressBar:
    """A one-line bar on a terminal (redrawn in place); elsewhere, nothing until done."""

    def __init__(self, name: str, out: IO[str] | None = None, width: int = 30) -> None:
        self.name = name
        self.out = out or sys.stderr
        self.width = width
        self.events = 0
        self.live = self.out.isatty()
        self._drawn = 0.0

    def __call__(self, folded: int, checkpoint: int, target: int) -> None:
        self.events += folded
        now = time.monotonic()
        if not self.live or (now - self._drawn < 0.1 and checkpoint < target):
            return
        self._drawn = now
        share = min(checkpoint / target, 1.0) if target else 1.0
        bar = "#" * int(share * self.width)
        self.out.write(f"\r{self.name:14s} [{bar:{self.width}s}] {share:6.1%}"
                       f"  {self.events} events")
        self.out.flush()

    def done(self, result: Rebuilt) -> None:
        end = "\n" if self.live else ""
        self.out.write(f"{end}{result.projection}: {result.events} events folded up to"
                       f" position {result.checkpoint} in {result.seconds:.2f} s"
                       f" ({result.rate:.0f} events/s)\n")
        self.out.flush()


@contextlib.contextmanager
def bulk_collection() -> Iterator[None]:
    """The collector's thresholds of a bulk fold (``WORKER_GC_THRESHOLDS``) for a while."""
    before = gc.get_threshold()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def choose(projections: Sequence[Projection], name: str | None) -> list[Projection]:
    """Every projection, or the one called ``name`` (NotFound otherwise)."""
    if name is None:
        return list(projections)
    chosen = [p for p in projections if p.name == name]
    if not chosen:
        known = ", ".join(sorted(p.name for p in projections))
        raise NotFound(f"no projection {name!r} (known: {known})")
    return chosen


async def rebuild(store: ProjectionHost, projections: Sequence[Projection], *,
                  show: bool = True, batch: int = 5000,
                  workers: int | None = None) -> list[Rebuilt]:
    """Rebuild ``projections`` together, reading the log once for all of them (a progress
    bar on stderr when ``show``), with up to ``workers`` processes (default: one per core)
    where the store can; one result per projection."""
    names = [p.name for p in projections]
    label = names[0] if len(names) == 1 else f"{len(names)} projections"
    bar = ProgressBar(label) if show else None
    hub = ProjectionHub(store, projections, batch=batch)
    counted = [0]

    def progress(folded: int, checkpoint: int, target: int) -> None:
        counted[0] += folded
        if bar is not None:
            bar(folded, checkpoint, target)

    started = time.perf_counter()
    with bulk_collection():
        await hub.rebuild(progress, workers=workers or os.cpu_count() or 1)
    seconds = time.perf_counter() - started
    results = [Rebuilt(projection=name, events=counted[0], checkpoint=hub.checkpoint(name),
                       seconds=seconds) for name in names]
    if bar is not None:
        bar.done(results[0] if len(results) == 1 else msgspec.structs.replace(
            results[0], projection=label, checkpoint=min(r.checkpoint for r in results)))
    return results
