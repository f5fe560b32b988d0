"""Bus throughput: events through AmqpBus end to end, beside plain aio-pika doing the same.

Both sides, in the same run and process: a durable topic exchange, a durable queue bound
with ``counter.#``, persistent ~300-byte messages, publisher confirms with 1000 in flight,
a consumer on a second connection with prefetch 1000, manual ack, decode of every body.
The figure is messages per second from the first publish to the last ack. Rounds
alternate (plain, ours, plain, ours, ...); the best of each side is reported.

Usage: .venv/bin/python bench/bus.py [--n 20000] [--rounds 3] [--url amqp://...] [--no-uvloop]
Last line: ``result amqpbus_eps=<ours> ceiling=<plain> ratio=<ours/plain>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import msgspec

# this file is itself named "bus": put the repository root first so `import bus` is the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import AmqpBus, Names
from bus.protocol import Delivery
from schemas import ENCODER, EVENT_DECODER, EventEnvelope

WINDOW = 1000
PREFETCH = 1000


def make_events(n: int) -> list[EventEnvelope]:
    data = msgspec.json.encode({"text": "x" * 40, "tags": {"az": "nova"}})
    now = dt.datetime.now(dt.UTC)
    return [
        EventEnvelope(
            event_id=uuid.uuid4(), stream=f"counter:{i % 100}", version=i // 100 + 1,
            position=i + 1, type="counter.noted", data=msgspec.Raw(data), occurred_at=now,
        )
        for i in range(n)
    ]


class Done:
    """Counts acks and fires when ``target`` is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.event = asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.event.set()


async def plain_round(url: str, prefix: str, bodies: list[bytes]) -> float:
    """The ceiling: plain aio-pika, the same topology and guarantees."""
    exchange_name, queue_name = f"{prefix}.plain.ex", f"{prefix}.plain.q"
    pub_conn, sub_conn = await aio_pika.connect(url), await aio_pika.connect(url)
    try:
        pub = await pub_conn.channel(publisher_confirms=True)
        exchange = await pub.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                              durable=True)
        sub = await sub_conn.channel()
        await sub.set_qos(prefetch_count=PREFETCH)
        queue = await sub.declare_queue(queue_name, durable=True)
        await queue.bind(exchange_name, "counter.#")
        done = Done(len(bodies))

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            EVENT_DECODER.decode(message.body)
            await message.ack()
            done.one()

        tag = await queue.consume(on_message)
        start = time.perf_counter()
        for i in range(0, len(bodies), WINDOW):
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json"), "counter.noted")
                for body in bodies[i:i + WINDOW]
            ))
        await asyncio.wait_for(done.event.wait(), 120)
        elapsed = time.perf_counter() - start
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await pub.exchange_delete(exchange_name)
        return len(bodies) / elapsed
    finally:
        await pub_conn.close()
        await sub_conn.close()


async def bus_round(url: str, prefix: str, events: list[EventEnvelope]) -> float:
    """Ours: one AmqpBus publishes with publish_events, another subscribes."""
    names = Names(prefix=prefix)
    publisher = await AmqpBus.connect(url, names)
    consumer = await AmqpBus.connect(url, names)
    done = Done(len(events))

    async def handle(delivery: Delivery) -> None:
        EVENT_DECODER.decode(delivery.body)
        done.one()

    try:
        await consumer.subscribe_events("bench", ["counter.#"], handle, prefetch=PREFETCH)
        start = time.perf_counter()
        await publisher.publish_events(events)
        await asyncio.wait_for(done.event.wait(), 120)
        return len(events) / (time.perf_counter() - start)
    finally:
        await consumer.close()
        await publisher.close()
        await _delete(url, names)


async def _delete(url: str, names: Names) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        await channel.queue_delete(names.event_queue("bench"))
        await channel.queue_delete(names.dead_letter_queue)
        await channel.exchange_delete(names.events_exchange)
        await channel.exchange_delete(names.commands_exchange)


async def main(args: argparse.Namespace) -> None:
    events = make_events(args.n)
    bodies = [ENCODER.encode(e) for e in events]
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    print(f"n={args.n} body={len(bodies[0])}B window={WINDOW} prefetch={PREFETCH} "
          f"uvloop={not args.no_uvloop} aio-pika={aio_pika.__version__}")
    plain: list[float] = []
    ours: list[float] = []
    for r in range(args.rounds):
        cpu = time.process_time()
        plain.append(await plain_round(args.url, f"{prefix}r{r}", bodies))
        cpu_plain = (time.process_time() - cpu) / args.n * 1e6
        cpu = time.process_time()
        ours.append(await bus_round(args.url, f"{prefix}r{r}", events))
        cpu_ours = (time.process_time() - cpu) / args.n * 1e6
        print(f"round {r + 1}: plain aio-pika {plain[-1]:6.0f} msg/s ({cpu_plain:3.0f} us cpu/msg)"
              f"   AmqpBus {ours[-1]:6.0f} msg/s ({cpu_ours:3.0f} us cpu/msg)")
    best, ceiling = max(ours), max(plain)
    print(f"result amqpbus_eps={best:.0f} ceiling={ceiling:.0f} ratio={best / ceiling:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get(
        "ORRERY_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-uvloop", action="store_true")
    parsed = parser.parse_args()
    if not parsed.no_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(parsed))
