"""Append throughput and latency of PostgresEventStore at 1, 16 and 256 actors vs raw asyncpg.

Usage: .venv/bin/python bench/append.py [--seconds 6] [--writers 2] [--batch 500]
           [--levels 1,16,256] [--no-uvloop]

Each actor appends one ~300-byte event at a time to its own stream with its expected
version. Ceiling, measured in the same run on the same server: plain asyncpg executemany
of 100 rows per transaction (one connection) into a table with the same columns and
indexes as our events table. Ratio = ours at 256 actors / ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import asyncpg
from common import (
    Payload,
    fresh_database,
    loop_name,
    make_payload,
    percentile,
    result_line,
    run,
)

from schemas import NewEvent
from store.postgres import PostgresEventStore
from store.protocol import NO_STREAM
from store.registry import EventTypes

TAG = "bench.instance_state"
PLAIN_TABLE = """CREATE TABLE plain_events (
    position bigserial PRIMARY KEY, stream text NOT NULL, version int NOT NULL,
    type text NOT NULL, data json NOT NULL, event_id uuid NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL, correlation_id text, causation_id text,
    project_id text, user_id text, UNIQUE (stream, version))"""
PLAIN_INSERT = ("INSERT INTO plain_events (stream, version, type, data, event_id, occurred_at,"
                " correlation_id, causation_id, project_id, user_id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")


async def ceiling(dsn: str, payload: bytes, seconds: float, batch: int = 100) -> float:
    """Raw asyncpg: executemany ``batch`` rows per transaction, one connection; events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    await conn.execute(PLAIN_TABLE)
    done, stream, version = 0, "", 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        rows = []
        for _ in range(batch):
            if version % 10 == 0:
                stream, version = f"bench:{uuid.uuid4()}", 0
            version += 1
            rows.append((stream, version, TAG, payload, uuid.uuid4(), dt.datetime.now(dt.UTC),
                         None, None, None, None))
        async with conn.transaction():
            await conn.executemany(PLAIN_INSERT, rows)
        done += batch
    elapsed = time.perf_counter() - started
    await conn.close()
    return done / elapsed


async def checkpoint(dsn: str) -> None:
    """Start each measurement with no dirty pages to flush, as the raw ceiling script does,
    so that a checkpoint triggered by an earlier level does not land in this one."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def actor(store: PostgresEventStore, payload: bytes, until: float,
                latencies: list[float]) -> int:
    """Appends one event at a time to its own stream until ``until``; returns events written."""
    stream, version = f"bench:{uuid.uuid4()}", NO_STREAM
    while time.perf_counter() < until:
        event = NewEvent(type=TAG, data=payload)
        started = time.perf_counter()
        result = await store.append(stream, [event], version)
        latencies.append(time.perf_counter() - started)
        version = result.version
    return version


async def level(store: PostgresEventStore, actors: int, payload: bytes,
                seconds: float) -> tuple[float, float, float]:
    """events/s, p50 ms and p99 ms with ``actors`` concurrent actors (after a short warm-up)."""
    warm = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(actor(store, payload, warm, []) for _ in range(actors)))
    latencies: list[float] = []
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(actor(store, payload, started + seconds, latencies) for _ in range(actors)))
    elapsed = time.perf_counter() - started
    eps = sum(counts) / elapsed
    return eps, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--levels", default="1,16,256", help="actor counts; the ratio is for the last")
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    payload = make_payload(1)
    print(f"loop={loop_name()} payload={len(payload)}B seconds/level={a.seconds} "
          f"writers={a.writers} max_batch_events={a.batch} asyncpg={asyncpg.__version__}")
    figures: dict[str, Any] = {}
    async with fresh_database("append") as dsn:
        await checkpoint(dsn)
        ceil = await ceiling(dsn, payload, a.seconds)
        print(f"ceiling  executemany 100/txn, 1 conn      {ceil:9.0f} events/s")
        store = await PostgresEventStore.connect(dsn, EventTypes([Payload]), writers=a.writers,
                                                 max_batch_events=a.batch)
        try:
            for actors in (int(x) for x in a.levels.split(",")):
                await checkpoint(dsn)
                eps, p50, p99 = await level(store, actors, payload, a.seconds)
                figures[actors] = (eps, p99)
                print(f"ours     {actors:3d} actors, 1 event/append   {eps:9.0f} events/s  "
                      f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({eps / ceil:.2f} of ceiling)")
        finally:
            await store.close()
    top = max(figures)
    eps_top, p99_top = figures[top]
    print(result_line({f"append_{top}_eps": eps_top, f"p99_ms_{top}": p99_top,
                       **{f"eps_{n}": figures[n][0]
                          for n in sorted(figures, reverse=True) if n != top}},
                      ceil, eps_top / ceil))


if __name__ == "__main__":
    run(main())
