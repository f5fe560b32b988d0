"""Gap-free global order on PostgreSQL: readers following positions never skip or repeat."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any

import asyncpg

from schemas import EventEnvelope, NewEvent
from store.pg_writer import APPEND_SQL
from store.postgres import PostgresEventStore
from store.registry import EventTypes
from tests.support.events import Incremented, new_event

STORES = 4
WRITERS_PER_STORE = 8
TOTAL_EVENTS = 20_000
ROGUE_ROUNDS = 12  # transactions per raw writer that roll back or commit late
WAIT = 20.0  # seconds readers get to catch up once the writers are done


def inc(amount: int) -> NewEvent:
    return new_event(Incremented(amount=amount))


def _args(stream: str, events: Sequence[NewEvent]) -> list[list[Any] | None]:
    """orrery_append's arrays for one ANY_VERSION append of ``events`` to ``stream``."""
    now = dt.datetime.now(dt.UTC)
    n = len(events)
    return [[stream], [-1], None, [n], [1] * n, [e.type for e in events],
            [e.data for e in events], [e.event_id for e in events], [now] * n,
            None, None, None, None, None, None, None]


async def _raw_conn(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    return conn


class Ledger:
    """What the writers did: event ids that committed and ids that rolled back."""

    def __init__(self) -> None:
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()


async def store_writer(store: PostgresEventStore, stream: str, count: int, ledger: Ledger) -> None:
    """Appends ``count`` events to its own stream, 1 to 4 per append, with expected versions."""
    version = 0
    while version < count:
        events = [inc(version + k) for k in range(min(random.randint(1, 4), count - version))]
        result = await store.append(stream, events, version)
        version = result.version
        ledger.committed.update(str(e.event_id) for e in events)


async def raw_writer(dsn: str, name: str, commit: bool, ledger: Ledger) -> None:
    """Opens transactions that call orrery_append, wait a while, then commit or roll back."""
    conn = await _raw_conn(dsn)
    try:
        for round_ in range(ROGUE_ROUNDS):
            events = [inc(-1) for _ in range(random.randint(1, 5))]
            tx = conn.transaction()
            await tx.start()
            await conn.fetch(APPEND_SQL, *_args(f"counter:{name}-{round_}", events))
            await asyncio.sleep(random.uniform(0.02, 0.15))
            ids = {str(e.event_id) for e in events}
            if commit:
                await tx.commit()
                ledger.committed.update(ids)
            else:
                await tx.rollback()
                ledger.rolled_back.update(ids)
    finally:
        await conn.close()


class Readers:
    """What each reader saw, and an event set whenever one of them saw more."""

    def __init__(self, *names: str) -> None:
        self.seen: dict[str, list[EventEnvelope]] = {n: [] for n in names}
        self.progress = asyncio.Event()

    def add(self, name: str, batch: list[EventEnvelope]) -> None:
        self.seen[name].extend(batch)
        self.progress.set()

    async def caught_up(self, ledger: Ledger) -> None:
        """Returns once every reader has at least as many events as were committed."""
        while any(len(seen) < len(ledger.committed) for seen in self.seen.values()):
            self.progress.clear()
            await self.progress.wait()


async def follow_read_all(store: PostgresEventStore, readers: Readers, name: str) -> None:
    """A reader polling read_all by position, forever."""
    after = 0
    while True:
        batch = await store.read_all(after, limit=700)
        if batch:
            readers.add(name, batch)
            after = batch[-1].position
        else:
            await asyncio.sleep(0.005)


async def follow_subscribe(store: PostgresEventStore, readers: Readers, name: str) -> None:
    """A live subscriber, forever."""
    async with aclosing(store.subscribe(0, batch=500)) as batches:
        async for batch in batches:
            readers.add(name, batch)


def check_reader(name: str, seen: list[EventEnvelope], ledger: Ledger) -> None:
    positions = [e.position for e in seen]
    ids = [str(e.event_id) for e in seen]
    assert all(a < b for a, b in itertools.pairwise(positions)), name
    assert len(ids) == len(set(ids)), f"{name} saw an event twice"
    assert not set(ids) & ledger.rolled_back, f"{name} saw a rolled-back event"
    missing = len(ledger.committed - set(ids))
    assert missing == 0, f"{name} missed {missing} committed events"
    assert len(ids) == len(ledger.committed), name


async def test_readers_see_every_committed_event_once_in_order_and_no_rolled_back_one(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """32 writers on 4 stores, late committers and rollbacks: every reader (read_all and two
    subscribers) sees each committed event exactly once, by strictly increasing position,
    and never an event whose transaction rolled back."""
    stores = [await PostgresEventStore.connect(pg_dsn, event_types) for _ in range(STORES)]
    ledger = Ledger()
    readers = Readers("read_all", "subscribe-1", "subscribe-2")
    writers = STORES * WRITERS_PER_STORE
    try:
        async with asyncio.TaskGroup() as tg:
            following = [
                tg.create_task(follow_read_all(stores[0], readers, "read_all")),
                tg.create_task(follow_subscribe(stores[1], readers, "subscribe-1")),
                tg.create_task(follow_subscribe(stores[3], readers, "subscribe-2")),
            ]
            async with asyncio.TaskGroup() as writing:
                for w in range(writers):
                    writing.create_task(store_writer(
                        stores[w % STORES], f"counter:w{w}", TOTAL_EVENTS // writers, ledger))
                for r in range(2):
                    writing.create_task(raw_writer(pg_dsn, f"late{r}", True, ledger))
                    writing.create_task(raw_writer(pg_dsn, f"rollback{r}", False, ledger))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    await readers.caught_up(ledger)
            for task in following:
                task.cancel()
        assert len(ledger.committed) >= TOTAL_EVENTS and ledger.rolled_back
        for name, seen in readers.seen.items():
            check_reader(name, seen, ledger)
    finally:
        for store in stores:
            await store.close()
