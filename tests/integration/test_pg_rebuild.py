"""Rebuilding projections on PostgreSQL beside the live tables (store.pg_rebuild): readers
keep the old rows until the swap, a failing worker leaves the live tables as they were,
and the shadow of a rebuild that died is cleared by the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec
import pytest

from schemas import EventEnvelope
from store.pg_common import init_conn
from store.pg_rebuild import (
    SHADOW_LOCK_CLASS,
    SHADOW_PREFIX,
    Job,
    Part,
    RebuildFailed,
    ShadowTx,
    _Written,
    plan,
)
from store.postgres import PostgresEventStore
from store.projections import ProjectionHub, ProjectionRunner
from store.protocol import ANY_VERSION, SqlTx
from store.registry import EventTypes
from store.rowset import RowSet
from store.tables import Table
from tests.support.events import Incremented, new_event

WAIT = 10.0
DECODE = msgspec.json.Decoder(Incremented)
ROWS = Table("amounts", (("stream", "text"), ("amount", "bigint")))


class Amounts:
    """The last amount of each counter stream, one row a stream."""

    name = "amounts"
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS amounts (stream TEXT PRIMARY KEY, amount BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS amounts_amount ON amounts (amount)")
    drop: Sequence[str] = ("DROP TABLE IF EXISTS amounts",)
    types = ("counter.incremented",)
    per_stream = True

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        rows = RowSet(ROWS)
        for event in events:
            rows.put({"stream": event.stream, "amount": _amount(event)})
        await rows.flush(tx)


def _amount(event: EventEnvelope) -> int:
    return DECODE.decode(event.data).amount


class Held(Amounts):
    """Amounts that stop folding, part-way through the log, until let go."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        self.reached.set()
        await self.go.wait()
        await super().apply(tx, events)


class FailsOn13(Amounts):
    """Amounts that blow up on an increment of 13 (in whichever worker folds it)."""

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        if any(_amount(e) == 13 for e in events):
            raise RuntimeError("unlucky")
        await super().apply(tx, events)


@pytest.fixture
async def store(pg_dsn: str, event_types: EventTypes) -> AsyncIterator[PostgresEventStore]:
    opened = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        yield opened
    finally:
        await opened.close()


async def _append(store: PostgresEventStore, count: int, base: int = 0) -> int:
    position = 0
    for i in range(count):
        position = (await store.append(f"counter:c{i % 10}",
                                       [new_event(Incremented(amount=base + i))],
                                       ANY_VERSION)).position
    return position


async def _amounts(store: PostgresEventStore) -> dict[object, object]:
    return dict(await store.query("SELECT stream, amount FROM amounts"))


async def _shadows(pg_dsn: str) -> list[str]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'orrery\\_rebuild\\_%'")]
    finally:
        await conn.close()


def test_per_stream_projections_are_split_over_the_workers_the_others_kept_whole() -> None:
    split, whole = Amounts(), object()
    assert plan([split], 1) == [Job((0,), None)]
    assert plan([split, whole], 2) == [Job((0,), Part(0, 2)), Job((0,), Part(1, 2)),
                                       Job((1,), None)]
    assert plan([whole], 4) == [Job((0,), None)]


async def test_readers_see_the_old_rows_until_the_rebuilt_ones_are_swapped_in(
    store: PostgresEventStore, pg_dsn: str,
) -> None:
    """While a rebuild folds, the live table keeps the rows as they were (here spoiled
    on purpose); the swap puts the refolded rows in their place at once, with the
    secondary index and the statistics of the indexed columns, and no shadow is left
    behind."""
    head = await _append(store, 30)
    async with ProjectionRunner(store, Amounts()) as runner:
        assert await runner.wait_until(head, WAIT)
    folded = await _amounts(store)
    async with store.projection_tx("amounts", head, head) as tx:
        await tx.execute("UPDATE amounts SET amount = -1")
    held = Held()
    rebuilding = asyncio.create_task(ProjectionRunner(store, held, batch=7).rebuild())
    await asyncio.wait_for(held.reached.wait(), WAIT)
    assert set((await _amounts(store)).values()) == {-1}
    assert len(await _shadows(pg_dsn)) == 1
    held.go.set()
    assert await asyncio.wait_for(rebuilding, WAIT) == head
    assert await _amounts(store) == folded
    assert await store.query("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                             " AND tablename = 'amounts' ORDER BY indexname") == [
        ("amounts_amount",), ("amounts_pkey",)]
    # the planner's statistics of the indexed columns came along
    assert await store.query("SELECT attname FROM pg_stats WHERE schemaname = 'public'"
                             " AND tablename = 'amounts' ORDER BY attname") == [
        ("amount",), ("stream",)]
    assert await _shadows(pg_dsn) == []


