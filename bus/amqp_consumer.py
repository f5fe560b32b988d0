"""One AMQP subscription: a channel, consumers on its queues, a task per delivery, settling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from bus import metrics
from bus.delivery import DRAIN_TIMEOUT, Outcome, make_delivery, run_handler
from bus.errors import BusError
from bus.protocol import Delivery, Handler

log = structlog.get_logger(__name__)

#: one broker round trip (declare, bind, consume, cancel, close)
OP_TIMEOUT = 10.0

#: errors that mean "the connection or channel went away", worth waiting out
TRANSIENT: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
)
#: errors after which a delivery is left unacked (the broker redelivers it)
SETTLE_ERRORS: tuple[type[BaseException], ...] = (BusError, *TRANSIENT)
#: errors a teardown step may end with; the broker repairs what is left (channel closes)
TEARDOWN_ERRORS: tuple[type[BaseException], ...] = (BusError, RuntimeError, *TRANSIENT)


class Settler(Protocol):
    """The bus side of settling: republish for a retry, move to the dead-letter queue."""

    max_attempts: int

    async def republish(self, queue: str, delivery: Delivery) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    def forget(self, sub: AmqpSubscription) -> None: ...


class AmqpSubscription:
    """Consumers on one channel (prefetch per consumer); cancel() drains then closes it."""

    def __init__(
        self, settler: Settler, channel: AbstractChannel, handler: Handler, queue_kind: str
    ) -> None:
        self._settler = settler
        self._channel = channel
        self._handler = handler
        self._metrics = metrics.QueueMetrics(queue_kind)
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._tasks: set[asyncio.Task[object]] = set()
        self._cancelled = False

    async def consume(self, queue: AbstractQueue) -> None:
        """Start consuming ``queue``; deliveries run in tasks this subscription tracks."""
        tag = await queue.consume(self._callback(queue.name), timeout=OP_TIMEOUT)
        self._consumers.append((queue, tag))

    def _callback(self, name: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await self._process(name, message)
            finally:
                self._tasks.discard(task)

        return on_message

    async def _process(self, queue: str, message: AbstractIncomingMessage) -> None:
        delivery = make_delivery(message.body, message.routing_key or "", queue, message.headers)
        qm = self._metrics
        qm.inflight.inc()
        try:
            outcome, reason = await run_handler(
                self._handler, delivery, self._settler.max_attempts
            )
            await self._settle(message, delivery, outcome, reason)
        finally:
            qm.inflight.dec()

    async def _settle(
        self, message: AbstractIncomingMessage, delivery: Delivery, outcome: Outcome, reason: str
    ) -> None:
        """Republish or dead-letter first (confirmed), only then ack the original."""
        try:
            if outcome is Outcome.RETRY:
                await self._settler.republish(delivery.queue, delivery)
            elif outcome is Outcome.DEAD:
                await self._settler.dead_letter(delivery, reason)
            await message.ack()
        except SETTLE_ERRORS as exc:
            # not acked: the broker keeps it and redelivers it (at least once, never lost)
            log.warning("bus_settle_failed", queue=delivery.queue, error=repr(exc))
            await _nack(message)
            return
        self._metrics.count(outcome.value)

    async def cancel(self) -> None:
        """Stop consuming, let in-flight deliveries finish (bounded), close the channel;
        whatever is still unacked goes back to its queue."""
        if self._cancelled:
            return
        self._cancelled = True
        try:
            for queue, tag in self._consumers:
                await _quietly(queue.cancel(tag, timeout=OP_TIMEOUT), "bus_cancel_failed")
            await self._drain()
            await _quietly(
                asyncio.wait_for(self._channel.close(), OP_TIMEOUT), "bus_channel_close_failed"
            )
        finally:
            self._settler.forget(self)

    async def _drain(self) -> None:
        others = self._tasks - {asyncio.current_task()}
        if not others:
            return
        _, pending = await asyncio.wait(others, timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _quietly(op: Awaitable[object], event: str) -> None:
    """Best effort for teardown steps whose failure the broker repairs (channel closes)."""
    try:
        await op
    except TEARDOWN_ERRORS as exc:
        log.info(event, error=repr(exc))


async def _nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except TEARDOWN_ERRORS as exc:  # channel gone: the broker requeues it anyway
        log.info("bus_nack_failed", error=repr(exc))

