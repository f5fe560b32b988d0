"""Helpers of the Bus contract suite: a kit per implementation, inboxes, envelopes."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import msgspec

from bus import AmqpBus, Bus, MemoryBroker, MemoryBus, Names
from bus.protocol import DeadLetter, Delivery
from schemas import CommandEnvelope, EventEnvelope


@dataclass
class BusKit:
    """What a contract test needs: buses on one broker ("processes") and raw access."""

    backend: str
    names: Names
    make: Callable[[], Awaitable[Bus]]
    inject: Callable[[str, bytes], Awaitable[None]]
    buses: list[Bus] = field(default_factory=list)


def memory_kit(names: Names) -> BusKit:
    broker = MemoryBroker()

    async def make() -> Bus:
        made = MemoryBus(names, max_attempts=5, broker=broker)
        kit.buses.append(made)
        return made

    async def inject(queue: str, body: bytes) -> None:
        broker.put_raw(queue, body)

    kit = BusKit("memory", names, make, inject)
    return kit


def amqp_kit(url: str, names: Names) -> BusKit:
    async def make() -> Bus:
        made = await AmqpBus.connect(url, names, max_attempts=5)
        kit.buses.append(made)
        return made

    async def inject(queue: str, body: bytes) -> None:
        """A plain aio-pika client puts raw bytes on an existing queue (confirmed)."""
        conn = await aio_pika.connect(url)
        async with conn:
            channel = await conn.channel(publisher_confirms=True)
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)

    kit = BusKit("amqp", names, make, inject)
    return kit


class Inbox:
    """A handler that records deliveries in the order they start, and waits for them.
    Inboxes given one ``changed`` event can be waited on together (wait_total)."""

    def __init__(self, changed: asyncio.Event | None = None) -> None:
        self.items: list[Delivery] = []
        self._changed = changed if changed is not None else asyncio.Event()

    async def handler(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items

    def bodies(self) -> list[bytes]:
        return [d.body for d in self.items]


async def wait_total(inboxes: list[Inbox], count: int, timeout: float = 10.0) -> None:
    """Wait until inboxes sharing one ``changed`` event hold ``count`` deliveries together."""
    changed = inboxes[0]._changed
    async with asyncio.timeout(timeout):
        while sum(len(i.items) for i in inboxes) < count:
            changed.clear()
            await changed.wait()


async def dead_letters_eventually(bus: Bus, count: int, timeout: float = 10.0) -> list[DeadLetter]:
    """Poll the dead-letter queue until ``count`` letters were read."""
    got: list[DeadLetter] = []
    async with asyncio.timeout(timeout):
        while True:
            got += await bus.dead_letters()
            if len(got) >= count:
                return got
            await asyncio.sleep(0.02)


def event(stream: str = "counter:a", event_type: str = "counter.incremented",
          version: int = 1, data: bytes = b'{"amount":1}') -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid.uuid4(), stream=stream, version=version, position=version,
        type=event_type, data=msgspec.Raw(data), occurred_at=dt.datetime.now(dt.UTC),
    )


def command(actor_id: str, kind: str = "counter", command_type: str = "counter.increment",
            command_id: str | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=command_id or uuid.uuid4().hex, kind=kind, actor_id=actor_id,
        type=command_type, body=msgspec.Raw(b'{"amount":1}'),
        correlation_id=uuid.uuid4().hex,
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
    )
