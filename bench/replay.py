"""Replay 1,000,000 events through PostgresEventStore.read_all vs a raw asyncpg cursor scan.

Usage: .venv/bin/python bench/replay.py [--events 1000000] [--batch 5000] [--no-uvloop]

Loads the events with COPY into our events table with real positions ((xid << 20) +
ordinal, one transaction per 50,000-row chunk). Then, twice each, alternating:
  ceiling: one asyncpg server-side cursor (prefetch = batch) over the same columns in
           position order, msgspec-decoding each event's data into a Struct;
  ours:    store.read_all(after, limit=batch) until the end, decoding the same way.
Both fold the decoded events into a dict count. The best run of each is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
import msgspec
from common import Payload, fresh_database, loop_name, make_payload, result_line, run

from store.postgres import PostgresEventStore
from store.registry import EventTypes

TAG = "bench.instance_state"
DECODER = msgspec.json.Decoder(Payload)
COLUMNS = ["position", "stream", "version", "type", "data", "event_id", "occurred_at",
           "correlation_id", "causation_id", "project_id", "user_id"]
CHUNK = 50_000


async def load(dsn: str, total: int) -> float:
    """COPY ``total`` events (10 per stream) with real positions; returns events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    payloads = [make_payload(i) for i in range(64)]
    now = dt.datetime.now(dt.UTC)
    began = time.perf_counter()
    for start in range(0, total, CHUNK):
        async with conn.transaction():
            base = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")) << 20
            records = []
            for i in range(start, min(start + CHUNK, total)):
                if i % 10 == 0:
                    stream = f"bench:{uuid.uuid4()}"
                records.append((base + i - start, stream, i % 10 + 1, TAG, payloads[i % 64],
                                uuid.uuid4(), now, None, None, None, None))
            await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
    rate = total / (time.perf_counter() - began)
    await conn.execute("VACUUM ANALYZE events")
    await conn.close()
    return rate


async def ceiling(dsn: str, batch: int) -> tuple[float, Counter[str]]:
    """Raw server-side cursor scan in position order + decode + fold; events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    folded: Counter[str] = Counter()
    began = time.perf_counter()
    async with conn.transaction():
        cursor = conn.cursor(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY position",
                             prefetch=batch)
        async for row in cursor:
            folded[DECODER.decode(row[4]).host] += 1
    rate = sum(folded.values()) / (time.perf_counter() - began)
    await conn.close()
    return rate, folded


async def ours(store: PostgresEventStore, batch: int) -> tuple[float, Counter[str]]:
    """store.read_all in batches + decode + fold; events/s."""
    folded: Counter[str] = Counter()
    after = 0
    began = time.perf_counter()
    while events := await store.read_all(after, limit=batch):
        for event in events:
            folded[DECODER.decode(event.data).host] += 1
        after = events[-1].position
    rate = sum(folded.values()) / (time.perf_counter() - began)
    return rate, folded


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    print(f"loop={loop_name()} events={a.events} batch={a.batch}")
    async with fresh_database("replay") as dsn:
        store = await PostgresEventStore.connect(dsn, EventTypes([Payload]), settle_timeout=0)
        try:
            print(f"load     COPY with real positions          {await load(dsn, a.events):9.0f}"
                  " events/s")
            best: dict[str, float] = {"ceiling": 0.0, "ours": 0.0}
            reference: Any = None
            for _ in range(2):
                for name in ("ceiling", "ours"):
                    rate, folded = (await ceiling(dsn, a.batch) if name == "ceiling"
                                    else await ours(store, a.batch))
                    assert sum(folded.values()) == a.events, (name, sum(folded.values()))
                    assert reference is None or folded == reference, name
                    reference = folded
                    best[name] = max(best[name], rate)
                    print(f"{name:8s} {'cursor scan' if name == 'ceiling' else 'read_all':33s} "
                          f"{rate:9.0f} events/s")
        finally:
            await store.close()
    print(result_line({"ours_eps": best["ours"]}, best["ceiling"],
                      best["ours"] / best["ceiling"]))


if __name__ == "__main__":
    run(main())
