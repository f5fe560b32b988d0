"""Planner statistics of projection tables (store.pg_statistics): on a server with
autovacuum off, a table that projection commits wrote enough rows of gets analysed by the
store, and the planner then takes the index that fits a query instead of guessing; on a
server with autovacuum on, the store leaves it to autovacuum."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from store.postgres import PostgresEventStore
from store.registry import EventTypes
from store.tables import Table

PROBE = Table("stats_probe", (("id", "text"), ("project_id", "text"), ("status", "text"),
                              ("created_at", "text")))
DDL = ("CREATE TABLE stats_probe (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,"
       " status TEXT NOT NULL, created_at TEXT NOT NULL)",
       "CREATE INDEX stats_probe_project ON stats_probe (project_id, created_at, id)",
       "CREATE INDEX stats_probe_status ON stats_probe (status, project_id, created_at, id)")
#: a project's few BUILD rows, newest first: the status index finds them at once, the
#: project's index only by walking every row of the project
LISTING = ("SELECT id FROM stats_probe WHERE project_id = 'p' AND status = 'BUILD'"
           " ORDER BY created_at DESC, id DESC LIMIT 1000")


async def _last_analyze(conn: asyncpg.Connection) -> object:
    return await conn.fetchval(
        "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'stats_probe'")


@pytest.fixture
async def probe(pg_dsn: str, event_types: EventTypes
                ) -> AsyncIterator[tuple[PostgresEventStore, asyncpg.Connection]]:
    """A store with the probe table made, and a connection of the test's own."""
    store = await PostgresEventStore.connect(pg_dsn, event_types)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await store.run_ddl(DDL)
        yield store, conn
    finally:
        await conn.close()
        await store.close()


async def _write(store: PostgresEventStore, commits: int, rows: int) -> None:
    """``commits`` projection commits of ``rows`` rows each, the first of each BUILD."""
    for n in range(commits):
        async with store.projections_tx({"probe": n}, n + 1) as tx:
            await tx.put_rows(PROBE, [{"id": f"s{n}-{i:03}", "project_id": "p",
                                       "status": "BUILD" if i == 0 else "ACTIVE",
                                       "created_at": f"{n}-{i:03}"} for i in range(rows)])


async def test_a_projection_table_written_enough_is_analysed_when_autovacuum_is_off(
    probe: tuple[PostgresEventStore, asyncpg.Connection],
) -> None:
    store, conn = probe
    ours = await conn.fetchval("SELECT current_setting('autovacuum') = 'off'")
    await _write(store, 8, 500)  # 4,000 rows, 8 of them BUILD, in commits of 500
    if not ours:  # autovacuum keeps the statistics, on its own schedule
        await asyncio.sleep(0.5)
        assert await _last_analyze(conn) is None
        return
    for _ in range(100):
        if await _last_analyze(conn) is not None:
            break
        await asyncio.sleep(0.05)
    assert await _last_analyze(conn) is not None, "never analysed"
    for _ in range(100):  # the last ANALYZE runs after the last commit
        tuples = await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE relname = 'stats_probe'")
        if tuples >= 2000:
            break
        await asyncio.sleep(0.05)
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + LISTING))
    assert "stats_probe_status" in plan, plan


async def test_a_few_rows_are_not_worth_an_analyse(
    probe: tuple[PostgresEventStore, asyncpg.Connection],
) -> None:
    """Under the threshold (500 rows), nothing is analysed."""
    store, conn = probe
    await _write(store, 4, 10)
    await asyncio.sleep(0.5)
    assert await _last_analyze(conn) is None
