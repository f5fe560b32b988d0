"""Schema migrations on PostgreSQL: applied once, re-runs are no-ops, concurrent starts are safe."""

from __future__ import annotations

import asyncio

import asyncpg

from store.migrations import applied, available, migrate
from store.postgres import PostgresEventStore
from store.protocol import NO_STREAM
from store.registry import EventTypes
from tests.support.events import Incremented, new_event


async def test_every_migration_applies_once_and_is_recorded(pg_dsn: str) -> None:
    """A fresh database gets every shipped migration, each recorded in schema_migrations."""
    shipped = [m.version for m in available()]
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert shipped and shipped == sorted(set(shipped))
        assert await migrate(conn) == shipped
        assert await applied(conn) == shipped
        tables = {r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"events", "streams", "reactions", "snapshots", "projection_checkpoints",
                "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_running_migrations_again_applies_nothing_and_keeps_data(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """A second run (and a second connect) is a no-op: no version re-applied, events kept."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        await store.append("counter:a", [new_event(Incremented(amount=1))], NO_STREAM)
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        stamps = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
        assert await migrate(conn) == []
        assert await conn.fetch("SELECT version, applied_at FROM schema_migrations") == stamps
    finally:
        await conn.close()
    again = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        assert await again.stream_version("counter:a") == 1
    finally:
        await again.close()


async def test_concurrent_connects_both_succeed_and_apply_each_migration_once(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """Several processes starting at once all connect; the advisory lock lets one migrate."""
    stores = await asyncio.gather(
        *(PostgresEventStore.connect(pg_dsn, event_types, writers=1) for _ in range(4))
    )
    try:
        results = await asyncio.gather(*(
            s.append(f"counter:{i}", [new_event(Incremented(amount=i))], NO_STREAM)
            for i, s in enumerate(stores)
        ))
        assert [r.version for r in results] == [1, 1, 1, 1]
    finally:
        for s in stores:
            await s.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert sorted(versions) == [m.version for m in available()]
    finally:
        await conn.close()
