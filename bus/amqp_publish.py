"""Confirmed AMQP publishing that waits out broker outages, one at a time or windowed.

It publishes on the aiormq channel under the robust aio-pika channel (re-fetched after
every reconnect) with ``wait=False``: a publish queues its frames and waits only for its
confirm, not for its own socket write under the channel lock. That, prebuilt properties
instead of ``aio_pika.Message`` objects, and two overlapping half-windows are where
publish_events gets its speed; the guarantees are the same (every message confirmed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import NamedTuple, cast

import aiormq
import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import ConfirmationFrameType
from pamqp.commands import Basic
from pamqp.common import FieldTable

from bus.amqp_consumer import OP_TIMEOUT, TRANSIENT
from bus.errors import BusUnavailable, Undeliverable
from schemas.envelope import new_uuid

log = structlog.get_logger(__name__)

#: confirms in flight in publish_many: two halves, the next sent while one is confirmed
WINDOW = 1000
_MAX_BACKOFF = 1.0
#: a channel that died cancels its pending confirms: retried unless *we* are cancelled
_RETRY_ON: tuple[type[BaseException], ...] = (*TRANSIENT, asyncio.CancelledError)
JSON = "application/json"
PERSISTENT = 2


class Outgoing(NamedTuple):
    """One message to publish: where to, and what."""

    exchange: str
    key: str
    body: bytes
    properties: Basic.Properties


def properties(
    *, persistent: bool = True, message_id: str | None = None, headers: FieldTable | None = None,
    correlation_id: str | None = None, reply_to: str | None = None,
) -> Basic.Properties:
    """AMQP properties; the message id is set here so that aiormq never rewrites them."""
    return Basic.Properties(
        content_type=JSON, delivery_mode=PERSISTENT if persistent else 1,
        message_id=message_id or new_uuid().hex, headers=headers,
        correlation_id=correlation_id, reply_to=reply_to,
    )


class Publisher:
    """Publishes on one confirm channel; ``publish`` returns whether the message was routed."""

    def __init__(self, channel: AbstractRobustChannel, unavailable_after: float) -> None:
        self.channel = channel
        self.unavailable_after = unavailable_after

    async def _underlay(self) -> aiormq.Channel:
        """The aiormq channel of now (a new one after each reconnect)."""
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    async def publish(self, out: Outgoing, *, mandatory: bool = False) -> bool:
        """One confirmed publish; False if mandatory and no queue took it. Waits through an
        outage (the robust connection reconnects) up to ``unavailable_after``."""
        deadline = asyncio.get_running_loop().time() + self.unavailable_after
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    channel = await self._underlay()
                    result = await _send(channel, out, mandatory)
                return not isinstance(result, aiormq.abc.DeliveredMessage)
            except aiormq.exceptions.DeliveryError as exc:
                raise Undeliverable(f"broker refused a message for {out.key!r}") from exc
            except _RETRY_ON as exc:
                _reraise_if_cancelled(exc)
                delay = await _backoff(deadline, delay, exc)

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish in order with up to WINDOW confirms in flight; returns once all are
        confirmed. After a failure it waits for the connection and resends from the first
        unconfirmed message, so first copies stay in order (later ones may repeat)."""
        deadline = asyncio.get_running_loop().time() + self.unavailable_after
        delay = 0.05
        start = 0
        while start < len(items):
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    channel = await self._underlay()
                failed_at, error = await _pipeline(channel, items, start)
            except _RETRY_ON as exc:
                _reraise_if_cancelled(exc)
                failed_at, error = start, exc
            if failed_at is None:
                return
            start = failed_at
            assert error is not None
            delay = await _backoff(deadline, delay, error)


def _send(
    channel: aiormq.Channel, out: Outgoing, mandatory: bool
) -> Awaitable[ConfirmationFrameType | None]:
    return channel.basic_publish(
        out.body, exchange=out.exchange, routing_key=out.key, properties=out.properties,
        mandatory=mandatory, wait=False,
    )


Half = asyncio.Future[list[object]]


async def _pipeline(
    channel: aiormq.Channel, items: Sequence[Outgoing], start: int
) -> tuple[int | None, BaseException | None]:
    """Publish items[start:] in half-windows, the next one sent while the previous is being
    confirmed; the index of the first message that failed, if any."""
    half = max(1, WINDOW // 2)
    live: list[tuple[int, Half]] = []
    try:
        for first in range(start, len(items), half):
            live.append((first, _gather(channel, items[first:first + half])))
            if len(live) == 2:
                offset, done = live.pop(0)
                failed = _first_failure(offset, await _within(done))
                if failed[0] is not None:
                    await asyncio.gather(live[0][1], return_exceptions=True)
                    return failed
        if live:
            offset, done = live.pop(0)
            return _first_failure(offset, await _within(done))
        return None, None
    except BaseException:
        for _, pending in live:
            pending.cancel()
        raise


def _gather(channel: aiormq.Channel, chunk: Sequence[Outgoing]) -> Half:
    return asyncio.gather(*(_send(channel, out, False) for out in chunk), return_exceptions=True)


async def _within(half: Half) -> list[object]:
    """A half-window's outcomes; a stuck broker ends it as a timeout (then retried)."""
    try:
        async with asyncio.timeout(OP_TIMEOUT):
            return await asyncio.shield(half)
    except TimeoutError as exc:
        half.cancel()
        await asyncio.gather(half, return_exceptions=True)
        return [exc]


def _first_failure(
    offset: int, outcomes: list[object]
) -> tuple[int | None, BaseException | None]:
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, aiormq.exceptions.DeliveryError):
            raise Undeliverable("broker refused a published event") from outcome
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, _RETRY_ON):
                raise outcome
            return offset + i, outcome
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
