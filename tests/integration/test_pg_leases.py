"""Leases on PostgreSQL: members are live sessions, a lease has one holder, and a dead
session's leases are free again."""

from __future__ import annotations

import asyncio

from store.postgres import PostgresEventStore
from store.registry import EventTypes


async def test_lease_has_one_holder_and_members_count_sessions(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """Two members of a group: one holds a lease, the other cannot take it until it is
    released; members() counts both, then one after a member leaves."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    a = await store.join_leases("p.counter")
    b = await store.join_leases("p.counter")
    other = await store.join_leases("p.other")
    try:
        assert await a.members() == 2 and await other.members() == 1
        assert await a.try_acquire("p.counter.shard.0")
        assert not await b.try_acquire("p.counter.shard.0")
        assert await b.try_acquire("p.counter.shard.1")
        await a.release("p.counter.shard.0")
        assert await b.try_acquire("p.counter.shard.0")
        await b.close()
        assert await a.members() == 1
    finally:
        await a.close()
        await other.close()
        await store.close()


async def test_a_lost_session_frees_its_leases_and_says_so(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """When the database ends a member's session (as when its process dies), every lease
    it held is free, and the member learns it through ``lost``."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    a = await store.join_leases("p.counter")
    b = await store.join_leases("p.counter")
    try:
        assert await a.try_acquire("p.counter.shard.3")
        await store.query(  # end the session that holds the lease, as a crash would
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND database = ("
            "  SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        async with asyncio.timeout(10):
            await a.lost.wait()
        assert await b.try_acquire("p.counter.shard.3")
    finally:
        await a.close()
        await b.close()
        await store.close()
