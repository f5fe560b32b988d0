"""Spreading a kind's shard queues over the live workers, one lease per shard.

Every worker of a kind joins the kind's lease group; with ``n`` members each aims for
``ceil(shards / n)`` shards. A worker consumes a shard only while it holds that shard's
lease: it claims free leases up to its share and gives back shards beyond it (stop
consuming first, then release), so a new worker soon takes its part and a dead worker's
leases, which die with its database session, are claimed by the others within a period.
Single-active-consumer on the shard queues stays as the safety net for the moment a lease
changes hands: even then one consumer per queue is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math

import structlog

from bus.protocol import Bus, Handler, Subscription
from store.leases import LeaseGroup, join_lease_group

log = structlog.get_logger(__name__)


class ShardBalancer:
    """Consumes a fair share of ``kind``'s shards for this process; ``run()`` until cancelled."""

    def __init__(
        self, store: object, bus: Bus, kind: str, handler: Handler, *, shards: int,
        prefetch: int, prefix: str, worker_id: str, period: float = 1.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.kind = kind
        self.handler = handler
        self.shards = shards
        self.prefetch = prefetch
        self.group_name = f"{prefix}.{kind}"
        self.period = period
        self.owned: dict[int, Subscription] = {}
        start = int.from_bytes(hashlib.blake2b(worker_id.encode(), digest_size=4).digest())
        self._order = [(start + i) % shards for i in range(shards)]
        self.settled = asyncio.Event()

    def _lease(self, shard: int) -> str:
        return f"{self.group_name}.shard.{shard}"

    async def run(self) -> None:
        while True:
            group: LeaseGroup | None = None
            try:
                group = await join_lease_group(self.store, self.group_name)
                while not group.lost.is_set():
                    await self.rebalance(group)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.period):
                            await group.lost.wait()
            except Exception as exc:  # database or broker away: drop everything, rejoin
                log.warning("shard_balance_failed", kind=self.kind, error=repr(exc))
            finally:
                await self._stop_all(group)
            await asyncio.sleep(self.period)

    async def rebalance(self, group: LeaseGroup) -> None:
        """Give back shards beyond the fair share, then claim free ones up to it."""
        members = await group.members()
        fair = math.ceil(self.shards / members)
        before = set(self.owned)
        for shard in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - fair)]:
            await self.owned.pop(shard).cancel()  # in-flight messages finish first
            await group.release(self._lease(shard))
        for shard in self._order:
            if len(self.owned) >= fair:
                break
            if shard in self.owned or not await group.try_acquire(self._lease(shard)):
                continue
            try:
                self.owned[shard] = await self.bus.consume_commands(
                    self.kind, self.handler, prefetch=self.prefetch, shards=[shard])
            except BaseException:
                await group.release(self._lease(shard))
                raise
        if set(self.owned) != before:
            log.info("shards_owned", kind=self.kind, shards=sorted(self.owned),
                     members=members, fair=fair)
        self.settled.set()

    async def _stop_all(self, group: LeaseGroup | None) -> None:
        owned, self.owned = self.owned, {}
        for sub in owned.values():
            await sub.cancel()
        if owned:
            log.info("shards_owned", kind=self.kind, shards=[])
        if group is not None:
            await group.close()
