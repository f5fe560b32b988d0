"""The webhook dispatcher: the fan-out, the sender and replays, run by one process of the
cluster at a time (leadership ``webhooks``), in ``orrery worker`` and ``orrery up``.

On taking the lead it reads everything back from its tables (checkpoint, targets, outbox,
replays) and goes on; a failure (the database, a lost leadership) ends the round, which is
started again after a backoff, from the tables. Deliveries are at least once: a crash
loses nothing and skips nothing, and what it had sent but not yet recorded is sent again
with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.client import ActorClient
from actors.subscription import KIND, DisableSubscription
from store.leadership import STANDBY_SECONDS, leadership
from store.projections import DEFERRED_MOVE_SECONDS
from webhooks import tables
from webhooks.destinations import DestinationPolicy
from webhooks.fanout import FanOut, Replays
from webhooks.http import WebhookHttp
from webhooks.outbox import Counter, RetryPolicy, Writer
from webhooks.sender import MAX_RESPONSE_BYTES, Sender
from webhooks.targets import Targets

log = structlog.get_logger(__name__)

LEADERSHIP = "webhooks"
PRUNE_EVERY = 3600.0


@dataclass(frozen=True)
class DispatcherSettings:
    """How deliveries are made: retries, destinations, how long attempts are kept, and
    per subscription how many deliveries wait in memory and how many are in flight."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    retention: float = 7 * 86_400.0
    cap: int = 2000
    concurrency: int = 32


class Dispatcher:
    """Delivers webhooks while this process leads; stands by otherwise."""

    def __init__(self, store: Any, client: ActorClient,
                 settings: DispatcherSettings | None = None) -> None:
        self.store = store
        self.client = client
        self.settings = settings or DispatcherSettings()
        self.targets = Targets()

    async def run(self) -> None:
        """Until cancelled."""
        backoff = 0.1
        while True:
            async with leadership(self.store, LEADERSHIP) as leader:
                if not leader:
                    await asyncio.sleep(STANDBY_SECONDS)
                    continue
                try:
                    await self._lead()
                except Exception as exc:
                    log.warning("webhook_dispatcher_backoff", error=repr(exc), backoff=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)

    async def _lead(self) -> None:
        store, s = self.store, self.settings
        await store.run_ddl(tables.DDL)
        writer = Writer(store, await store.projection_checkpoint(tables.CHECKPOINT))
        self.targets = await Targets.load(store)
        seq = Counter(int((await store.query(tables.MAX_SEQ))[0][0] or 0))
        http = WebhookHttp(s.destinations, max_body=MAX_RESPONSE_BYTES)
        try:
            sender = Sender(store, writer, self.targets, http, s.retry, self._disable,
                            cap=s.cap, concurrency=s.concurrency)
            replays = Replays(store, writer, self.targets, sender, seq)
            fanout = FanOut(store, writer, self.targets, sender, replays, seq)
            log.info("webhook_dispatcher_leading", checkpoint=writer.checkpoint,
                     subscriptions=len(self.targets.by_id))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sender.run(t.id for t in self.targets.by_id.values()
                                          if t.enabled), name="webhook-sender")
                await sender.ready.wait()
                tg.create_task(replays.run(), name="webhook-replays")
                tg.create_task(fanout.run(), name="webhook-fanout")
                tg.create_task(self._prune(writer), name="webhook-prune")
                tg.create_task(self._flush(writer), name="webhook-checkpoint")
        finally:
            await http.close()

    async def _disable(self, sid: str, reason: str) -> None:
        """A destination answered 410 Gone: disable its subscription through its actor."""
        target = self.targets.by_id.get(sid)
        reply = await self.client.call(
            KIND, sid, DisableSubscription(reason=reason),
            correlation_id=f"req-webhooks-{uuid.uuid4()}",
            project_id=target.project_id if target else None)
        if not reply.ok and reply.error_type != "not_found":
            raise RuntimeError(f"disabling {sid}: {reply.error_type}: {reply.error}")

    @staticmethod
    async def _flush(writer: Writer) -> None:
        """Commit the checkpoint moves of batches that wrote nothing, now and then."""
        while True:
            await asyncio.sleep(DEFERRED_MOVE_SECONDS)
            await writer.flush()

    async def _prune(self, writer: Writer) -> None:
        """Drop attempt records older than the retention period, now and then."""
        while True:
            cutoff = time.time() - self.settings.retention
            await writer.write([(tables.PRUNE_ATTEMPTS, (cutoff,))])
            await asyncio.sleep(PRUNE_EVERY)
