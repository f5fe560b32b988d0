"""`orrery replay verify` and `rebuild` on PostgreSQL beside the raw scan-and-decode ceiling.

Usage: .venv/bin/python bench/replay_tool.py [--events 1000000] [--batch 5000]
       [--rebuild-batch 5000] [--no-uvloop]

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
Then a log of boots, rebuilt into the cloud's instances and timers projections one at a
time and both together (one read of the log for the two, as `orrery replay rebuild`
with no name rebuilds every projection). These name the event types they fold, so a
rebuild reads only those; their rate is the whole log's events over the rebuild's time
(how fast the rebuild gets through the log, as the ceiling's rate is).
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
from collections.abc import Callable, Sequence
from pathlib import Path

# bench/replay.py (the read_all benchmark) would shadow the replay package: look in this
# directory last, after the project's packages.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE] \
    + [str(_HERE)]

import asyncpg  # noqa: E402
import msgspec  # noqa: E402
from common import Payload, fresh_database, loop_name, make_payload, result_line, run  # noqa: E402

from actors.host import HOST as HOST_KIND, HostClaimed  # noqa: E402
from actors.instance import (  # noqa: E402
    INSTANCE as INSTANCE_KIND,
    FlavorInfo,
    ImageInfo,
    InstanceCreated,
    InstanceImageReady,
    InstanceScheduled,
    InstanceSpawned,
)
from actors.instance_views import InstancesProjection  # noqa: E402
from actors.kind import ActorKind  # noqa: E402
from actors.timers import TimerProjection  # noqa: E402
from replay.catalog import Catalog  # noqa: E402
from replay.rebuild import rebuild  # noqa: E402
from replay.verify import verify  # noqa: E402
from schemas import EventEnvelope, TimerCancelled, TimerSet  # noqa: E402
from store.postgres import PostgresEventStore  # noqa: E402
from store.protocol import SqlTx  # noqa: E402
from store.rowset import RowSet  # noqa: E402
from store.tables import Table  # noqa: E402

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


HOSTS = Table("bench_hosts", (("stream", "text"), ("host", "text"), ("state", "text")))


class HostsProjection:
    """One row per stream: its host and state, set by every event, folded as the cloud's
    projections fold (a RowSet: each row the batch touched written once)."""

    name = "bench_hosts"
    per_stream = True
    ddl: Sequence[str] = ("CREATE TABLE IF NOT EXISTS bench_hosts (stream TEXT PRIMARY KEY,"
                          " host TEXT NOT NULL, state TEXT NOT NULL)",)
    drop: Sequence[str] = ("DROP TABLE IF EXISTS bench_hosts",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        rows = RowSet(HOSTS)
        for e in events:
            p = DECODER.decode(e.data)
            rows.put({"stream": e.stream, "host": p.host, "state": p.state})
        await rows.flush(tx)


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


def _decode_payload(row: asyncpg.Record) -> None:
    DECODER.decode(row[4])


async def ceiling(dsn: str, batch: int, columns: Sequence[str] = COLUMNS,
                  decode: Callable[[asyncpg.Record], object] = _decode_payload) -> float:
    """Raw server-side cursor scan of ``columns`` in position order, ``decode`` of each
    row (the synthetic log's payload by default); events/s."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    count = 0
    began = time.perf_counter()
    async with conn.transaction():
        cursor = conn.cursor(f"SELECT {', '.join(columns)} FROM events ORDER BY position",
                             prefetch=batch)
        async for row in cursor:
            decode(row)
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


# -- the cloud's own projections on a log of boots ------------------------------------------

BOOT_STEPS = 7  # events per boot: 6 on the instance's stream, 1 on its host's
SPREAD = 40     # boots in flight at once: a boot's events are spread over ~SPREAD boots'
#: the time between two events of the log: a boot every 7 ms, each lasting ~40 boots'
#: time (280 ms), each event at its own time as the cloud records it (each server's
#: created_at, updated_at and launched_at its own, as the instances projection indexes them)
EVENT_GAP = dt.timedelta(milliseconds=1)


def slot(i: int, step: int) -> int:
    """Where boot ``i``'s step goes among the events (their order and their time): ~SPREAD
    boots overlap."""
    return i * BOOT_STEPS + step * SPREAD


def boot_events(i: int, start: dt.datetime) -> list[tuple[str, msgspec.Struct]]:
    """One boot as the cloud records it: (stream, event) in log order, each step at its
    slot's time after ``start``."""
    iid, host = str(uuid.uuid4()), f"host-{i % 16}"
    timer = f"t-{iid}"
    flavor = FlavorInfo(id="1", name="m1.tiny", vcpus=1, ram=512, disk=1)
    at = [start + EVENT_GAP * slot(i, step) for step in range(BOOT_STEPS)]
    return [
        (f"instance:{iid}", InstanceCreated(
            instance_id=iid, name=f"vm-{i}", project_id=f"p{i % 10}", user_id="u1",
            flavor=flavor, image=ImageInfo(id="img", size=4096), metadata={"seq": str(i)},
            request=f"r-{i}", at=at[0])),
        (f"instance:{iid}", TimerSet(timer_id=timer, name="deadline",
                                     fire_at=at[1] + dt.timedelta(minutes=5))),
        (f"host:{host}", HostClaimed(instance_id=iid, vcpus=1, ram_mb=512, disk_gb=1)),
        (f"instance:{iid}", InstanceScheduled(host=host, request=f"s-{i}", at=at[3])),
        (f"instance:{iid}", InstanceImageReady(host=host, at=at[4])),
        (f"instance:{iid}", InstanceSpawned(host=host, power_state=1, at=at[5])),
        (f"instance:{iid}", TimerCancelled(timer_id=timer)),
    ]


async def load_cloud(dsn: str, boots: int) -> int:
    """COPY ``boots`` boots, interleaved as concurrent boots are; the events written."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=bytes, decoder=bytes)
    began = dt.datetime.now(dt.UTC) - EVENT_GAP * slot(boots, BOOT_STEPS)
    versions: dict[str, int] = {}
    total = 0
    for start in range(0, boots, CHUNK // BOOT_STEPS):
        chunk = range(start, min(start + CHUNK // BOOT_STEPS, boots))
        slots = sorted((slot(i, k), stream, event) for i in chunk
                       for k, (stream, event) in enumerate(boot_events(i, began)))
        async with conn.transaction():
            base = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")) << 20
            rows = []
            for n, (at, stream, event) in enumerate(slots):
                versions[stream] = version = versions.get(stream, 0) + 1
                rows.append((base + n, stream, version, event.__struct_config__.tag,
                             msgspec.json.encode(event), uuid.uuid4(),
                             began + EVENT_GAP * at, f"req-{n}", None, None, None))
            await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)
        total += len(rows)
    await conn.execute("VACUUM ANALYZE events")
    await conn.close()
    return total


def kind_decoder(catalog: Catalog) -> Callable[[asyncpg.Record], object]:
    """Decode a row of the cloud log as its kind's code decodes it."""
    decoders = {kind: codec.events for kind, codec in catalog.codecs.items()}

    def decode(row: asyncpg.Record) -> object:
        stream = row[1]
        return decoders[stream[:stream.find(":")]].decode(row[4])

    return decode


async def cloud(a: argparse.Namespace) -> dict[str, float]:
    """Rebuild the cloud's instances and timers projections on a log of boots."""
    catalog = Catalog([INSTANCE_KIND, HOST_KIND])
    projections = [InstancesProjection(), TimerProjection(lambda position, at: None)]
    best: dict[str, float] = {"cloud_ceiling": 0.0}
    async with fresh_database("replaycloud") as dsn:
        store = await PostgresEventStore.connect(dsn, catalog.event_types(), settle_timeout=0)
        try:
            events = await load_cloud(dsn, a.events // BOOT_STEPS)
            print(f"cloud    {events} events of {a.events // BOOT_STEPS} boots loaded")
            for _ in range(2):
                rate = await ceiling(dsn, a.batch, decode=kind_decoder(catalog))
                best["cloud_ceiling"] = max(best["cloud_ceiling"], rate)
                print(f"ceiling  cursor scan + decode     {rate:9.0f} events/s")
                for chosen in ([p] for p in projections):
                    [done] = await rebuild(store, chosen, show=False, batch=a.rebuild_batch)
                    key = f"rebuild_{done.projection}"
                    rate = events / done.seconds
                    best[key] = max(best.get(key, 0.0), rate)
                    print(f"rebuild  {done.projection:22s}  {rate:9.0f} events/s"
                          f" ({done.events} of them folded)")
                both = await rebuild(store, projections, show=False, batch=a.rebuild_batch)
                rate = events / both[0].seconds
                best["rebuild_both"] = max(best.get("rebuild_both", 0.0), rate)
                print(f"rebuild  both, one read of the log {rate:9.0f} events/s")
        finally:
            await store.close()
    return best


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--rebuild-batch", type=int, default=5000)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--no-cloud", dest="cloud", action="store_false",
                    help="skip the cloud's own projections on a log of boots")
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
                print(f"raw      per-event upserts        {rate:9.0f} events/s")
                [done] = await rebuild(store, [HostsProjection()], show=False,
                                       batch=a.rebuild_batch)
                assert done.events == a.events, done
                best["rebuild"] = max(best["rebuild"], done.rate)
                print(f"rebuild  a row per stream         {done.rate:9.0f} events/s")
        finally:
            await store.close()
    real = await cloud(a) if a.cloud else {}
    verify_ratio = best["verify"] / best["checked"]
    print(f"ratios   verify {verify_ratio:.3f} (to the scan of its columns),"
          f" {best['verify'] / best['ceiling']:.3f} (to the whole rows)"
          f"  rebuild {best['rebuild'] / best['ceiling']:.3f} (to the scan-and-decode"
          f" ceiling), {best['rebuild'] / best['writes']:.3f} (to the raw per-event upserts)")
    ratios = [verify_ratio, best["rebuild"] / best["ceiling"]]
    for key, rate in real.items():
        if key != "cloud_ceiling":
            ratios.append(rate / real["cloud_ceiling"])
            print(f"ratios   {key} {rate / real['cloud_ceiling']:.3f} (to the cloud log's"
                  " scan-and-decode ceiling)")
    print(result_line({"verify_eps": best["verify"], "rebuild_eps": best["rebuild"], **real},
                      best["ceiling"], min(ratios)))


if __name__ == "__main__":
    run(main())
