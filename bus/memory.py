"""The in-process Bus: a topic exchange, shard queues with one active consumer, dead letters.

It models what RabbitMQ does for us, so the same contract suite runs against both:
durable named queues that exist from their first declaration, competing consumers with a
prefetch window, single-active-consumer shard and host queues with failover on cancel,
redelivery by republishing with ``x-orrery-attempt``, and a dead-letter queue. Several
MemoryBus objects over one MemoryBroker behave like several processes on one broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import structlog

from bus import metrics
from bus.delivery import (
    DRAIN_TIMEOUT,
    Outcome,
    dead_headers,
    make_dead_letter,
    make_delivery,
    retry_headers,
    run_handler,
)
from bus.errors import BusUnavailable, CallTimeout
from bus.protocol import DeadLetter, Delivery, Handler
from bus.routing import Names, topic_matches
from schemas import ENCODER, CommandEnvelope, EventEnvelope, Reply
from schemas.envelope import REPLY_DECODER

log = structlog.get_logger(__name__)



@dataclass(slots=True)
class _Message:
    body: bytes
    routing_key: str
    headers: dict[str, str] | None = None


class _Queue:
    """A named queue: messages in order, consumers in arrival order."""

    def __init__(self, name: str, single_active: bool) -> None:
        self.name = name
        self.single_active = single_active
        self.messages: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []
        self._next = 0

    def put(self, message: _Message, *, front: bool = False) -> None:
        if front:
            self.messages.appendleft(message)
        else:
            self.messages.append(message)
        self.pump()

    def pump(self) -> None:
        """Hand queued messages to consumers with room in their prefetch window."""
        while self.messages:
            consumer = self._pick()
            if consumer is None:
                return
            consumer.deliver(self.messages.popleft())

    def _pick(self) -> _Consumer | None:
        if not self.consumers:
            return None
        if self.single_active:  # only the first consumer is active, as in RabbitMQ
            first = self.consumers[0]
            return first if first.has_room() else None
        count = len(self.consumers)
        for i in range(count):
            consumer = self.consumers[(self._next + i) % count]
            if consumer.has_room():
                self._next = (self._next + i + 1) % count
                return consumer
        return None


class _Consumer:
    def __init__(self, queue: _Queue, sub: _MemorySubscription, prefetch: int) -> None:
        self.queue = queue
        self.sub = sub
        self.prefetch = max(1, prefetch)
        self.inflight = 0

    def has_room(self) -> bool:
        return self.inflight < self.prefetch

    def deliver(self, message: _Message) -> None:
        self.inflight += 1
        self.sub.spawn(self, message)

    def settled(self) -> None:
        self.inflight -= 1
        self.queue.pump()


class MemoryBroker:
    """The shared state of every MemoryBus over it: one in-process 'RabbitMQ'."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.topic_bindings: dict[str, set[str]] = {}
        self.dead: deque[_Message] = deque()
        self.waiters: dict[str, dict[str, asyncio.Future[bytes]]] = {}
        #: routing key -> the queues bound to it, worked out once per key and binding set
        self._routes: dict[str, list[str]] = {}

    def declare(self, name: str, *, single_active: bool = False) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(name, single_active)
        return queue

    def bind_topic(self, queue: str, pattern: str) -> None:
        self.topic_bindings.setdefault(queue, set()).add(pattern)
        self._routes.clear()

    def route_event(self, routing_key: str, body: bytes) -> None:
        """Topic exchange: one copy to every queue with a matching binding."""
        names = self._routes.get(routing_key)
        if names is None:
            names = self._routes[routing_key] = [
                name for name, patterns in self.topic_bindings.items()
                if any(topic_matches(p, routing_key) for p in patterns)]
        for name in names:
            self.queues[name].put(_Message(body, routing_key))

    def put_raw(self, queue: str, body: bytes, routing_key: str | None = None) -> None:
        """Put raw bytes on a queue, as any AMQP client could (declares it if new)."""
        self.declare(queue).put(_Message(body, routing_key or queue))


