"""`orrery replay verify` and `rebuild` on PostgreSQL beside the raw scan-and-decode ceiling.

Usage: .venv/bin/python bench/replay_tool.py [--events 1000000] [--batch 5000]
       [--rebuild-batch 1000] [--no-uvloop]

Loads ``--events`` events (10 per stream) with COPY into a fresh database, as the runtime
records them: real positions ((xid << 20) + ordinal), every append's cause in
``reactions``, each stream's first event caused by a command and the rest by the event
before (reactions). Then, twice each, alternating, on the same data:
  ceiling: one asyncpg server-side cursor (prefetch = --batch) over the events in position
           order, msgspec-decoding each event's data (bench/replay.py's ceiling); once over
           whole rows, once over only the columns verify checks (its fair ceiling);
  verify:  replay.verify.verify (every check but --fold), as `orrery replay verify` runs it;
  raw:     the same scan and decode plus the projection's upserts with executemany, one
           transaction per --rebuild-batch events (the raw form of rebuild's work);
  rebuild: replay.rebuild.rebuild of a projection that decodes each event and upserts one
           row per stream per event (as the cloud's projections do), as `orrery replay
           rebuild` runs it.
Best of each. The issue's goal is verify and rebuild >= 0.70 of the scan-and-decode
ceiling; a projection that writes a row per event is bound by those writes, so rebuild is
also shown against the raw upserts. The result line's ratio is the lower of the two
ratios to the scan-and-decode ceiling (verify's: of the columns it reads).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

# bench/replay.py (the read_all benchmark) would shadow the replay package: look in this
# directory last, after the project's packages.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE] \
    + [str(_HERE)]

import asyncpg  # noqa: E402
import msgspec  # noqa: E402
from common import Payload, fresh_database, loop_name, make_payload, result_line, run  # noqa: E402

from actors.kind import ActorKind  # noqa: E402
from replay.catalog import Catalog  # noqa: E402
from replay.rebuild import rebuild  # noqa: E402
from replay.verify import verify  # noqa: E402
from schemas import EventEnvelope  # noqa: E402
from store.postgres import PostgresEventStore  # noqa: E402
from store.protocol import SqlTx  # noqa: E402

KIND = "bench"
DECODER = msgspec.json.Decoder(Payload)
COLUMNS = ["position", "stream", "version", "type", "data", "event_id", "occurred_at",
           "correlation_id", "causation_id", "project_id", "user_id"]
CHUNK = 50_000
TAG = "bench.instance_state"


class Touch(msgspec.Struct, frozen=True, kw_only=True, tag="bench.touch"):
    """The bench kind's one command (a kind needs one; nothing sends it)."""


class BenchState(msgspec.Struct):
    host: str = ""
    state: str = ""


def _evolve(state: BenchState, event: msgspec.Struct) -> BenchState:
    if isinstance(event, Payload):
        state.host, state.state = event.host, event.state
    return state


BENCH = ActorKind(name=KIND, state_type=BenchState, initial=lambda _id: BenchState(),
                  decide=lambda state, command, ctx: [], evolve=_evolve, commands=(Touch,),
                  events=(Payload,))