async def test_a_worker_that_fails_fails_the_rebuild_and_leaves_the_live_tables(
    store: PostgresEventStore, pg_dsn: str,
) -> None:
    """A projection that raises in one of the worker processes: the rebuild raises
    (naming the error), the live rows and checkpoint are as they were, and the shadow is
    dropped."""
    head = await _append(store, 30)
    async with ProjectionRunner(store, Amounts()) as runner:
        assert await runner.wait_until(head, WAIT)
    folded = await _amounts(store)
    with pytest.raises(RebuildFailed, match="unlucky"):
        await ProjectionHub(store, [FailsOn13()], batch=4).rebuild(workers=2)
    assert await _amounts(store) == folded
    assert await store.projection_checkpoint("amounts") == head
    assert await _shadows(pg_dsn) == []


async def test_the_shadow_of_a_rebuild_that_died_is_dropped_by_the_next(
    store: PostgresEventStore, pg_dsn: str,
) -> None:
    """A shadow whose rebuild is gone (no session holds its lock) is dropped when the
    next rebuild starts; one whose rebuild still runs is left alone."""
    conn = await asyncpg.connect(pg_dsn)
    alive = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {SHADOW_PREFIX}dead0001;"
                           f" CREATE TABLE {SHADOW_PREFIX}dead0001.amounts (x int)")
        await alive.execute(f"CREATE SCHEMA {SHADOW_PREFIX}live0001")
        await alive.execute("SELECT pg_advisory_lock($1, hashtext($2))", SHADOW_LOCK_CLASS,
                            f"{SHADOW_PREFIX}live0001")
        head = await _append(store, 5)
        assert await ProjectionHub(store, [Amounts()]).rebuild(workers=2) == head
        assert await _shadows(pg_dsn) == [f"{SHADOW_PREFIX}live0001"]
    finally:
        await alive.close()
        await conn.close()


async def test_a_swap_held_up_by_a_long_reader_waits_for_it_and_tries_again(
    store: PostgresEventStore, pg_dsn: str,
) -> None:
    """A reader's transaction holds the live table past the swap's lock timeout: the swap
    gives up that try (so readers do not queue behind it indefinitely) and succeeds on a
    later one, once the reader is done."""
    head = await _append(store, 20)
    async with ProjectionRunner(store, Amounts()) as runner:
        assert await runner.wait_until(head, WAIT)
    folded = await _amounts(store)
    reader = await asyncpg.connect(pg_dsn)
    try:
        async with reader.transaction():
            assert await reader.fetchval("SELECT count(*) FROM amounts") == 10
            rebuilding = asyncio.create_task(ProjectionRunner(store, Amounts()).rebuild())
            await asyncio.sleep(2.5)  # past one try's lock timeout (2 s)
            assert not rebuilding.done()
        assert await asyncio.wait_for(rebuilding, WAIT) == head
    finally:
        await reader.close()
    assert await _amounts(store) == folded
    assert await _shadows(pg_dsn) == []


SEEN = Table("seen", (("position", "bigint"), ("event_id", "text"), ("occurred_at", "text"),
                      ("version", "bigint"), ("correlation_id", "text"),
                      ("user_id", "text")))


class Seen:
    """What a projection is handed of each increment's envelope, one row an event."""

    name = "seen"
    ddl: Sequence[str] = ("CREATE TABLE IF NOT EXISTS seen (position BIGINT PRIMARY KEY,"
                          " event_id TEXT, occurred_at TEXT, version BIGINT,"
                          " correlation_id TEXT, user_id TEXT)",)
    drop: Sequence[str] = ("DROP TABLE IF EXISTS seen",)
    types = ("counter.incremented",)
    per_stream = True

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        rows = RowSet(SEEN)
        for e in events:
            rows.put({"position": e.position, "event_id": str(e.event_id),
                      "occurred_at": e.occurred_at.isoformat(), "version": e.version,
                      "correlation_id": e.correlation_id, "user_id": e.user_id})
        await rows.flush(tx)


