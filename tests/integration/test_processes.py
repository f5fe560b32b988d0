"""Real processes on real PostgreSQL and RabbitMQ: killed workers and relays lose nothing."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import ActorClient
from bus.amqp import AmqpBus
from bus.protocol import Delivery
from bus.routing import Names
from schemas import EVENT_DECODER, stream_name
from store.postgres import PostgresEventStore
from store.registry import EventTypes
from tests.support.backends import eventually
from tests.support.counter import COUNTER, Increment, StartTimer
from tests.support.events import Noted, new_event
from tests.support.procs import Procs, orrery_processes


@pytest.fixture
async def env(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, event_types: EventTypes, tmp_path: Path
) -> AsyncIterator[tuple[Procs, Any, AmqpBus]]:
    names = amqp_cleanup
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    bus = await AmqpBus.connect(amqp_url, names)
    with orrery_processes(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=names.prefix,
                          shards=names.shards, log_dir=tmp_path) as procs:
        try:
            yield procs, store, bus
        except BaseException:
            print(procs.logs())
            raise
        finally:
            await bus.close()
            await store.close()


async def test_two_workers_one_killed_keep_every_stream_contiguous_and_exact(
    env: tuple[Procs, Any, AmqpBus],
) -> None:
    """Two worker processes share the shards; one is SIGKILLed mid-run and restarted.
    Every stream's versions stay contiguous and each command takes effect exactly once."""
    procs, store, bus = env
    first = procs.start("worker")
    procs.start("worker")
    client = ActorClient(bus, timeout=30)
    assert (await client.call("counter", "warmup", Increment(amount=1))).ok
    actors = [f"a{i}" for i in range(12)]
    sent: dict[str, list[str]] = {a: [] for a in actors}
    rng = random.Random(7)
    for i in range(600):
        actor = rng.choice(actors)
        sent[actor].append(await client.cast("counter", actor, Increment(amount=1)))
        if i == 200:
            procs.kill(first)
        if i == 400:
            procs.start("worker")

    async def all_done() -> bool:
        versions = [await store.stream_version(stream_name("counter", a)) for a in actors]
        return sum(versions) >= 600

    await eventually(all_done, timeout=60, what="every command applied")
    await asyncio.sleep(1.0)  # let any duplicate that would double an effect show up
    for actor in actors:
        events = await store.read_stream(stream_name("counter", actor))
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        applied = [msgspec.json.decode(e.data)["command_id"] for e in events]
        assert sorted(applied) == sorted(sent[actor]), f"{actor}: lost or doubled commands"


async def test_workers_share_the_shards_and_take_over_a_dead_ones(
    env: tuple[Procs, Any, AmqpBus],
) -> None:
    """Two workers each consume about half of a kind's shards, never the same one; when one
    dies, the other takes its shards over."""
    procs, _store, _bus = env
    first, second = procs.start("worker"), procs.start("worker")

    def owned(proc: Any) -> set[int]:
        """The counter kind's shards the worker owns now (every kind logs its own)."""
        lines = [x for x in procs.log_lines(proc)
                 if x.get("event") == "shards_owned" and x.get("kind") == COUNTER.name]
        return set(lines[-1]["shards"]) if lines else set()  # type: ignore[arg-type]

    async def split() -> bool:
        a, b = owned(first), owned(second)
        return len(a) == len(b) == 2 and not a & b

    await eventually(split, timeout=30, what="the four shards split two and two")
    procs.kill(first)

    async def taken_over() -> bool:
        return owned(second) == {0, 1, 2, 3}

    await eventually(taken_over, timeout=30, what="the survivor owning every shard")


async def test_relay_killed_mid_stream_publishes_every_event_after_restart(
    env: tuple[Procs, Any, AmqpBus],
) -> None:
    """SIGKILL the relay while it publishes; after a restart every committed event has
    reached the exchange (at least once), each stream's events in version order."""
    procs, store, bus = env
    seen: list[tuple[str, int, str]] = []

    async def collect(delivery: Delivery) -> None:
        ev = EVENT_DECODER.decode(delivery.body)
        seen.append((ev.stream, ev.version, str(ev.event_id)))

    await bus.subscribe_events("relay-test", ["counter.#"], collect, prefetch=500)
    relay = procs.start("relay")
    ids: set[str] = set()

    async def writer(w: int) -> None:
        for v in range(1, 151):
            ev = new_event(Noted(text=f"w{w} v{v}"))
            ids.add(str(ev.event_id))
            await store.append(stream_name("counter", f"r{w}"), [ev], v - 1)

    writers = [asyncio.create_task(writer(w)) for w in range(20)]
    await eventually(lambda: _at_least(seen, 300), timeout=30, what="relay publishing")
    procs.kill(relay)
    await asyncio.gather(*writers)
    procs.start("relay")
    await eventually(lambda: _covers(seen, ids), timeout=60, what="every event published")
    per_stream: dict[str, list[int]] = collections.defaultdict(list)
    for stream, version, _ in seen:
        if version not in per_stream[stream]:
            per_stream[stream].append(version)
    for stream, versions in per_stream.items():
        assert versions == sorted(versions), f"{stream} published out of order"


async def test_durable_timer_fires_once_after_the_worker_is_killed(
    env: tuple[Procs, Any, AmqpBus],
) -> None:
    """An actor sets a deadline, its worker is SIGKILLed, a new worker starts: the
    deadline fires exactly once."""
    procs, store, bus = env
    worker = procs.start("worker")
    client = ActorClient(bus, timeout=30)
    reply = await client.call("counter", "sleeper", StartTimer(name="wake", delay=3.0))
    assert reply.ok
    procs.kill(worker)
    procs.start("worker")
    stream = stream_name("counter", "sleeper")

    async def fired() -> bool:
        return any(e.type == "timer.fired" for e in await store.read_stream(stream))

    await eventually(fired, timeout=40, what="the timer to fire")
    await asyncio.sleep(2.0)
    types = [e.type for e in await store.read_stream(stream)]
    assert types.count("timer.fired") == 1
    assert types.count("counter.noted") == 1


async def _at_least(seen: list[Any], n: int) -> bool:
    return len(seen) >= n


async def _covers(seen: list[tuple[str, int, str]], ids: set[str]) -> bool:
    return ids <= {s[2] for s in seen}