class MemoryBus:
    """The Bus protocol in one process; ``broker`` is shared to model several processes."""

    def __init__(
        self, names: Names, *, max_attempts: int = 5, broker: MemoryBroker | None = None
    ) -> None:
        self.names = names
        self.broker = broker if broker is not None else MemoryBroker()
        self.max_attempts = max_attempts
        self._reply_queue = f"{names.prefix}.reply.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self.broker.waiters[self._reply_queue] = self._pending
        self._subs: set[_MemorySubscription] = set()
        self._closed = False

    async def publish_event(self, event: EventEnvelope) -> None:
        self._check_open()
        self.broker.route_event(event.routing_key, ENCODER.encode(event))
        metrics.PUBLISHED_EVENT.inc()

    async def publish_events(self, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            await self.publish_event(event)

    async def send(self, command: CommandEnvelope) -> None:
        self._check_open()
        queue = self.names.command_queue(command.kind, command.actor_id)
        self.broker.declare(queue, single_active=True).put(
            _Message(ENCODER.encode(command), queue)
        )
        metrics.PUBLISHED_COMMAND.inc()

    async def call(self, command: CommandEnvelope, timeout: float) -> Reply:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[command.command_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self.send(msgspec.structs.replace(command, reply_to=self._reply_queue))
                return REPLY_DECODER.decode(await future)
        except TimeoutError as exc:
            raise CallTimeout(f"no reply to {command.type} within {timeout}s") from exc
        finally:
            self._pending.pop(command.command_id, None)

    async def reply(self, reply_to: str, reply: Reply) -> None:
        self._check_open()
        waiting = self.broker.waiters.get(reply_to)
        future = waiting.get(reply.command_id) if waiting is not None else None
        metrics.PUBLISHED_REPLY.inc()
        if future is None:
            log.warning("reply_undeliverable", reply_to=reply_to, command_id=reply.command_id)
        elif not future.done():
            future.set_result(ENCODER.encode(reply))

    async def subscribe_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, prefetch: int = 100
    ) -> _MemorySubscription:
        self._check_open()
        name = self.names.event_queue(queue)
        self.broker.declare(name)
        for pattern in patterns:
            self.broker.bind_topic(name, pattern)
        return self._subscribe([name], handler, prefetch, metrics.EVENT)

    async def consume_commands(
        self, kind: str, handler: Handler, *, prefetch: int = 100,
        shards: Sequence[int] | None = None,
    ) -> _MemorySubscription:
        self._check_open()
        chosen = range(self.names.shards) if shards is None else shards
        names = [self.names.shard_queue(kind, i) for i in chosen]
        for name in names:
            self.broker.declare(name, single_active=True)
        return self._subscribe(names, handler, prefetch, metrics.COMMAND)

    async def consume_host(
        self, host: str, handler: Handler, *, prefetch: int = 100
    ) -> _MemorySubscription:
        self._check_open()
        name = self.names.host_queue(host)
        self.broker.declare(name, single_active=True)
        return self._subscribe([name], handler, prefetch, metrics.HOST)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        while self.broker.dead and len(out) < limit:
            message = self.broker.dead.popleft()
            out.append(make_dead_letter(message.body, message.headers))
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.cancel()
        self.broker.waiters.pop(self._reply_queue, None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusUnavailable("bus closed"))

    def settle(self, queue: _Queue, delivery: Delivery, outcome: Outcome, reason: str) -> None:
        """Ack, or republish for another attempt, or dead-letter (then ack)."""
        if outcome is Outcome.RETRY:
            queue.put(_Message(delivery.body, queue.name, retry_headers(delivery)))
        elif outcome is Outcome.DEAD:
            self.broker.dead.append(
                _Message(delivery.body, self.names.dead_letter_queue,
                         dead_headers(delivery, reason))
            )
            metrics.DEAD_LETTERS.inc()
            log.warning("bus_dead_lettered", queue=queue.name, reason=reason[:200])

    def forget(self, sub: _MemorySubscription) -> None:
        self._subs.discard(sub)

    def _subscribe(
        self, queues: list[str], handler: Handler, prefetch: int, queue_kind: str
    ) -> _MemorySubscription:
        sub = _MemorySubscription(self, handler, metrics.QueueMetrics(queue_kind))
        self._subs.add(sub)
        sub.start([self.broker.queues[n] for n in queues], prefetch)
        return sub

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailable("bus closed")


class _MemorySubscription:
    """Consumers on one or more queues; each delivery runs in a task this owns."""

    def __init__(self, bus: MemoryBus, handler: Handler, qm: metrics.QueueMetrics) -> None:
        self._bus = bus
        self._handler = handler
        self._metrics = qm
        self._consumers: list[_Consumer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False

    def start(self, queues: list[_Queue], prefetch: int) -> None:
        for queue in queues:
            consumer = _Consumer(queue, self, prefetch)
            self._consumers.append(consumer)
            queue.consumers.append(consumer)
        for queue in queues:
            queue.pump()

    def spawn(self, consumer: _Consumer, message: _Message) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(consumer, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, consumer: _Consumer, message: _Message) -> None:
        queue = consumer.queue
        delivery = make_delivery(message.body, message.routing_key, queue.name, message.headers)
        self._metrics.inflight.inc()
        settled = False
        try:
            outcome, reason = await run_handler(self._handler, delivery, self._bus.max_attempts)
            self._bus.settle(queue, delivery, outcome, reason)
            settled = True
            self._metrics.count(outcome.value)
        finally:
            self._metrics.inflight.dec()
            if not settled:  # cancelled mid-handler: unacked, so back to the head
                queue.messages.appendleft(message)
            consumer.settled()

    async def cancel(self) -> None:
        """Stop taking messages, let in-flight ones finish (bounded), hand the rest back."""
        if self._cancelled:
            return
        self._cancelled = True
        for consumer in self._consumers:
            consumer.queue.consumers.remove(consumer)
        others = self._tasks - {asyncio.current_task()}
        if others:
            _, pending = await asyncio.wait(others, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for consumer in self._consumers:
            consumer.queue.pump()
        self._bus.forget(self)