class SeenSparingly(Seen):
    """Seen, promising to read only the user of each envelope (and what every projection
    gets): a rebuild hands it placeholders in the rest."""

    fields = ("user_id",)


async def test_a_rebuild_reads_only_the_envelope_fields_its_projections_name(
    store: PostgresEventStore,
) -> None:
    """A projection naming the fields it reads gets those (and the stream, type, data and
    position) from the log, and placeholders in the others, which the rebuild did not
    read; one naming none gets every field."""
    for i in range(6):
        await store.append(f"counter:c{i % 2}", [new_event(
            Incremented(amount=i), correlation_id=f"req-{i}", user_id=f"u{i}")], ANY_VERSION)
    log = {e.position: e for e in await store.read_all(0, 100)}
    await ProjectionHub(store, [SeenSparingly()]).rebuild(workers=2)
    sparing = await store.query("SELECT position, event_id, occurred_at, version,"
                                " correlation_id, user_id FROM seen ORDER BY position")
    assert sparing == [(p, "00000000-0000-0000-0000-000000000000", "1970-01-01T00:00:00+00:00",
                        0, None, e.user_id) for p, e in sorted(log.items())]
    await ProjectionHub(store, [Seen()]).rebuild(workers=2)
    whole = await store.query("SELECT position, event_id, occurred_at, version,"
                              " correlation_id, user_id FROM seen ORDER BY position")
    assert whole == [(p, str(e.event_id), e.occurred_at.isoformat(), e.version,
                      e.correlation_id, e.user_id) for p, e in sorted(log.items())]


async def test_a_folds_new_rows_wait_for_a_copy_of_several_batches_and_reads_see_them(
    pg_dsn: str,
) -> None:
    """A rebuild's writer keeps a table's new rows until enough are there for one COPY: a
    put of one of them replaces it, a delete drops it (no statement), an upsert of a row
    already sent still goes at once, and a read of committed rows or the fold's own SQL
    sends the waiting rows first."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await init_conn(conn)
        await conn.execute("CREATE TABLE amounts (stream TEXT PRIMARY KEY, amount BIGINT NOT NULL)")
        written = _Written(copy_rows=3)

        async def batch(since: int, puts: Sequence[tuple[str, int]] = (),
                        deletes: Sequence[str] = ()) -> ShadowTx:
            tx = ShadowTx(conn, "public", since, written)
            await tx.delete_rows(ROWS, [{"stream": s} for s in deletes])
            await tx.put_rows(ROWS, [{"stream": s, "amount": a} for s, a in puts])
            await tx.commit()
            return tx

        async def table() -> dict[str, int]:
            return {r[0]: r[1] for r in await conn.fetch("SELECT stream, amount FROM amounts")}

        await batch(0, [("a", 1), ("b", 1)])
        assert await table() == {}  # two rows wait for a third
        await batch(1, [("a", 2), ("c", 1)], deletes=["b"])
        assert await table() == {}  # a replaced and b dropped while waiting: a and c wait
        await batch(2, [("d", 1)])
        assert await table() == {"a": 2, "c": 1, "d": 1}  # three: one COPY
        await batch(3, [("a", 3), ("e", 1)], deletes=["c"])
        # a was sent: its upsert and c's delete go at once; e waits
        assert await table() == {"a": 3, "d": 1}
        tx = ShadowTx(conn, "public", 4, written)
        assert await tx.committed_rows(ROWS, "stream", ["e"]) == [("e", 1)]
        await batch(4, [("f", 1)])
        tx = ShadowTx(conn, "public", 5, written)
        await tx.execute("UPDATE amounts SET amount = amount * 10")
        await tx.commit()
        assert await table() == {"a": 30, "d": 10, "e": 10, "f": 10}
        await batch(6, [("f", 2), ("g", 1)])  # no COPY after the fold's own SQL: upserts
        assert await table() == {"a": 30, "d": 10, "e": 10, "f": 2, "g": 1}
    finally:
        await conn.close()
