"""The RabbitMQ Bus (aio-pika): confirmed publishing, shard queues, call/reply, dead letters.

Channels: ``pub`` (publisher confirms) carries every publish; ``admin`` declares lazily
and reads dead letters, so a refused declaration never closes the channel that has
publishes in flight; ``reply`` consumes this bus's exclusive reply queue; and every
subscription gets a channel of its own (its prefetch, its cancel). All are robust:
after the broker drops the connection they come back with their queues, bindings and
consumers, and a publish waits (up to ``unavailable_after``) instead of failing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import aiormq
import msgspec
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage as Incoming,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pamqp.common import FieldTable

from bus import metrics
from bus.amqp_consumer import OP_TIMEOUT, TEARDOWN_ERRORS, TRANSIENT, AmqpSubscription
from bus.amqp_publish import Outgoing, Publisher, properties
from bus.delivery import dead_headers, make_dead_letter, retry_headers
from bus.errors import BusUnavailable, CallTimeout, Undeliverable
from bus.protocol import DeadLetter, Delivery, Handler
from bus.routing import Names
from schemas import ENCODER, CommandEnvelope, EventEnvelope, Reply
from schemas.envelope import REPLY_DECODER

log = structlog.get_logger(__name__)

SAC_ARGS: FieldTable = {"x-single-active-consumer": True}
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, *TRANSIENT)
#: declares a queue that a mandatory publish found missing
_Declare = Callable[[str], Awaitable[None]]
_Setup = Callable[[AbstractChannel, AmqpSubscription], Awaitable[None]]


class AmqpBus:
    """The Bus protocol on RabbitMQ. Make one with ``await AmqpBus.connect(url, names)``."""

    def __init__(
        self, conn: AbstractRobustConnection, names: Names, max_attempts: int,
        publisher: Publisher, admin: AbstractRobustChannel,
    ) -> None:
        self.names = names
        self.max_attempts = max_attempts
        self._conn = conn
        self._pub = publisher
        self._admin = admin
        self._reply_queue = f"{names.prefix}.reply.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._subs: set[AmqpSubscription] = set()
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str, names: Names, *, max_attempts: int = 5,
        unavailable_after: float = 30.0, reconnect_interval: float = 1.0,
    ) -> AmqpBus:
        """Connect (robustly), declare the exchanges and the dead-letter queue."""
        try:
            conn = await asyncio.wait_for(aio_pika.connect_robust(
                url, reconnect_interval=reconnect_interval,
                client_properties={"connection_name": f"orrery:{names.prefix}"},
            ), OP_TIMEOUT)
        except CONNECT_ERRORS as exc:
            raise BusUnavailable(f"cannot connect to the broker: {exc!r}") from exc
        try:
            return await cls._setup(conn, names, max_attempts, unavailable_after)
        except BaseException:
            await conn.close()
            raise

    @classmethod
    async def _setup(
        cls, conn: AbstractRobustConnection, names: Names, max_attempts: int,
        unavailable_after: float,
    ) -> AmqpBus:
        async with asyncio.timeout(OP_TIMEOUT):
            pub = await conn.channel(publisher_confirms=True)
            admin = await conn.channel(publisher_confirms=False)
            await pub.declare_exchange(
                names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            await pub.declare_exchange(
                names.commands_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
            await admin.declare_queue(names.dead_letter_queue, durable=True)
        assert isinstance(pub, AbstractRobustChannel)
        assert isinstance(admin, AbstractRobustChannel)
        publisher = Publisher(pub, unavailable_after)
        bus = cls(conn, names, max_attempts, publisher, admin)
        await bus._start_replies()
        return bus

    async def _start_replies(self) -> None:
        async with asyncio.timeout(OP_TIMEOUT):
            channel = await self._conn.channel(publisher_confirms=False)
            queue = await channel.declare_queue(
                self._reply_queue, exclusive=True, auto_delete=True)
            await queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: Incoming) -> None:
        try:
            reply = REPLY_DECODER.decode(message.body)
        except msgspec.DecodeError:
            log.warning("reply_undecodable", size=len(message.body))
            return
        future = self._pending.get(reply.command_id)
        if future is not None and not future.done():
            future.set_result(reply)

    # -- publishing --------------------------------------------------------------------

    async def publish_event(self, event: EventEnvelope) -> None:
        self._check_open()
        await self._pub.publish(self._event(event))
        metrics.PUBLISHED_EVENT.inc()

    async def publish_events(self, events: Sequence[EventEnvelope]) -> None:
        """Many confirms in flight; in order; a failed window is resent from its first gap."""
        self._check_open()
        items = [self._event(e) for e in events]
        await self._pub.publish_many(items)
        metrics.PUBLISHED_EVENT.inc(len(items))

    async def send(self, command: CommandEnvelope) -> None:
        self._check_open()
        queue = self.names.command_queue(command.kind, command.actor_id)
        out = Outgoing(self.names.commands_exchange, queue, ENCODER.encode(command), properties(
            correlation_id=command.command_id, reply_to=command.reply_to))
        await self._to_queue(out, self._declare_command_queue)
        metrics.PUBLISHED_COMMAND.inc()

    async def call(self, command: CommandEnvelope, timeout: float) -> Reply:
        self._check_open()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[command.command_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self.send(msgspec.structs.replace(command, reply_to=self._reply_queue))
                return await future
        except TimeoutError as exc:
            raise CallTimeout(f"no reply to {command.type} within {timeout}s") from exc
        finally:
            self._pending.pop(command.command_id, None)

    async def reply(self, reply_to: str, reply: Reply) -> None:
        """Answer a call; a caller that is gone (no reply queue) is logged, not raised."""
        self._check_open()
        out = Outgoing("", reply_to, ENCODER.encode(reply), properties(
            persistent=False, correlation_id=reply.command_id))
        routed = await self._pub.publish(out, mandatory=True)
        metrics.PUBLISHED_REPLY.inc()
        if not routed:
            log.warning("reply_undeliverable", reply_to=reply_to, command_id=reply.command_id)

    async def _to_queue(self, out: Outgoing, declare: _Declare) -> None:
        """Mandatory publish; if nothing took it, declare the queue and try once more."""
        if await self._pub.publish(out, mandatory=True):
            return
        await declare(out.key)
        if not await self._pub.publish(out, mandatory=True):
            raise Undeliverable(f"no queue takes {out.key!r}")

    async def _declare_command_queue(self, queue: str) -> None:
        """Shard and host queues: durable, single active consumer, bound by their name."""
        channel = await self._underlay(self._admin)
        async with asyncio.timeout(OP_TIMEOUT):
            await channel.queue_declare(queue, durable=True, arguments=SAC_ARGS)
            await channel.queue_bind(queue, self.names.commands_exchange, routing_key=queue)

    async def _declare_dead_letter_queue(self, queue: str) -> None:
        channel = await self._underlay(self._admin)
        async with asyncio.timeout(OP_TIMEOUT):
            await channel.queue_declare(queue, durable=True)

    async def _underlay(self, channel: AbstractRobustChannel) -> aiormq.abc.AbstractChannel:
        try:
            async with asyncio.timeout(self._pub.unavailable_after):
                await channel.ready()
                return await channel.get_underlay_channel()
        except TimeoutError as exc:
            raise BusUnavailable("broker unavailable") from exc

    # -- settling (used by subscriptions) ----------------------------------------------

    async def republish(self, queue: str, delivery: Delivery) -> None:
        """Put a failed delivery back at the tail of its queue with attempt + 1."""
        out = Outgoing("", queue, delivery.body, properties(
            headers=_table(retry_headers(delivery))))
        if not await self._pub.publish(out, mandatory=True):
            raise Undeliverable(f"queue {queue!r} is gone")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        out = Outgoing("", self.names.dead_letter_queue, delivery.body, properties(
            headers=_table(dead_headers(delivery, reason))))
        await self._to_queue(out, self._declare_dead_letter_queue)
        metrics.DEAD_LETTERS.inc()
        log.warning("bus_dead_lettered", queue=delivery.queue, reason=reason[:200])

    def _event(self, event: EventEnvelope) -> Outgoing:
        """Persistent, to the topic exchange; the event id is the AMQP message id."""
        return Outgoing(self.names.events_exchange, event.routing_key, ENCODER.encode(event),
                        properties(message_id=str(event.event_id)))

    def forget(self, sub: AmqpSubscription) -> None:
        self._subs.discard(sub)

    # -- consuming ---------------------------------------------------------------------

    async def subscribe_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, prefetch: int = 100
    ) -> AmqpSubscription:
        async def setup(channel: AbstractChannel, sub: AmqpSubscription) -> None:
            q = await channel.declare_queue(self.names.event_queue(queue), durable=True)
            for pattern in patterns:
                await q.bind(self.names.events_exchange, routing_key=pattern)
            await sub.consume(q)

        return await self._subscribe(handler, prefetch, metrics.EVENT, setup)

    async def consume_commands(
        self, kind: str, handler: Handler, *, prefetch: int = 100,
        shards: Sequence[int] | None = None,
    ) -> AmqpSubscription:
        chosen = range(self.names.shards) if shards is None else shards
        queues = [self.names.shard_queue(kind, i) for i in chosen]
        return await self._consume_single_active(queues, handler, prefetch, metrics.COMMAND)

    async def consume_host(
        self, host: str, handler: Handler, *, prefetch: int = 100
    ) -> AmqpSubscription:
        queues = [self.names.host_queue(host)]
        return await self._consume_single_active(queues, handler, prefetch, metrics.HOST)

    async def _consume_single_active(
        self, queues: list[str], handler: Handler, prefetch: int, queue_kind: str
    ) -> AmqpSubscription:
        async def setup(channel: AbstractChannel, sub: AmqpSubscription) -> None:
            for name in queues:
                q = await channel.declare_queue(name, durable=True, arguments=SAC_ARGS)
                await q.bind(self.names.commands_exchange, routing_key=name)
                await sub.consume(q)

        return await self._subscribe(handler, prefetch, queue_kind, setup)

    async def _subscribe(
        self, handler: Handler, prefetch: int, queue_kind: str, setup: _Setup
    ) -> AmqpSubscription:
        """A channel of its own with the prefetch, then ``setup``; nothing left open if
        that fails (the broker being away is BusUnavailable)."""
        self._check_open()
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                channel = await self._conn.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
        except TRANSIENT as exc:
            raise BusUnavailable(f"cannot open a channel: {exc!r}") from exc
        sub = AmqpSubscription(self, channel, handler, queue_kind)
        self._subs.add(sub)
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                await setup(channel, sub)
        except BaseException as exc:
            await sub.cancel()
            if isinstance(exc, TRANSIENT):
                raise BusUnavailable(f"cannot subscribe: {exc!r}") from exc
            raise
        return sub

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read and remove up to ``limit`` dead letters (each acked once read)."""
        self._check_open()
        out: list[DeadLetter] = []
        async with asyncio.timeout(OP_TIMEOUT):
            queue = await self._admin.get_queue(self.names.dead_letter_queue, ensure=False)
            while len(out) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=OP_TIMEOUT)
                if message is None:
                    break
                out.append(make_dead_letter(message.body, message.headers))
                await message.ack()
        return out

    async def close(self) -> None:
        """Cancel every subscription, fail pending calls, close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusUnavailable("bus closed"))
        try:
            await asyncio.wait_for(self._conn.close(), OP_TIMEOUT)
        except TEARDOWN_ERRORS as exc:
            log.info("bus_close_failed", error=repr(exc))

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailable("bus closed")


def _table(headers: dict[str, str]) -> FieldTable:
    return dict(headers)
