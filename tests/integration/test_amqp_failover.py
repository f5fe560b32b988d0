"""AmqpBus across a broker-side connection drop: reconnects, resumes, loses nothing confirmed.

The drop is ``rabbitmqctl close_connection`` on this test's own connections (found by
their ``orrery:<prefix>`` connection name) rather than ``close_all_connections``, so
tests of other packages running against the same broker are not disturbed.
"""

from __future__ import annotations

import asyncio

import pytest

from bus import AmqpBus, Names
from bus.protocol import Delivery
from schemas import COMMAND_DECODER, EVENT_DECODER
from tests.contract.bus_fixtures import command, event

pytestmark = pytest.mark.rabbitmq


async def _rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    return out.decode()


async def connection_pids(prefix: str) -> set[str]:
    """The broker-side ids of the connections named ``orrery:<prefix>``."""
    out = await _rabbitmqctl("list_connections", "pid", "client_properties")
    marker = f'"orrery:{prefix}"'
    return {line.split("\t", 1)[0] for line in out.splitlines() if marker in line}


async def drop_connections(prefix: str) -> set[str]:
    """Close this test's connections from the broker side, as a broker restart would."""
    pids = await connection_pids(prefix)
    assert pids, "no connection to drop"
    for pid in pids:
        await _rabbitmqctl("close_connection", pid, "test")
    return pids


async def wait_reconnected(prefix: str, old: set[str]) -> None:
    """Poll the broker until a new connection of ours shows up."""
    async with asyncio.timeout(30):
        while True:
            if (await connection_pids(prefix)) - old:
                return
            await asyncio.sleep(0.2)


class Seen:
    """Ids a handler has seen, and a way to wait until they cover a set."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._changed = asyncio.Event()

    def add(self, item: str) -> None:
        self.ids.add(item)
        self._changed.set()

    async def cover(self, wanted: set[str], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.ids.issuperset(wanted):
                self._changed.clear()
                await self._changed.wait()


async def test_subscriber_gets_every_confirmed_event_across_a_connection_drop(
    amqp_url: str, amqp_cleanup: Names
) -> None:
    """Publishing through the drop waits and resumes; every event publish_events confirmed
    reaches the subscriber (duplicates allowed, none lost)."""
    names = amqp_cleanup
    bus = await AmqpBus.connect(amqp_url, names, reconnect_interval=0.5)
    seen = Seen()
    confirmed: list[str] = []
    published = asyncio.Event()
    stop = asyncio.Event()

    async def record(delivery: Delivery) -> None:
        seen.add(str(EVENT_DECODER.decode(delivery.body).event_id))

    async def publish() -> None:
        """Confirmed batches, without pause, until told to stop."""
        version = 0
        while not stop.is_set():
            events = [event(version=version + i) for i in range(50)]
            version += 50
            await bus.publish_events(events)
            confirmed.extend(str(e.event_id) for e in events)
            published.set()

    async def batches_after_reconnect(count: int) -> None:
        for _ in range(count):
            published.clear()
            await published.wait()

    try:
        await bus.subscribe_events("failover", ["counter.#"], record, prefetch=200)
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            group.create_task(publish())
            await batches_after_reconnect(5)
            old = await drop_connections(names.prefix)
            await wait_reconnected(names.prefix, old)
            at_reconnect = len(confirmed)
            await batches_after_reconnect(5)
            stop.set()
        assert len(confirmed) > at_reconnect
        await seen.cover(set(confirmed))
    finally:
        await bus.close()


async def test_command_consumer_resumes_after_a_connection_drop(
    amqp_url: str, amqp_cleanup: Names
) -> None:
    """A worker's shard consumers come back after the drop and get commands sent after it,
    and commands confirmed before it are still delivered."""
    names = amqp_cleanup
    worker = await AmqpBus.connect(amqp_url, names, reconnect_interval=0.5)
    got = Seen()

    async def record(delivery: Delivery) -> None:
        got.add(COMMAND_DECODER.decode(delivery.body).command_id)

    try:
        await worker.consume_commands("counter", record)
        before = [command(f"a{i}") for i in range(20)]
        for cmd in before:
            await worker.send(cmd)
        old = await drop_connections(names.prefix)
        after = [command(f"a{i}") for i in range(20)]
        for cmd in after:
            await worker.send(cmd)  # waits for the reconnect instead of failing
        await wait_reconnected(names.prefix, old)
        wanted = {c.command_id for c in before + after}
        await got.cover(wanted)
    finally:
        await worker.close()
