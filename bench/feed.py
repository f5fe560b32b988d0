"""Event feed reads: the whole log read through the feed's read path (filters in SQL,
documents encoded as the API sends them), as an admin (everything) and as a member (one
project of ten), in events per second.

Usage: .venv/bin/python bench/feed.py [--mode embedded|real|both] [--events 200000]
       [--page 1000]

A fresh log (SQLite file, or a fresh PostgreSQL database) gets ``events`` ~300-byte events
over ten projects and 1,000 streams, appended 100 at a time. The feed then pages through
all of it (``page`` events a read, as ``GET /events/v1/events?limit=`` does, without the
HTTP hop). Ceiling (same run, same log): a raw scan of the events table in position order
(asyncpg cursor, or sqlite3 fetchmany) that decodes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from common import Payload, fresh_database, make_payload, result_line, run

from actors.event_feed import document, visibility
from gateway.events import EventFeedApi, Filters
from schemas import SYSTEM_EVENTS, NewEvent
from store.protocol import ANY_VERSION
from store.registry import EventTypes

PROJECTS = 10
_ENCODER = msgspec.json.Encoder()


@contextlib.asynccontextmanager
async def open_store(mode: str) -> AsyncIterator[tuple[Any, str]]:
    types = EventTypes([*SYSTEM_EVENTS, Payload])
    if mode == "embedded":
        from store.sqlite import SqliteEventStore

        with tempfile.TemporaryDirectory(prefix="orrery-bench-feed-") as tmp:
            path = str(Path(tmp) / "log.sqlite")
            store = await SqliteEventStore.open(path, types)
            try:
                yield store, path
            finally:
                await store.close()
        return
    from store.postgres import PostgresEventStore

    async with fresh_database("feed") as dsn:
        store = await PostgresEventStore.connect(dsn, types)
        try:
            yield store, dsn
        finally:
            await store.close()


async def fill(store: Any, events: int) -> None:
    for start in range(0, events, 100):
        batch = [NewEvent(type="bench.instance_state", data=make_payload(i),
                          project_id=f"p{(start // 100) % PROJECTS}")
                 for i in range(start, min(events, start + 100))]
        await store.append(f"bench:r{(start // 100) % 1000}", batch, ANY_VERSION)


async def read_all(feed: EventFeedApi, filters: Filters, page: int) -> tuple[float, int]:
    """(seconds, events returned) to page through the whole log, encoding each page."""
    started, after, returned = time.perf_counter(), 0, 0
    while True:
        found, next_after = await feed.read(filters, after, page)
        _ENCODER.encode({"events": [document(e) for e in found], "next_after": next_after})
        returned += len(found)
        if next_after == after:
            return time.perf_counter() - started, returned
        after = next_after


async def raw_scan(mode: str, where: str) -> tuple[float, int]:
    sql = ("SELECT position, stream, version, type, data, event_id, occurred_at,"
           " correlation_id, causation_id, project_id, user_id FROM events ORDER BY position")
    started, rows = time.perf_counter(), 0
    if mode == "embedded":
        conn = sqlite3.connect(where)
        cursor = conn.execute(sql)
        while chunk := cursor.fetchmany(1000):
            rows += len(chunk)
        conn.close()
    else:
        conn = await asyncpg.connect(where)
        async with conn.transaction():
            async for _ in conn.cursor(sql, prefetch=1000):
                rows += 1
        await conn.close()
    return time.perf_counter() - started, rows


async def measure(mode: str, args: argparse.Namespace) -> None:
    async with open_store(mode) as (store, where):
        await fill(store, args.events)
        feed = EventFeedApi(store)
        admin_s, admin_n = await read_all(feed, Filters(query=visibility(None, is_admin=True)),
                                          args.page)
        member_s, member_n = await read_all(
            feed, Filters(query=visibility("p3", is_admin=False)), args.page)
        raw_s, raw_n = await raw_scan(mode, where)
    assert admin_n == raw_n == args.events, (admin_n, raw_n)
    admin_rate, raw_rate = admin_n / admin_s, raw_n / raw_s
    member_scan = args.events / member_s
    print(f"{mode}: {args.events} events, pages of {args.page}: admin {admin_rate:.0f} events/s;"
          f" member (1 project of {PROJECTS}) {member_n / member_s:.0f} shown/s,"
          f" {member_scan:.0f} scanned/s; raw scan {raw_rate:.0f} rows/s", flush=True)
    print(result_line({f"{mode}_admin_events_per_s": admin_rate,
                       f"{mode}_member_scanned_per_s": member_scan},
                      raw_rate, admin_rate / raw_rate), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real", "both"), default="both")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    for mode in ("embedded", "real") if args.mode == "both" else (args.mode,):
        await measure(mode, args)


if __name__ == "__main__":
    run(main())