class HostsProjection:
    """One row per stream: its host and state, upserted for every event."""

    name = "bench_hosts"
    ddl: Sequence[str] = ("CREATE TABLE IF NOT EXISTS bench_hosts (stream TEXT PRIMARY KEY,"
                          " host TEXT NOT NULL, state TEXT NOT NULL)",)
    drop: Sequence[str] = ("DROP TABLE IF EXISTS bench_hosts",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for e in events:
            p = DECODER.decode(e.data)
            await tx.execute("INSERT INTO bench_hosts (stream, host, state) VALUES ($1, $2, $3)"
                             " ON CONFLICT (stream) DO UPDATE SET host = excluded.host,"
                             " state = excluded.state", e.stream, p.host, p.state)


async def load(dsn: str, total: int) -> float:
    """COPY ``total`` events and their appends' causes; returns events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    payloads = [make_payload(i) for i in range(64)]
    now = dt.datetime.now(dt.UTC)
    began = time.perf_counter()
    for start in range(0, total, CHUNK):
        async with conn.transaction():
            base = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")) << 20
            events, causes = [], []
            previous = ""
            for i in range(start, min(start + CHUNK, total)):
                if i % 10 == 0:
                    stream, previous = f"{KIND}:{uuid.uuid4()}", f"cmd-{uuid.uuid4()}"
                position, event_id = base + i - start, uuid.uuid4()
                events.append((position, stream, i % 10 + 1, TAG, payloads[i % 64], event_id,
                               now, "req-bench", previous, None, None))
                causes.append((stream, previous, i % 10 + 1, position))
                previous = str(event_id)
            await conn.copy_records_to_table("events", records=events, columns=COLUMNS)
            await conn.copy_records_to_table("reactions", records=causes,
                                             columns=["stream", "cause", "version", "position"])
    rate = total / (time.perf_counter() - began)
    await conn.execute("VACUUM ANALYZE events")
    await conn.execute("VACUUM ANALYZE reactions")
    await conn.close()
    return rate


#: the columns verify reads (what its checks need)
CHECKED = ["position", "stream", "version", "type", "data", "occurred_at", "causation_id"]


async def ceiling(dsn: str, batch: int, columns: Sequence[str] = COLUMNS) -> float:
    """Raw server-side cursor scan of ``columns`` in position order + decode; events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    count = 0
    began = time.perf_counter()
    async with conn.transaction():
        cursor = conn.cursor(f"SELECT {', '.join(columns)} FROM events ORDER BY position",
                             prefetch=batch)
        async for row in cursor:
            DECODER.decode(row[4])
            count += 1
    rate = count / (time.perf_counter() - began)
    await conn.close()
    return rate


async def ceiling_with_writes(dsn: str, batch: int) -> float:
    """Raw scan + decode + the projection's upserts (executemany, one transaction per
    batch of ``batch`` events, as a rebuild commits): the raw form of rebuild's work."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    await conn.execute("CREATE TABLE IF NOT EXISTS raw_hosts (stream TEXT PRIMARY KEY,"
                       " host TEXT NOT NULL, state TEXT NOT NULL)")
    await conn.execute("TRUNCATE raw_hosts")
    upsert = ("INSERT INTO raw_hosts (stream, host, state) VALUES ($1, $2, $3) ON CONFLICT"
              " (stream) DO UPDATE SET host = excluded.host, state = excluded.state")
    count, after = 0, -1
    began = time.perf_counter()
    while rows := await conn.fetch("SELECT position, stream, data FROM events WHERE position"
                                   " > $1 ORDER BY position LIMIT $2", after, batch):
        args = []
        for position, stream, data in rows:
            p = DECODER.decode(data)
            args.append((stream, p.host, p.state))
            after = position
        async with conn.transaction():
            await conn.executemany(upsert, args)
        count += len(rows)
    rate = count / (time.perf_counter() - began)
    await conn.close()
    return rate


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--rebuild-batch", type=int, default=1000)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    print(f"loop={loop_name()} events={a.events} batch={a.batch}"
          f" rebuild_batch={a.rebuild_batch}")
    catalog = Catalog([BENCH])
    async with fresh_database("replaytool") as dsn:
        store = await PostgresEventStore.connect(dsn, catalog.event_types(), settle_timeout=0)
        try:
            print(f"load     COPY events + causes      {await load(dsn, a.events):9.0f}"
                  " events/s")
            best = {"ceiling": 0.0, "checked": 0.0, "verify": 0.0, "rebuild": 0.0,
                    "writes": 0.0}
            for _ in range(2):
                best["ceiling"] = max(best["ceiling"], rate := await ceiling(dsn, a.batch))
                print(f"ceiling  cursor scan + decode     {rate:9.0f} events/s")
                best["checked"] = max(best["checked"],
                                      rate := await ceiling(dsn, a.batch, CHECKED))
                print(f"ceiling  the same, verify's cols  {rate:9.0f} events/s")
                report = await verify(store, catalog, batch=a.batch)
                assert report.ok and report.events == a.events, report.counts
                rate = report.events / report.seconds
                best["verify"] = max(best["verify"], rate)
                print(f"verify   all checks               {rate:9.0f} events/s")
                best["writes"] = max(best["writes"],
                                     rate := await ceiling_with_writes(dsn, a.rebuild_batch))
                print(f"raw      scan + decode + upserts  {rate:9.0f} events/s")
                [done] = await rebuild(store, [HostsProjection()], show=False,
                                       batch=a.rebuild_batch)
                assert done.events == a.events, done
                best["rebuild"] = max(best["rebuild"], done.rate)
                print(f"rebuild  one upsert per event     {done.rate:9.0f} events/s")
        finally:
            await store.close()
    verify_ratio = best["verify"] / best["checked"]
    print(f"ratios   verify {verify_ratio:.3f} (to the scan of its columns),"
          f" {best['verify'] / best['ceiling']:.3f} (to the whole rows)"
          f"  rebuild {best['rebuild'] / best['ceiling']:.3f} (to the scan-and-decode"
          f" ceiling), {best['rebuild'] / best['writes']:.3f} (to the raw upserts)")
    print(result_line({"verify_eps": best["verify"], "rebuild_eps": best["rebuild"]},
                      best["ceiling"], min(verify_ratio, best["rebuild"] / best["ceiling"])))


if __name__ == "__main__":
    run(main())
