"""Leases on PostgreSQL: members are live processes, a lease has one holder, a dead
session's leases are free again, and one session per process carries every group."""

from __future__ import annotations

import asyncio

from store.postgres import PostgresEventStore
from store.registry import EventTypes


async def test_lease_has_one_holder_and_members_count_processes(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """Two processes in a group: one holds a lease, the other cannot take it until it is
    released; members() counts both, then one after a member leaves."""
    one = await PostgresEventStore.connect(pg_dsn, event_types)
    two = await PostgresEventStore.connect(pg_dsn, event_types)
    a = await one.join_leases("p.counter")
    b = await two.join_leases("p.counter")
    other = await one.join_leases("p.other")
    try:
        assert await a.members() == 2 and await other.members() == 1
        assert await a.try_acquire("p.counter.shard.0")
        assert not await b.try_acquire("p.counter.shard.0")
        assert await b.try_acquire("p.counter.shard.1")
        await a.release("p.counter.shard.0")
        assert await b.try_acquire("p.counter.shard.0")
        await b.close()
        await asyncio.sleep(0.6)  # past the member count's reuse
        assert await a.members() == 1
    finally:
        await a.close()
        await other.close()
        await two.close()
        await one.close()


async def test_two_members_in_one_process_are_kept_apart(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """Advisory locks are re-entrant per session, so the process's session must itself
    keep two of its groups' memberships and leases apart."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    a = await store.join_leases("p.counter")
    b = await store.join_leases("p.counter")
    try:
        assert await a.members() == 2
        assert await a.try_acquire("p.counter.shard.0")
        assert not await b.try_acquire("p.counter.shard.0")
        await a.close()
        assert await b.try_acquire("p.counter.shard.0")
    finally:
        await b.close()
        await store.close()


async def test_every_group_of_a_process_shares_one_session(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """A worker runs a balancer per actor kind: their groups cost one connection."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    groups = [await store.join_leases(f"p.kind{i}") for i in range(12)]
    try:
        rows = await store.query("SELECT count(*) FROM pg_stat_activity"
                                 " WHERE application_name = 'orrery-leases'"
                                 " AND datname = current_database()")
        assert rows[0][0] == 1
    finally:
        for group in groups:
            await group.close()
        await store.close()


async def test_a_lost_session_frees_its_leases_and_says_so(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """When the database ends a process's session (as when the process dies), every lease
    it held is free, and its groups learn it through ``lost``; the process joins again
    on a new session."""
    one = await PostgresEventStore.connect(pg_dsn, event_types)
    two = await PostgresEventStore.connect(pg_dsn, event_types)
    a = await one.join_leases("p.counter")
    b = await two.join_leases("p.counter")
    try:
        assert await a.try_acquire("p.counter.shard.3")
        await two.query("SELECT pg_terminate_backend($1)", a.session.pid)
        async with asyncio.timeout(10):
            await a.lost.wait()
        assert await b.try_acquire("p.counter.shard.3")
        await a.close()
        again = await one.join_leases("p.counter")
        assert not await again.try_acquire("p.counter.shard.3")
        await again.close()
    finally:
        await b.close()
        await two.close()
        await one.close()
