"""Confirmed AMQP publishing that waits out broker outages, one at a time or windowed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustChannel

from bus.amqp_consumer import OP_TIMEOUT, TRANSIENT
from bus.errors import BusUnavailable, Undeliverable

log = structlog.get_logger(__name__)

#: publishes awaiting their confirm at once in publish_many
WINDOW = 1000
_MAX_BACKOFF = 1.0
#: a channel that died cancels its pending confirms: retried unless *we* are cancelled
_RETRY_ON: tuple[type[BaseException], ...] = (*TRANSIENT, asyncio.CancelledError)

Item = tuple[str, aio_pika.Message]


class Publisher:
    """Publishes on one confirm channel; ``publish`` returns whether the message was routed."""

    def __init__(
        self, channel: AbstractRobustChannel, events: AbstractExchange,
        commands: AbstractExchange, unavailable_after: float,
    ) -> None:
        self.channel = channel
        self.events = events
        self.commands = commands
        self.default: AbstractExchange = channel.default_exchange
        self.unavailable_after = unavailable_after

    async def publish(
        self, exchange: AbstractExchange, key: str, message: aio_pika.Message,
        *, mandatory: bool = False,
    ) -> bool:
        """One confirmed publish; False if mandatory and no queue took it. Waits through an
        outage (the robust connection reconnects) up to ``unavailable_after``."""
        deadline = asyncio.get_running_loop().time() + self.unavailable_after
        delay = 0.05
        while True:
            try:
                return await _once(exchange, key, message, mandatory)
            except aiormq.exceptions.DeliveryError as exc:
                raise Undeliverable(f"broker refused a message for {key!r}") from exc
            except _RETRY_ON as exc:
                _reraise_if_cancelled(exc)
                delay = await _backoff(deadline, delay, exc)

    async def publish_many(self, exchange: AbstractExchange, items: Sequence[Item]) -> None:
        """Publish in order with up to WINDOW confirms in flight; returns once all are
        confirmed. After a failure it waits for the connection and resends from the first
        unconfirmed message, so first copies stay in order (later ones may repeat)."""
        deadline = asyncio.get_running_loop().time() + self.unavailable_after
        delay = 0.05
        start = 0
        while start < len(items):
            failed_at, error = await _pipeline(exchange, items, start)
            if failed_at is None:
                return
            start = failed_at
            assert error is not None
            delay = await _backoff(deadline, delay, error)


async def _once(
    exchange: AbstractExchange, key: str, message: aio_pika.Message, mandatory: bool
) -> bool:
    async with asyncio.timeout(OP_TIMEOUT):
        result = await exchange.publish(message, key, mandatory=mandatory)
    return not isinstance(result, aiormq.abc.DeliveredMessage)


async def _pipeline(
    exchange: AbstractExchange, items: Sequence[Item], start: int
) -> tuple[int | None, BaseException | None]:
    """Publish items[start:] with a sliding window; the first index that failed, if any."""
    window = asyncio.Semaphore(WINDOW)
    failed: dict[int, BaseException] = {}
    refused: list[BaseException] = []

    async def one(index: int, key: str, message: aio_pika.Message) -> None:
        try:
            await _once(exchange, key, message, False)
        except aiormq.exceptions.DeliveryError as exc:
            refused.append(exc)
        except _RETRY_ON as exc:
            _reraise_if_cancelled(exc)
            failed[index] = exc
        finally:
            window.release()

    async with asyncio.TaskGroup() as group:
        for index in range(start, len(items)):
            await window.acquire()
            if failed or refused:
                window.release()
                break
            key, message = items[index]
            group.create_task(one(index, key, message))
    if refused:
        raise Undeliverable("broker refused a published event") from refused[0]
    if failed:
        first = min(failed)
        return first, failed[first]
    return None, None


async def _backoff(deadline: float, delay: float, error: BaseException) -> float:
    """Sleep before another try, or give up with BusUnavailable past the deadline."""
    now = asyncio.get_running_loop().time()
    if now >= deadline:
        raise BusUnavailable(f"broker unavailable: {error!r}") from error
    log.warning("bus_publish_retry", error=repr(error), delay=delay)
    await asyncio.sleep(min(delay, deadline - now))
    return min(delay * 2, _MAX_BACKOFF)


def _reraise_if_cancelled(exc: BaseException) -> None:
    """aiormq cancels pending confirms when a channel dies; only *our* cancel propagates."""
    if not isinstance(exc, asyncio.CancelledError):
        return
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise exc
