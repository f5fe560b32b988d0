"""The relay: publishes every committed event to the bus, in log order, at least once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

from schemas import EventEnvelope
from store.leadership import STANDBY_SECONDS, leadership
from store.protocol import EventStore, ProjectionStore

log = structlog.get_logger(__name__)

PUBLISHED = Counter("orrery_relay_published_total", "Events the relay published")
LAG = Gauge("orrery_relay_lag_seconds", "Age of the newest event the relay has published")
POSITION = Gauge("orrery_relay_position", "The relay's durable checkpoint")
OUTAGES = Counter("orrery_relay_outages_total", "Publish failures the relay backed off from")


class Publisher(Protocol):
    """The part of the Bus the relay needs (store/ does not import bus/)."""

    async def publish_events(self, events: Sequence[EventEnvelope]) -> None:
        ...


class RelayStore(EventStore, ProjectionStore, Protocol):
    pass


def bookkeeping(event: EventEnvelope) -> bool:
    """The runtime's own timer events (``timer.set`` / ``fired`` / ``cancelled``): the
    timers projection reads them from the log, nothing on the bus consumes them, so the
    relay keeps them off the broker. They stay in the log like every event."""
    return event.type.startswith("timer.")


class Relay:
    """Follows the log from its durable checkpoint and publishes each batch; the checkpoint
    only ever moves to what the broker has confirmed, and is saved every
    ``checkpoint_every`` seconds. A crash republishes what was published since the last
    save (at least once, never lost); a broker outage makes it back off and resume from
    the checkpoint.

    Only one relay publishes at a time when the store offers leadership (PostgreSQL
    advisory lock); the others stand by. Events for which ``skip`` is true are not
    published (by default the runtime's timer bookkeeping).
    """

    def __init__(
        self, store: RelayStore, bus: Publisher, *, name: str = "relay", batch: int = 500,
        max_backoff: float = 5.0, checkpoint_every: float = 0.2,
        skip: Callable[[EventEnvelope], bool] = bookkeeping,
    ) -> None:
        self.skip = skip
        self.store = store
        self.bus = bus
        self.name = name
        self.batch = batch
        self.max_backoff = max_backoff
        self.checkpoint_every = checkpoint_every
        self.published = 0
        self._saved = 0
        self._published = 0

    async def run(self) -> None:
        """Publish until cancelled."""
        backoff = 0.05
        while True:
            async with leadership(self.store, self.name) as leader:
                if not leader:
                    await asyncio.sleep(STANDBY_SECONDS)
                    continue
                try:
                    await self._follow()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    OUTAGES.inc()
                    log.warning("relay_backoff", error=repr(exc), backoff=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
            backoff = 0.05

    async def _follow(self) -> None:
        self._saved = self._published = await self.store.projection_checkpoint(self.name)
        POSITION.set(self._saved)
        log.info("relay_following", after=self._saved)
        async with asyncio.TaskGroup() as tg:
            flusher = tg.create_task(self._flush_loop(), name="relay-checkpoint")
            try:
                await self._publish_loop()
            finally:
                flusher.cancel()

    async def _publish_loop(self) -> None:
        async for events in self.store.subscribe(after=self._published, batch=self.batch):
            public = [e for e in events if not self.skip(e)]
            if public:
                await self.bus.publish_events(public)
            self._published = events[-1].position
            self.published += len(public)
            PUBLISHED.inc(len(public))
            LAG.set((dt.datetime.now(dt.UTC) - events[-1].occurred_at).total_seconds())

    async def _flush_loop(self) -> None:
        """Move the durable checkpoint to what the broker has confirmed, at most every
        ``checkpoint_every`` seconds: a commit per batch would double the relay's database
        work, and a crash only republishes what the last interval published."""
        while True:
            await asyncio.sleep(self.checkpoint_every)
            await self.flush()

    async def flush(self) -> None:
        """Save the checkpoint now if the relay has published past it."""
        target = self._published
        if target <= self._saved:
            return
        async with self.store.projection_tx(self.name, self._saved, target):
            pass
        self._saved = target
        POSITION.set(target)
