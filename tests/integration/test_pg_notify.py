"""Wake-ups on PostgreSQL are sent after the commit, not from inside it (store.pg_notify):
a NOTIFY in a writing transaction would hold the cluster's one notification lock through
that commit's WAL flush and queue every other notifying commit behind it. Listeners still
hear every append and every checkpoint move; one that misses a wake-up (its writer died
right after the commit) finds the events all the same, RECHECK_SECONDS later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import asyncpg

from schemas import EventEnvelope, NewEvent
from store.pg_common import EVENTS_CHANNEL, PROJECTIONS_CHANNEL, init_conn
from store.pg_notify import RECHECK_SECONDS
from store.pg_writer import GroupCommit, PendingAppend
from store.postgres import PostgresEventStore
from store.registry import EventTypes

ONE = b'{"amount": 1}'
#: ends a backend and waits (up to 5 s) until it is gone
TERMINATE = "SELECT pg_terminate_backend($1, 5000)"


def _event() -> NewEvent:
    return NewEvent(type="counter.incremented", data=ONE)


async def _append_unheard(dsn: str, stream: str) -> int:
    """An append by a writer that never notifies (as one that died after its commit)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init_conn)
    writer = GroupCommit(pool, 1, 100, 10.0)
    try:
        done = asyncio.get_running_loop().create_future()
        writer.submit(PendingAppend(stream, -1, None, [_event()], done))
        return int((await done).position)
    finally:
        await writer.close(drain_timeout=5.0)
        await pool.close()


async def _follower_at_head(
    store: PostgresEventStore,
) -> tuple[AsyncGenerator[list[EventEnvelope], None], asyncio.Future[list[EventEnvelope]]]:
    """A subscription that has read the log's one event, and its wait for the next batch
    (not come yet)."""
    first = await store.append("counter:a", [_event()], 0)
    batches = store.subscribe(0)
    assert [e.position for e in await anext(batches)] == [first.position]
    following = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.2)
    assert not following.done()
    return batches, following


async def test_appends_and_checkpoint_moves_are_heard_and_the_append_itself_is_silent(
    pg_dsn: str, event_types: EventTypes
) -> None:
    heard: list[tuple[str, str]] = []
    three = asyncio.Event()

    def hear(*args: object) -> None:
        heard.append((str(args[2]), str(args[3])))
        if len(heard) >= 3:
            three.set()

    listener = await asyncpg.connect(pg_dsn)
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        for channel in (EVENTS_CHANNEL, PROJECTIONS_CHANNEL):
            await listener.add_listener(channel, hear)
        result = await store.append("counter:a", [_event()], 0)
        async with store.projections_tx({"p1": 0, "p2": 0}, result.position):
            pass
        async with asyncio.timeout(5):
            await three.wait()
        events = [p for c, p in heard if c == EVENTS_CHANNEL]
        assert events and int(events[-1]) >= result.position
        assert sorted(p for c, p in heard if c == PROJECTIONS_CHANNEL) == [
            f"p1 {result.position}", f"p2 {result.position}"]

        # the log's own append function notifies no one: only the writer does, after
        heard.clear()
        await _append_unheard(pg_dsn, "counter:b")
        await asyncio.sleep(0.3)
        assert heard == []
    finally:
        await store.close()
        await listener.close()


async def test_a_missed_wake_up_delays_a_reader_by_the_recheck_only(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """A follower at the head and a waiter for a projection both get on without any
    notification: the follower sees the unheard append, the waiter the checkpoint moved
    by hand, within RECHECK_SECONDS (plus slack)."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        batches, following = await _follower_at_head(store)
        position = await _append_unheard(pg_dsn, "counter:b")
        async with asyncio.timeout(RECHECK_SECONDS + 3):
            assert [e.position for e in await following] == [position]
        await batches.aclose()

        async with store.projections_tx({"p1": 0}, 1):
            pass
        waiting = asyncio.ensure_future(store.wait_for_projection("p1", position, 30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("UPDATE projection_checkpoints SET position = $1"
                               " WHERE name = 'p1'", position)
        finally:
            await conn.close()
        async with asyncio.timeout(RECHECK_SECONDS + 3):
            assert await waiting
    finally:
        await store.close()


async def test_a_store_hears_its_own_wake_ups_without_the_trip(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """With the trip that sends its notifications broken, the store that committed still
    wakes its own follower and its own waiters at once; another store hears only at its
    re-check, which shows the notifications were really lost on the way."""
    mine = await PostgresEventStore.connect(pg_dsn, event_types)
    other = await PostgresEventStore.connect(pg_dsn, event_types)
    admin = await asyncpg.connect(pg_dsn)
    try:
        batches, following = await _follower_at_head(mine)
        sender = mine.notifier_pid
        assert sender is not None
        assert await admin.fetchval(TERMINATE, sender)

        second = await mine.append("counter:a", [_event()], 1)
        async with asyncio.timeout(RECHECK_SECONDS / 2):
            assert [e.position for e in await following] == [second.position]
        await batches.aclose()

        async with mine.projections_tx({"p0": 0}, 1):  # the trip connects again
            pass
        assert await other.wait_for_projection("p0", 1, 5.0)
        theirs = asyncio.ensure_future(other.wait_for_projection("p1", second.position, 30.0))
        await asyncio.sleep(0.2)  # other knows p1 stands at 0 and waits for a wake-up
        sender = mine.notifier_pid
        assert sender is not None and await admin.fetchval(TERMINATE, sender)
        async with mine.projections_tx({"p1": 0}, second.position):
            pass
        assert await mine.wait_for_projection("p1", second.position, RECHECK_SECONDS / 2)
        assert not theirs.done()
        async with asyncio.timeout(RECHECK_SECONDS + 3):
            assert await theirs
    finally:
        await admin.close()
        await mine.close()
        await other.close()
