"""Sending: per subscription, the heads of its resources' chains POSTed concurrently, each
resource's deliveries strictly one after the other.

Each subscription has a `Lane`: its pending deliveries grouped by stream (one resource's
events, in the order the fan-out wrote them), at most `Sender.cap` of them in memory; the
rest wait in the outbox table (the lane is *spilled*) and are loaded in order as the
lane drains. Only a chain's head is ever in flight, so a later event of a resource waits
until the earlier one was accepted, while other resources go on (up to ``concurrency``
in flight per subscription). An attempt's outcome:

- 2xx: accepted; the outbox row goes, the chain's next delivery is due at once;
- 410 Gone: the subscription is disabled (``on_gone``, a command to its actor); nothing
  more is sent to it;
- anything else (another status, a timeout, a refused or failed connection): retried
  after the policy's backoff, until ``period`` after the first attempt, then given up
  (the chain moves on).

Every attempt becomes a ``webhook_attempts`` row; rows and outbox changes are written in
one transaction every `FLUSH_SECONDS`. A crash loses at most the record of the last
round's attempts: those are sent again (same ``webhook-id``), never skipped.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter as Metric, Histogram

from webhooks import signing, tables
from webhooks.http import WebhookHttp
from webhooks.outbox import Counter, Delivery, RetryPolicy, Statement, Writer
from webhooks.targets import Targets

log = structlog.get_logger(__name__)

ATTEMPTS = Metric("orrery_webhook_attempts_total", "Webhook delivery attempts", ["status"])
LAG = Histogram("orrery_webhook_delivery_lag_seconds",
                "From an event's commit to its acceptance by the receiver",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 30, 300, 3600))
FLUSH_SECONDS = 0.05
MAX_RESPONSE_BYTES = 64 * 1024
#: gives up a disabled subscription (reason)
OnGone = Callable[[str, str], Awaitable[None]]


@dataclass
class Lane:
    """One subscription's pending deliveries in memory, by stream."""

    subscription_id: str
    spilled: bool = False
    loaded_to: int = 0
    size: int = 0
    gone: bool = False
    chains: dict[str, deque[Delivery]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    #: (due, seq, stream) of chain heads not in flight
    due: list[tuple[float, int, str]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, delivery: Delivery) -> None:
        chain = self.chains.get(delivery.stream)
        if chain is None:
            chain = self.chains[delivery.stream] = deque()
            heapq.heappush(self.due, (delivery.next_at, delivery.seq, delivery.stream))
        chain.append(delivery)
        self.size += 1
        self.loaded_to = max(self.loaded_to, delivery.seq)
        self.wake.set()

    def next_ready(self, now: float) -> Delivery | None:
        if self.due and self.due[0][0] <= now:
            stream = heapq.heappop(self.due)[2]
            self.busy.add(stream)
            return self.chains[stream][0]
        return None

    def settle(self, delivery: Delivery, *, done: bool) -> None:
        """The head's attempt ended: drop it when ``done``, and schedule the chain's head."""
        chain = self.chains[delivery.stream]
        self.busy.discard(delivery.stream)
        self.wake.set()  # a slot is free, whatever happens to the chain
        if done:
            chain.popleft()
            self.size -= 1
        if not chain:
            del self.chains[delivery.stream]
            return
        head = chain[0]
        heapq.heappush(self.due, (head.next_at, head.seq, head.stream))


class Sender:
    """Delivers what the fan-out hands over (`offer`) and what waits in the outbox."""

    def __init__(self, store: tables.QueryStore, writer: Writer, targets: Targets,
                 http: WebhookHttp, policy: RetryPolicy, on_gone: OnGone, *,
                 cap: int = 2000, concurrency: int = 16,
                 rng: random.Random | None = None) -> None:
        self.store, self.writer, self.targets = store, writer, targets
        self.http, self.policy, self.on_gone = http, policy, on_gone
        self.cap, self.concurrency = cap, concurrency
        self.rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}
        self.seq = Counter()
        self._results: list[Statement] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        #: set once ``run`` can take offers
        self.ready = asyncio.Event()

    async def run(self, spilled: Iterable[str]) -> None:
        """Deliver until cancelled; ``spilled`` subscriptions start from the outbox."""
        self.seq.last = int((await self.store.query(tables.MAX_ATTEMPT_SEQ))[0][0] or 0)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for sid in spilled:
                self._lane(sid).spilled = True
            self.ready.set()
            tg.create_task(self._flush_forever(), name="webhook-results")

    def offer(self, deliveries: Iterable[Delivery]) -> None:
        """Take newly written deliveries (the caller holds the writer's lock)."""
        for delivery in deliveries:
            lane = self._lane(delivery.subscription_id)
            if lane.gone or delivery.seq <= lane.loaded_to:
                continue
            if lane.spilled or lane.size >= self.cap:
                lane.spilled = True
                continue
            lane.add(delivery)

    def cancel(self, sid: str) -> None:
        """Forget a subscription's deliveries (its outbox rows are deleted by the caller)."""
        self.lanes.pop(sid, None)
        task = self._tasks.pop(sid, None)
        if task is not None:
            task.cancel()

    def backlog(self, sid: str) -> int | None:
        """Deliveries of ``sid`` waiting in memory; None while more wait in the outbox."""
        lane = self.lanes.get(sid)
        if lane is None:
            return 0
        return None if lane.spilled else lane.size

    def _lane(self, sid: str) -> Lane:
        lane = self.lanes.get(sid)
        if lane is None:
            lane = self.lanes[sid] = Lane(sid)
            assert self._tg is not None, "the sender is not running"
            self._tasks[sid] = self._tg.create_task(self._work(lane), name=f"webhook:{sid}")
        return lane

    async def _work(self, lane: Lane) -> None:
        async with asyncio.TaskGroup() as attempts:
            while True:
                now = time.time()
                if lane.spilled and lane.size <= self.cap // 2 and not lane.gone:
                    await self._refill(lane)
                while (not lane.gone and len(lane.busy) < self.concurrency
                       and (d := lane.next_ready(now))):
                    attempts.create_task(self._attempt(lane, d))
                await self._sleep(lane, now)

    async def _sleep(self, lane: Lane, now: float) -> None:
        """Until something changes (wake) or the next head is due."""
        lane.wake.clear()
        idle = lane.due and len(lane.busy) < self.concurrency and not lane.gone
        timeout = max(0.0, lane.due[0][0] - now) if idle else None
        try:
            async with asyncio.timeout(timeout):
                await lane.wake.wait()
        except TimeoutError:
            pass

    async def _refill(self, lane: Lane) -> None:
        """Load the lane's next deliveries from the outbox, in order (under the writer's
        lock, so no fan-out commits between the read and the lane's state)."""
        limit = self.cap - lane.size
        async with self.writer.lock:
            rows = await self.store.query(tables.SELECT_OUTBOX, lane.subscription_id,
                                          lane.loaded_to, limit)
            for row in rows:
                lane.add(Delivery.from_row(row))
            lane.spilled = len(rows) == limit

    async def _attempt(self, lane: Lane, delivery: Delivery) -> None:
        target = self.targets.by_id.get(lane.subscription_id)
        if target is None or not target.enabled:
            return
        started, at = time.perf_counter(), time.time()
        code, error = await self._post(target.url, target.key, delivery)
        latency = (time.perf_counter() - started) * 1000
        delivery.attempts += 1
        delivery.first_at = delivery.first_at or at
        if code is not None and 200 <= code < 300:
            LAG.observe(max(0.0, time.time() - delivery.occurred_at))
            self._record(delivery, at, "delivered", code, latency, None, None)
            self._results.append((tables.DELETE_OUTBOX, (delivery.subscription_id,
                                                         delivery.seq)))
            lane.settle(delivery, done=True)
        elif code == 410:
            self._record(delivery, at, "gone", code, latency, error, None)
            await self._gone(lane, delivery, target.url)
        else:
            self._retry(lane, delivery, at, code, latency, error)

    def _retry(self, lane: Lane, delivery: Delivery, at: float, code: int | None,
               latency: float, error: str | None) -> None:
        next_at = at + self.policy.delay(delivery.attempts, self.rng)
        assert delivery.first_at is not None
        if next_at - delivery.first_at > self.policy.period:
            self._record(delivery, at, "gave_up", code, latency, error, None)
            self._results.append((tables.DELETE_OUTBOX, (delivery.subscription_id,
                                                         delivery.seq)))
            log.warning("webhook_given_up", subscription=delivery.subscription_id,
                        event_id=delivery.event_id, attempts=delivery.attempts)
            lane.settle(delivery, done=True)
            return
        delivery.next_at = next_at
        self._record(delivery, at, "failed", code, latency, error, next_at)
        self._results.append((tables.RETRY_OUTBOX, (
            delivery.subscription_id, delivery.seq, delivery.attempts, delivery.first_at,
            next_at)))
        lane.settle(delivery, done=False)

    async def _gone(self, lane: Lane, delivery: Delivery, url: str) -> None:
        """Stop sending and have the subscription disabled; if that fails, the delivery
        is tried again later (and asks again when it meets the 410 again)."""
        lane.gone = True
        log.info("webhook_gone", subscription=lane.subscription_id, url=url)
        try:
            await self.on_gone(lane.subscription_id, f"{url} answered 410 Gone")
        except Exception as exc:
            log.warning("webhook_disable_failed", subscription=lane.subscription_id,
                        error=repr(exc))
            lane.gone = False
            delivery.next_at = time.time() + self.policy.delay(delivery.attempts, self.rng)
            lane.settle(delivery, done=False)
            return
        lane.wake.set()

    async def _post(self, url: str, key: bytes,
                    delivery: Delivery) -> tuple[int | None, str | None]:
        """(status, None) or (None, what went wrong): one POST, no redirects followed."""
        headers = signing.headers(key, delivery.event_id, int(time.time()), delivery.body)
        try:
            async with asyncio.timeout(self.policy.timeout):
                status = await self.http.post(url, delivery.body, headers)
        except TimeoutError:
            return None, f"no answer within {self.policy.timeout} s"
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        return status, None if status < 300 else f"HTTP {status}"

    def _record(self, delivery: Delivery, at: float, status: str, code: int | None,
                latency: float, error: str | None, next_retry: float | None) -> None:
        ATTEMPTS.labels(status).inc()
        self._results.append((tables.INSERT_ATTEMPT, (
            delivery.delivery_id, delivery.attempts, self.seq.next(), delivery.subscription_id,
            delivery.event_id, delivery.position, delivery.stream, delivery.type, at, status,
            code, latency, error, next_retry)))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        """Write the attempts and outbox changes recorded since the last flush. The
        attempt rows go after the outbox changes, not between them: a run of one statement
        is sent as one batch (PostgreSQL: one executemany), so interleaved they would cost
        a round trip each. Attempt rows depend on nothing else in the batch; the outbox
        changes keep their order."""
        results, self._results = self._results, []
        if results:
            outbox = [s for s in results if s[0] != tables.INSERT_ATTEMPT]
            attempts = [s for s in results if s[0] == tables.INSERT_ATTEMPT]
            await self.writer.write(outbox + attempts)
