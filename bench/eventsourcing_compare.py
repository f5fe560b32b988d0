"""16 concurrent writers, each on its own aggregate: PostgresEventStore vs eventsourcing's recorder.

Usage: .venv/bin/python bench/eventsourcing_compare.py [--seconds 8] [--writers 16] [--no-uvloop]
Needs: .venv/bin/pip install "eventsourcing[postgres]"  (the ``bench`` extra)

Theirs: eventsourcing's PostgresApplicationRecorder (the persistence layer under its
Application, the same layer as our store), pool of 16 psycopg connections, 16 threads,
each inserting one ~300-byte StoredEvent per call for its own aggregate (it takes an
EXCLUSIVE table lock per insert to keep notification ids gap-free).
Ours: 16 asyncio actors appending one event per call with expected versions.
Each side gets its own fresh database on the same server. Ratio = ours / theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from urllib.parse import urlparse

from common import Payload, fresh_database, loop_name, make_payload, result_line, run
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from schemas import NewEvent
from store.postgres import PostgresEventStore
from store.protocol import NO_STREAM
from store.registry import EventTypes

TAG = "bench.instance_state"


def theirs_blocking(dsn: str, writers: int, payload: bytes, seconds: float) -> float:
    """eventsourcing's recorder, ``writers`` threads; events/s."""
    url = urlparse(dsn)
    datastore = PostgresDatastore(
        dbname=url.path.lstrip("/"), host=url.hostname or "127.0.0.1", port=url.port or 5432,
        user=url.username or "postgres", password=url.password or "", pool_size=writers)
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    counts = [0] * writers
    start = threading.Barrier(writers + 1)

    def writer(w: int) -> None:
        aggregate = uuid.uuid4()
        start.wait()
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            counts[w] += 1
            recorder.insert_events([StoredEvent(originator_id=aggregate,
                                                originator_version=counts[w],
                                                topic="bench:InstanceState", state=payload)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    datastore.close()
    return sum(counts) / elapsed


async def ours(dsn: str, writers: int, payload: bytes, seconds: float) -> float:
    """PostgresEventStore, ``writers`` concurrent actors; events/s."""
    store = await PostgresEventStore.connect(dsn, EventTypes([Payload]))

    async def actor() -> int:
        stream, version = f"bench:{uuid.uuid4()}", NO_STREAM
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            result = await store.append(stream, [NewEvent(type=TAG, data=payload)], version)
            version = result.version
        return version

    try:
        began = time.perf_counter()
        counts = await asyncio.gather(*(actor() for _ in range(writers)))
        return sum(counts) / (time.perf_counter() - began)
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    payload = make_payload(1)
    print(f"loop={loop_name()} payload={len(payload)}B writers={a.writers} seconds={a.seconds}")
    async with fresh_database("es_theirs") as dsn:
        theirs_eps = await asyncio.to_thread(theirs_blocking, dsn, a.writers, payload, a.seconds)
    print(f"theirs  eventsourcing PostgresApplicationRecorder  {theirs_eps:9.0f} events/s")
    async with fresh_database("es_ours") as dsn:
        ours_eps = await ours(dsn, a.writers, payload, a.seconds)
    print(f"ours    PostgresEventStore                        {ours_eps:9.0f} events/s  "
          f"({ours_eps / theirs_eps:.1f}x)")
    print(result_line({"ours_eps": ours_eps, "theirs_eps": theirs_eps}, theirs_eps,
                      ours_eps / theirs_eps))


if __name__ == "__main__":
    run(main())
