"""Actor round trip on real PostgreSQL + RabbitMQ: command -> event -> relay -> reacting
actor -> event, observed on the exchange; against a raw chain of the same hops.

Usage: .venv/bin/python bench/roundtrip.py [--n 1000] [--conc 32] [--no-uvloop]

Ours: ActorClient.cast(Increment(forward_to=B)) to actor A; A's event is committed,
relayed, routed to B's shard, B appends its reaction, the relay publishes it, and an
observer queue receives it. The clock stops when the observer sees B's event.
Ceiling (same run, same services): plain aio-pika + asyncpg doing the same hops with no
Orrery code: publish command -> consumer inserts the event row and publishes it ->
consumer inserts the reaction row and publishes it -> observer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg

# the repository first: bench/bus.py would otherwise shadow the bus package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from common import fresh_database, percentile, result_line, run

from actors.client import ActorClient
from actors.runtime import ActorRuntime
from bus.amqp import AmqpBus
from bus.protocol import Delivery
from bus.routing import Names
from orrery.wiring import event_types
from schemas import EVENT_DECODER
from store.postgres import PostgresEventStore
from store.relay import Relay
from tests.support.counter import COUNTER, Increment

AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pct(values: list[float], p: float) -> float:
    """Percentile ``p`` (0-1) in milliseconds."""
    return percentile(values, p * 100) * 1000


async def drive(n: int, conc: int, start_one) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Run ``n`` round trips, ``conc`` at a time; returns (rate, latencies)."""
    lat: list[float] = []
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await start_one(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0), lat


async def phases(n: int, conc: int, start_one) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Warm up, then ``n // 4`` round trips one at a time and ``n`` with ``conc`` in flight."""
    await drive(50, 8, lambda i: start_one(i, "w"))
    rate1, lat1 = await drive(n // 4, 1, lambda i: start_one(i, "s"))
    rate, lat = await drive(n, conc, lambda i: start_one(i, "c"))
    return {"seq_rate": rate1, "p50": pct(lat1, 0.5), "p99": pct(lat1, 0.99),
            "rate": rate, "conc_p50": pct(lat, 0.5), "conc_p99": pct(lat, 0.99)}


async def ours(n: int, conc: int) -> dict[str, float]:
    async with fresh_database("rt") as dsn:
        return await _ours(dsn, n, conc)


async def _ours(dsn: str, n: int, conc: int) -> dict[str, float]:
    names = Names(prefix=f"bench{uuid.uuid4().hex[:6]}", shards=8)
    store = await PostgresEventStore.connect(dsn, event_types([COUNTER]))
    bus = await AmqpBus.connect(AMQP, names)
    waiting: dict[str, asyncio.Future[None]] = {}

    async def observe(d: Delivery) -> None:
        ev = EVENT_DECODER.decode(d.body)
        if ev.stream.startswith("counter:dst-"):
            fut = waiting.pop(ev.stream.removeprefix("counter:dst-"), None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    await bus.subscribe_events("observer", ["counter.incremented"], observe, prefetch=1000)
    runtime = ActorRuntime(store, bus, [COUNTER])
    await runtime.start()
    relay = asyncio.create_task(Relay(store, bus).run())
    client = ActorClient(bus)
    loop = asyncio.get_running_loop()

    async def start_one(i: int, tag: str) -> None:
        key = f"{tag}{i}"
        fut = waiting[key] = loop.create_future()
        await client.cast("counter", f"src-{key}", Increment(amount=1, forward_to=f"dst-{key}"))
        await asyncio.wait_for(fut, 30)

    try:
        figures = await phases(n, conc, start_one)
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await runtime.shutdown()
        await bus.close()
        await store.close()
    return figures


async def raw(n: int, conc: int) -> dict[str, float]:
    """The same hops with plain libraries: no store protocol, actors, relay or routing."""
    async with fresh_database("rtraw") as dsn:
        return await _raw(dsn, n, conc)


async def _raw(dsn: str, n: int, conc: int) -> dict[str, float]:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    await pool.execute("CREATE TABLE ev (id bigserial primary key, stream text, data bytea)")
    conn = await aio_pika.connect(AMQP)
    ch = await conn.channel(publisher_confirms=True)
    await ch.set_qos(prefetch_count=1000)
    ex = await ch.declare_exchange(f"rawrt{uuid.uuid4().hex[:6]}", aio_pika.ExchangeType.TOPIC,
                                   auto_delete=True)
    queues = {}
    for name in ("cmd", "react", "observe"):
        q = await ch.declare_queue(f"{ex.name}.{name}", auto_delete=True)
        await q.bind(ex, routing_key={"cmd": "cmd.*", "react": "ev.src", "observe": "ev.dst"}[name])
        queues[name] = q
    waiting: dict[str, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()

    def persistent(body: bytes) -> aio_pika.Message:
        return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def on_cmd(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        await pool.execute("INSERT INTO ev (stream, data) VALUES ($1, $2)", "src", m.body)
        await ex.publish(persistent(m.body), routing_key="ev.src")
        await m.ack()

    async def on_react(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        await pool.execute("INSERT INTO ev (stream, data) VALUES ($1, $2)", "dst", m.body)
        await ex.publish(persistent(m.body), routing_key="ev.dst")
        await m.ack()

    async def on_observe(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        fut = waiting.pop(m.body.decode(), None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        await m.ack()

    await queues["cmd"].consume(on_cmd)
    await queues["react"].consume(on_react)
    await queues["observe"].consume(on_observe)

    async def start_one(i: int, tag: str) -> None:
        key = f"{tag}{i}"
        fut = waiting[key] = loop.create_future()
        await ex.publish(persistent(key.encode()), routing_key="cmd.x")
        await asyncio.wait_for(fut, 30)

    try:
        figures = await phases(n, conc, start_one)
    finally:
        await conn.close()
        await pool.close()
    return figures


async def main(a: argparse.Namespace) -> None:
    import logging

    logging.disable(logging.WARNING)
    r = await raw(a.n, a.conc)
    o = await ours(a.n, a.conc)
    for label, f in (("raw chain", r), ("orrery", o)):
        print(f"{label:10s} sequential {f['seq_rate']:7.0f}/s p50 {f['p50']:6.2f} ms "
              f"p99 {f['p99']:6.2f} ms | {a.conc} concurrent {f['rate']:7.0f}/s "
              f"p50 {f['conc_p50']:6.2f} ms p99 {f['conc_p99']:6.2f} ms")
    figures = {"roundtrips_per_s": o["rate"], "p50_ms": o["p50"], "p99_ms": o["p99"],
               "conc_p99_ms": o["conc_p99"]}
    print(result_line(figures, r["rate"], o["rate"] / r["rate"]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--no-uvloop", action="store_true")
    run(main(ap.parse_args()))
