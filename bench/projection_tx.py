"""Projection commits of small batches on PostgreSQL, one after another, vs raw asyncpg.

Usage: .venv/bin/python bench/projection_tx.py [--batches 3000] [--rows 3] [--no-uvloop]

A live projection folds the log a few events at a time: each batch is a handful of rows
written to a couple of tables and the projection's checkpoint moved, in one commit that
does not wait for the disk. This times ``projections_tx`` doing exactly that (``--rows``
rows over two tables per batch) through PostgresEventStore, batch after batch, and
counts the CPU it costs PostgreSQL (the database's backends) and this process. Ceiling,
measured in the same run on the same server: plain asyncpg on one connection, one
autocommit statement per batch writing the same rows to the same tables (no checkpoint),
with ``synchronous_commit`` off. Ratio = ours / ceiling (commits/s).
"""

from __future__ import annotations

import argparse
import os
import time

import asyncpg
from common import CpuMeter, fresh_database, loop_name, result_line, run

from store.postgres import PostgresEventStore
from store.registry import EventTypes
from store.tables import Table

TABLES = (Table("bench_rows_a", (("k", "text"), ("v", "bigint"), ("note", "text"))),
          Table("bench_rows_b", (("k", "text"), ("v", "bigint"), ("note", "text"))))
DDL = [f"CREATE TABLE IF NOT EXISTS {t.name} (k TEXT PRIMARY KEY, v BIGINT NOT NULL,"
       " note TEXT NOT NULL)" for t in TABLES]
#: the keys cycle over this many rows per table, so most writes replace a row
KEYS = 500


def rows(batch: int, count: int, table: int) -> list[dict[str, object]]:
    """The ``table``'s rows of batch ``batch`` (count split over the two tables)."""
    share = count // 2 + (count % 2 if table == 0 else 0)
    return [{"k": f"k{(batch * count + i) % KEYS}", "v": batch, "note": f"batch {batch}"}
            for i in range(share)]


async def ours(dsn: str, batches: int, count: int, name: str) -> tuple[float, float, float]:
    """(commits/s, PostgreSQL CPU ms per commit, our CPU ms per commit), as projection
    ``name`` (a new one)."""
    store = await PostgresEventStore.connect(dsn, EventTypes())
    try:
        await store.run_ddl(DDL)
        async with store.projections_tx({name: 0}, 1):
            pass
        meter = CpuMeter({"postgres": [dsn.rsplit("/", 1)[1]], "us": [os.getpid()]})
        meter.start()
        began = time.perf_counter()
        for b in range(batches):
            async with store.projections_tx({name: b + 1}, b + 2) as tx:
                for i, table in enumerate(TABLES):
                    await tx.put_rows(table, rows(b, count, i))
        elapsed = time.perf_counter() - began
        cpu = meter.stop()
    finally:
        await store.close()
    return batches / elapsed, cpu["postgres"] * 1000 / batches, cpu["us"] * 1000 / batches


async def ceiling(dsn: str, batches: int, count: int) -> float:
    """Plain asyncpg: one autocommit statement per batch writing the same rows."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        for sql in DDL:
            await conn.execute(sql)
        for table in TABLES:
            await conn.execute(f"TRUNCATE {table.name}")
        a, b = (t.name for t in TABLES)
        upsert = (f"WITH a AS (INSERT INTO {a} SELECT * FROM unnest($1::text[], $2::bigint[],"
                  " $3::text[]) ON CONFLICT (k) DO UPDATE SET v = excluded.v, note ="
                  f" excluded.note) INSERT INTO {b} SELECT * FROM unnest($4::text[],"
                  " $5::bigint[], $6::text[]) ON CONFLICT (k) DO UPDATE SET v = excluded.v,"
                  " note = excluded.note")
        began = time.perf_counter()
        for n in range(batches):
            args: list[list[object]] = []
            for i in range(2):
                part = rows(n, count, i)
                args += [[r["k"] for r in part], [r["v"] for r in part],
                         [r["note"] for r in part]]
            await conn.execute(upsert, *args)
        return batches / (time.perf_counter() - began)
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    print(f"loop={loop_name()} batches={a.batches} rows={a.rows}")
    best = {"commits_per_s": 0.0, "pg_cpu_ms": float("inf"), "our_cpu_ms": float("inf")}
    raw = 0.0
    async with fresh_database("projtx") as dsn:
        for round_ in range(2):
            raw = max(raw, rate := await ceiling(dsn, a.batches, a.rows))
            print(f"ceiling  raw asyncpg, one statement a batch  {rate:8.0f} commits/s")
            rate, pg_ms, us_ms = await ours(dsn, a.batches, a.rows, f"bench{round_}")
            print(f"ours     projections_tx                      {rate:8.0f} commits/s;"
                  f" CPU per commit: PostgreSQL {pg_ms:.3f} ms, this process {us_ms:.3f} ms")
            best = {"commits_per_s": max(best["commits_per_s"], rate),
                    "pg_cpu_ms": min(best["pg_cpu_ms"], pg_ms),
                    "our_cpu_ms": min(best["our_cpu_ms"], us_ms)}
    print(result_line(best, raw, best["commits_per_s"] / raw))


if __name__ == "__main__":
    run(main())
