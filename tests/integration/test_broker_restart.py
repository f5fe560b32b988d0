"""A real RabbitMQ restart (stop_app / start_app) while the relay publishes: the relay
backs off, resumes from its checkpoint, and every committed event still arrives."""

from __future__ import annotations

import asyncio

from bus.amqp import AmqpBus
from bus.protocol import Delivery
from bus.routing import Names
from schemas import EVENT_DECODER, stream_name
from store.postgres import PostgresEventStore
from store.registry import EventTypes
from store.relay import Relay
from tests.support.backends import eventually
from tests.support.events import Noted, new_event


async def _rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(120):
        assert await proc.wait() == 0, f"rabbitmqctl {' '.join(args)} failed"


async def broker_running() -> bool:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmq-diagnostics", "-q", "check_running",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        return await proc.wait() == 0


async def test_relay_loses_nothing_across_a_broker_restart(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, event_types: EventTypes
) -> None:
    """Events committed before, during and after a broker restart all reach a durable
    subscriber queue (at least once); the relay and the consumer reconnect by themselves."""
    names = amqp_cleanup
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    relay_bus = await AmqpBus.connect(amqp_url, names)
    sub_bus = await AmqpBus.connect(amqp_url, names)
    seen: set[str] = set()

    async def collect(delivery: Delivery) -> None:
        seen.add(str(EVENT_DECODER.decode(delivery.body).event_id))

    await sub_bus.subscribe_events("restart", ["counter.#"], collect, prefetch=500)
    relay = asyncio.create_task(Relay(store, relay_bus, max_backoff=1.0).run())
    ids: set[str] = set()

    async def append(n: int, tag: str) -> None:
        for v in range(n):
            ev = new_event(Noted(text=f"{tag} {v}"))
            ids.add(str(ev.event_id))
            await store.append(stream_name("counter", tag), [ev], v)

    try:
        await append(200, "before")
        await eventually(lambda: _covers(seen, ids), timeout=30, what="events before")
        await _rabbitmqctl("stop_app")  # every connection drops; the broker is down
        assert not await broker_running()
        await append(200, "during")  # committed while nothing can be published
        await asyncio.sleep(1.0)  # the relay meets the outage and backs off
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")
        await append(200, "after")
        await eventually(lambda: _covers(seen, ids), timeout=90, what="every event after")
        assert len(ids) == 600
        assert await broker_running()
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await sub_bus.close()
        await relay_bus.close()
        await store.close()


async def _covers(seen: set[str], ids: set[str]) -> bool:
    return ids <= seen
