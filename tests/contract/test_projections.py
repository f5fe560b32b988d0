"""The projection contract: query tables and checkpoints move together, on every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import pytest
from prometheus_client import REGISTRY

from schemas import EventEnvelope
from store.errors import ConcurrencyError
from store.projections import (
    Projection,
    ProjectionHost,
    ProjectionHub,
    ProjectionRunner,
    split_ddl,
    tables_of,
)
from store.protocol import ANY_VERSION, NO_STREAM, SqlTx
from store.registry import EventTypes
from store.rowset import Carried, RowSet
from store.tables import Table
from tests.contract.conftest import open_store
from tests.support.events import Incremented, Noted, Renamed, new_event

WAIT = 10.0  # seconds a test waits for something that should happen at once
DECODE = msgspec.json.Decoder(Incremented)
UPSERT = (
    "INSERT INTO counter_totals (stream, total, events) VALUES ($1, $2, 1)"
    " ON CONFLICT (stream) DO UPDATE SET total = counter_totals.total + excluded.total,"
    " events = counter_totals.events + 1"
)


class Totals:
    """Sum and count of increments per counter stream."""

    name = "counter_totals"
    ddl = (
        "CREATE TABLE IF NOT EXISTS counter_totals"
        " (stream TEXT PRIMARY KEY, total BIGINT NOT NULL, events BIGINT NOT NULL)",
    )
    drop = ("DROP TABLE IF EXISTS counter_totals",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            if event.type == "counter.incremented":
                await tx.execute(UPSERT, event.stream, DECODE.decode(bytes(event.data)).amount)


class FailsOn13(Totals):
    """Totals that blow up, after writing, when it meets an increment of 13."""

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            await super().apply(tx, [event])
            if event.type == "counter.incremented" and DECODE.decode(event.data).amount == 13:
                raise RuntimeError("unlucky")


async def totals(store: ProjectionHost) -> dict[object, tuple[object, object]]:
    """The projection's rows, as a reader (the gateway) sees them."""
    rows = await store.query("SELECT stream, total, events FROM counter_totals ORDER BY stream")
    return {s: (t, n) for s, t, n in rows}


async def append_amounts(store: ProjectionHost, stream: str, *amounts: int) -> int:
    result = await store.append(
        stream, [new_event(Incremented(amount=a)) for a in amounts], ANY_VERSION
    )
    return result.position


async def append_one_by_one(store: ProjectionHost, stream: str, amount: int,
                            times: int) -> int:
    """``times`` appends of ``amount`` to ``stream``, yielding between them (events still
    coming while something else runs); the last one's position."""
    last = 0
    for _ in range(times):
        last = await append_amounts(store, stream, amount)
        await asyncio.sleep(0)
    return last


async def test_runner_folds_events_into_rows_and_moves_the_checkpoint(
    store: ProjectionHost,
) -> None:
    """A running projection sums each stream's increments and checkpoints at the head."""
    await append_amounts(store, "counter:a", 1, 2, 3)
    await store.append("counter:a", [new_event(Renamed(name="ignored"))], 3)
    head = await append_amounts(store, "counter:b", 10)
    async with ProjectionRunner(store, Totals(), batch=2) as runner:
        assert await runner.wait_until(head, WAIT)
        assert await totals(store) == {"counter:a": (6, 3), "counter:b": (10, 1)}
    assert await store.projection_checkpoint("counter_totals") == head


async def test_projection_metrics_report_position_and_no_lag_once_caught_up(
    store: ProjectionHost,
) -> None:
    """orrery_projection_position is the checkpoint and the lag is 0 when caught up; each
    batch committed is one observation of the delay, from its first event's recording."""
    labels = {"projection": "counter_totals"}
    batches = REGISTRY.get_sample_value("orrery_projection_delay_seconds_count", labels) or 0
    summed = REGISTRY.get_sample_value("orrery_projection_delay_seconds_sum", labels) or 0
    began = time.time()
    head = await append_amounts(store, "counter:a", *range(7))
    async with ProjectionRunner(store, Totals(), batch=3) as runner:
        assert await runner.wait_until(head, WAIT)
        assert REGISTRY.get_sample_value("orrery_projection_position", labels) == head
        assert REGISTRY.get_sample_value("orrery_projection_lag_events", labels) == 0
        took = time.time() - began
    counted = REGISTRY.get_sample_value("orrery_projection_delay_seconds_count", labels)
    assert counted is not None and counted - batches == 3  # 3 + 3 + 1 events
    delays = REGISTRY.get_sample_value("orrery_projection_delay_seconds_sum", labels)
    assert delays is not None and 0 < delays - summed <= 3 * took


async def test_projection_tx_commits_rows_and_checkpoint_together(store: ProjectionHost) -> None:
    """On clean exit the rows written and the new checkpoint are both there."""
    await store.run_ddl(Totals.ddl)
    async with store.projection_tx("counter_totals", 0, 7) as tx:
        await tx.execute(UPSERT, "counter:a", 5)
    assert await store.projection_checkpoint("counter_totals") == 7
    assert await totals(store) == {"counter:a": (5, 1)}


async def test_projection_tx_error_leaves_neither_rows_nor_checkpoint(
    store: ProjectionHost,
) -> None:
    """An error inside the transaction rolls back the rows and the checkpoint stays put."""
    await store.run_ddl(Totals.ddl)
    with pytest.raises(RuntimeError):
        async with store.projection_tx("counter_totals", 0, 7) as tx:
            await tx.execute(UPSERT, "counter:a", 5)
            raise RuntimeError("midway")
    assert await store.projection_checkpoint("counter_totals") == 0
    assert await totals(store) == {}


async def test_query_never_sees_an_open_projection_transaction(store: ProjectionHost) -> None:
    """Readers see committed projection rows only: none while the transaction is open."""
    await store.run_ddl(Totals.ddl)
    async with store.projection_tx("counter_totals", 0, 1) as tx:
        await tx.execute(UPSERT, "counter:a", 5)
        assert await tx.fetch("SELECT total FROM counter_totals") == [(5,)]
        assert await totals(store) == {}
    assert await totals(store) == {"counter:a": (5, 1)}
    rows = await store.query("SELECT total FROM counter_totals WHERE stream = $1", "counter:a")
    assert rows == [(5,)]


async def test_append_during_a_projection_tx_survives_its_rollback(
    store: ProjectionHost,
) -> None:
    """An append made while a projection transaction is open is not part of it."""
    await store.run_ddl(Totals.ddl)
    with pytest.raises(RuntimeError):
        async with store.projection_tx("counter_totals", 0, 1) as tx:
            await tx.execute(UPSERT, "counter:a", 5)
            appending = asyncio.create_task(append_amounts(store, "counter:a", 7))
            await asyncio.sleep(0.05)
            raise RuntimeError("midway")
    async with asyncio.timeout(WAIT):
        position = await appending
    assert [e.position for e in await store.read_all()] == [position]
    assert await store.projection_checkpoint("counter_totals") == 0


async def test_projection_tx_with_stale_checkpoint_conflicts_and_writes_nothing(
    store: ProjectionHost,
) -> None:
    """Entering with an expected checkpoint that is not the stored one raises ConcurrencyError."""
    await store.run_ddl(Totals.ddl)
    async with store.projection_tx("counter_totals", 0, 4):
        pass
    with pytest.raises(ConcurrencyError) as caught:
        async with store.projection_tx("counter_totals", 0, 9) as tx:
            await tx.execute(UPSERT, "counter:a", 5)
    assert caught.value.current == 4
    assert await store.projection_checkpoint("counter_totals") == 4
    assert await totals(store) == {}


async def test_failing_apply_midway_leaves_that_batch_unapplied(store: ProjectionHost) -> None:
    """A batch whose apply raises changes neither rows nor checkpoint; earlier batches stay."""
    await append_amounts(store, "counter:a", 1, 2)
    first_batch_end = (await store.read_all())[1].position
    await append_amounts(store, "counter:a", 13, 4)
    runner = ProjectionRunner(store, FailsOn13(), batch=2)
    with pytest.raises(RuntimeError, match="unlucky"):
        async with asyncio.timeout(WAIT):
            await runner.run()
    assert await store.projection_checkpoint("counter_totals") == first_batch_end
    assert await totals(store) == {"counter:a": (3, 2)}
    assert not await runner.wait_until(await store.head(), WAIT)  # failed: False, not a hang


async def test_rebuild_from_zero_reproduces_the_same_table(store: ProjectionHost) -> None:
    """rebuild() drops, recreates and refolds: the table equals the one folded live."""
    await append_amounts(store, "counter:a", 1, 2, 3)
    head = await append_amounts(store, "counter:b", 4, 5)
    runner = ProjectionRunner(store, Totals(), batch=2)
    async with runner:
        assert await runner.wait_until(head, WAIT)
    folded = await totals(store)
    checkpoint = await store.projection_checkpoint("counter_totals")
    async with store.projection_tx("counter_totals", checkpoint, checkpoint) as tx:
        await tx.execute("UPDATE counter_totals SET total = 999")
    assert await runner.rebuild() == head
    assert await totals(store) == folded
    assert await store.projection_checkpoint("counter_totals") == head


class IndexedTotals(Totals):
    """Totals with a secondary index, which notes whether the index was there as it
    folded."""

    ddl = (*Totals.ddl, "CREATE INDEX IF NOT EXISTS counter_totals_total"
                        " ON counter_totals (total)")
    indexed_while_folding: set[bool]

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.indexed_while_folding = set()

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        self.indexed_while_folding.add(bool(await tx.fetch(INDEX_SQL[self.kind])))
        await super().apply(tx, events)


INDEX_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index'"
              " AND name = 'counter_totals_total'",
    # in the schema the projection's unqualified names reach: a rebuild on PostgreSQL
    # folds into tables of its own (store.pg_rebuild) while the live ones keep theirs
    "postgres": "SELECT indexname FROM pg_indexes WHERE indexname = 'counter_totals_total'"
                " AND schemaname = current_schema()",
}
#: whether counter_totals has the planner's statistics (an ANALYZE ran on it)
ANALYSED_SQL = {
    "sqlite": "SELECT 1 FROM sqlite_stat1 WHERE tbl = 'counter_totals' LIMIT 1",
    "postgres": "SELECT 1 FROM pg_stat_user_tables WHERE relname = 'counter_totals'"
                " AND last_analyze IS NOT NULL",
}


async def test_a_rebuild_builds_secondary_indexes_once_the_rows_are_in(
    store: ProjectionHost, backend: tuple[str, str],
) -> None:
    """A rebuild folds into the bare tables (their keys only) and builds the other
    indexes of the DDL at the end, then analyses the tables, as a bulk load should; a
    live runner has the indexes all along."""
    head = await append_amounts(store, "counter:a", *range(1, 10))
    live = IndexedTotals(backend[0])
    async with ProjectionRunner(store, live, batch=4) as runner:
        assert await runner.wait_until(head, WAIT)
    assert live.indexed_while_folding == {True}
    rebuilt = IndexedTotals(backend[0])
    assert await ProjectionRunner(store, rebuilt, batch=4).rebuild() == head
    assert rebuilt.indexed_while_folding == {False}
    assert await store.query(INDEX_SQL[backend[0]])
    assert await store.query(ANALYSED_SQL[backend[0]]) == [(1,)]
    assert await totals(store) == {"counter:a": (45, 9)}
    assert split_ddl(IndexedTotals.ddl) == (list(Totals.ddl), [IndexedTotals.ddl[-1]])
    assert tables_of(IndexedTotals.ddl) == ["counter_totals"]


async def test_rebuild_while_a_runner_is_live_ends_exact(store: ProjectionHost) -> None:
    """Rebuilding under a running runner: the two hand over and nothing is counted twice."""
    head = await append_amounts(store, "counter:a", *range(1, 21))
    live = ProjectionRunner(store, Totals(), batch=4)
    async with live:
        assert await live.wait_until(head, WAIT)
        await ProjectionRunner(store, Totals(), batch=3).rebuild()
        head = await append_amounts(store, "counter:a", 100)
        assert await live.wait_until(head, WAIT)
        assert await store.projection_checkpoint("counter_totals") == head
    assert await totals(store) == {"counter:a": (310, 21)}


async def test_reset_projection_drops_its_tables_and_checkpoint(store: ProjectionHost) -> None:
    """After reset_projection the checkpoint is 0 and the DDL builds an empty table again."""
    head = await append_amounts(store, "counter:a", 1)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
    await store.reset_projection("counter_totals", Totals.drop)
    assert await store.projection_checkpoint("counter_totals") == 0
    await store.run_ddl(Totals.ddl)
    assert await totals(store) == {}


async def test_wait_until_returns_true_once_a_fresh_append_is_folded(
    store: ProjectionHost,
) -> None:
    """Read-your-writes: after an append, wait_until(its position) means the row is there."""
    async with ProjectionRunner(store, Totals()) as runner:
        await asyncio.sleep(0)
        position = await append_amounts(store, "counter:a", 41)
        assert await runner.wait_until(position, WAIT)
        assert await totals(store) == {"counter:a": (41, 1)}
        position = await append_amounts(store, "counter:a", 1)
        assert await runner.wait_until(position, WAIT)
        assert await totals(store) == {"counter:a": (42, 2)}


async def test_wait_until_returns_false_on_timeout_for_a_position_never_reached(
    store: ProjectionHost,
) -> None:
    """wait_until gives up with False when the checkpoint does not get there in time."""
    head = await append_amounts(store, "counter:a", 1)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
        assert not await runner.wait_until(head + 1000, 0.2)


async def test_two_runners_on_one_projection_never_double_apply(store: ProjectionHost) -> None:
    """Two runners racing over the same log: every increment is counted exactly once."""
    streams = [f"counter:r{i}" for i in range(4)]
    for stream in streams:
        await store.append(stream, [new_event(Incremented(amount=1))], NO_STREAM)
    one = ProjectionRunner(store, Totals(), batch=3)
    two = ProjectionRunner(store, Totals(), batch=2)
    async with one, two:
        for round_ in range(6):
            await asyncio.gather(
                *(append_amounts(store, s, round_ + 2, 1) for s in streams)
            )
        head = await store.head()
        assert await one.wait_until(head, WAIT)
        assert await two.wait_until(head, WAIT)
    expected_total = 1 + sum(r + 2 + 1 for r in range(6))
    assert await totals(store) == {s: (expected_total, 13) for s in streams}


async def test_restarted_runner_continues_from_its_checkpoint(store: ProjectionHost) -> None:
    """A new runner picks up at the stored checkpoint: nothing refolded, nothing missed."""
    head = await append_amounts(store, "counter:a", 1, 2)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
    head = await append_amounts(store, "counter:a", 3)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
    assert await totals(store) == {"counter:a": (6, 3)}


async def test_another_store_on_the_same_log_waits_for_a_projection_position(
    backend: tuple[str, str], event_types: EventTypes
) -> None:
    """Read-your-writes across processes: a second store (as a gateway in another process
    would hold) waits until the runner's checkpoint passes a position, woken by the
    projection's commit; a position never reached times out with False."""
    writer = await open_store(backend, event_types)
    reader = await open_store(backend, event_types) if backend[0] == "postgres" else writer
    try:
        runner = ProjectionRunner(writer, Totals())
        async with runner:
            result = await writer.append("counter:w", [new_event(Incremented(amount=3))], 0)
            assert await reader.wait_for_projection(Totals.name, result.position, timeout=10)
            assert await reader.projection_checkpoint(Totals.name) >= result.position
            assert not await reader.wait_for_projection(
                Totals.name, result.position + 10**12, timeout=0.3
            )
    finally:
        if reader is not writer:
            await reader.close()
        await writer.close()


class Renames:
    """The last name of each counter stream: a second projection to share a hub with."""

    name = "counter_names"
    ddl = ("CREATE TABLE IF NOT EXISTS counter_names (stream TEXT PRIMARY KEY, name TEXT)",)
    drop = ("DROP TABLE IF EXISTS counter_names",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            if event.type == "counter.renamed":
                name = msgspec.json.decode(event.data, type=Renamed).name
                await tx.execute("INSERT INTO counter_names (stream, name) VALUES ($1, $2)"
                                 " ON CONFLICT (stream) DO UPDATE SET name = excluded.name",
                                 event.stream, name)


class Typed:
    """Mixed into a projection: names the one type it folds, and notes every event type
    it is handed."""

    types: tuple[str, ...] = ()
    handed: set[str]

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        self.handed = getattr(self, "handed", set()) | {e.type for e in events}
        await super().apply(tx, events)  # type: ignore[misc]


class TypedTotals(Typed, Totals):
    types = ("counter.incremented",)


class TypedRenames(Typed, Renames):
    types = ("counter.renamed",)


async def names(store: ProjectionHost) -> dict[object, object]:
    return dict(await store.query("SELECT stream, name FROM counter_names"))


async def test_hub_folds_several_projections_from_one_read(store: ProjectionHost) -> None:
    """A hub of two projections folds each batch into both tables and moves both
    checkpoints; a read of the log serves them all."""
    await append_amounts(store, "counter:a", 1, 2)
    await store.append("counter:a", [new_event(Renamed(name="first"))], 2)
    head = await append_amounts(store, "counter:b", 5)
    async with ProjectionHub(store, [Totals(), Renames()], batch=2) as hub:
        assert await hub.wait_until(head, WAIT)
        assert await hub.wait_until(head, WAIT, name="counter_names")
    assert await totals(store) == {"counter:a": (3, 2), "counter:b": (5, 1)}
    assert await names(store) == {"counter:a": "first"}
    assert await store.projection_checkpoint("counter_totals") == head
    assert await store.projection_checkpoint("counter_names") == head


async def test_hub_catches_a_lagging_projection_up_without_refolding_the_others(
    store: ProjectionHost,
) -> None:
    """One projection at the head and one never run: the hub gives the new one every
    event and the other only what comes after its checkpoint."""
    head = await append_amounts(store, "counter:a", 1, 2, 3)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
    await store.append("counter:a", [new_event(Renamed(name="late"))], 3)
    head = await append_amounts(store, "counter:a", 4)
    async with ProjectionHub(store, [Totals(), Renames()], batch=2) as hub:
        assert await hub.wait_until(head, WAIT)
    assert await totals(store) == {"counter:a": (10, 4)}
    assert await names(store) == {"counter:a": "late"}


async def test_projections_tx_with_one_stale_checkpoint_writes_nothing(
    store: ProjectionHost,
) -> None:
    """When one checkpoint of a multi-projection transaction moved on, neither rows nor
    any checkpoint change."""
    await store.run_ddl(Totals.ddl)
    await store.run_ddl(Renames.ddl)
    async with store.projection_tx("counter_names", 0, 4):
        pass
    with pytest.raises(ConcurrencyError):
        async with store.projections_tx({"counter_totals": 0, "counter_names": 0}, 9) as tx:
            await tx.execute(UPSERT, "counter:a", 5)
    assert await store.projection_checkpoint("counter_totals") == 0
    assert await store.projection_checkpoint("counter_names") == 4
    assert await totals(store) == {}


async def test_a_batch_of_row_writes_commits_whole_or_not_at_all(store: ProjectionHost) -> None:
    """Whole-row writes and the checkpoints' moves commit together (on PostgreSQL as one
    statement): a stale checkpoint among them leaves every row and checkpoint as it was
    and says where the checkpoint stands; a put and a delete of the same key in one batch
    are applied in the order asked."""
    await store.run_ddl(Totals.ddl)
    await store.run_ddl(Renames.ddl)
    async with store.projections_tx({"counter_totals": 0, "counter_names": 0}, 2) as tx:
        await tx.put_rows(TOTALS, [{"stream": "counter:a", "total": 1, "events": 1},
                                   {"stream": "counter:b", "total": 2, "events": 1}])
    async with store.projection_tx("counter_names", 2, 5):
        pass
    with pytest.raises(ConcurrencyError) as caught:
        async with store.projections_tx({"counter_totals": 2, "counter_names": 2}, 9) as tx:
            await tx.put_rows(TOTALS, [{"stream": "counter:c", "total": 3, "events": 1}])
            await tx.delete_rows(TOTALS, [{"stream": "counter:a"}])
    assert caught.value.current == 5
    assert await totals(store) == {"counter:a": (1, 1), "counter:b": (2, 1)}
    assert await store.projection_checkpoint("counter_totals") == 2

    async with store.projections_tx({"counter_totals": 2, "counter_names": 5}, 9) as tx:
        await tx.put_rows(TOTALS, [{"stream": "counter:c", "total": 3, "events": 1}])
        await tx.delete_rows(TOTALS, [{"stream": "counter:a"}])
    assert await totals(store) == {"counter:b": (2, 1), "counter:c": (3, 1)}
    async with store.projections_tx({"counter_totals": 9}, 10) as tx:
        await tx.delete_rows(TOTALS, [{"stream": "counter:b"}])
        await tx.put_rows(TOTALS, [{"stream": "counter:b", "total": 7, "events": 2}])
    assert await totals(store) == {"counter:b": (7, 2), "counter:c": (3, 1)}
    assert [await store.projection_checkpoint(n) for n in ("counter_totals", "counter_names")
            ] == [10, 9]


class Tally(Totals):
    """Totals that also count, per hub, the batches it applied."""

    ddl = (*Totals.ddl, "CREATE TABLE IF NOT EXISTS tally (hub TEXT PRIMARY KEY, n BIGINT)")
    drop = (*Totals.drop, "DROP TABLE IF EXISTS tally")

    def __init__(self, hub: str) -> None:
        self.hub = hub

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        await super().apply(tx, events)
        await tx.execute("INSERT INTO tally (hub, n) VALUES ($1, 1)"
                         " ON CONFLICT (hub) DO UPDATE SET n = tally.n + 1", self.hub)


async def test_a_lingering_hub_folds_what_came_meanwhile_in_one_batch(
    store: ProjectionHost,
) -> None:
    """With ``linger``, a hub waits that long after a short batch before it reads again:
    ten appends made meanwhile are folded as one batch, and every one of them is folded."""
    first = await append_amounts(store, "counter:a", 1)
    async with ProjectionRunner(store, Tally("lingering"), linger=0.5) as runner:
        assert await runner.wait_until(first, WAIT)
        for amount in range(2, 12):
            head = await append_amounts(store, "counter:a", amount)
        assert await runner.wait_until(head, WAIT)
    assert await totals(store) == {"counter:a": (sum(range(1, 12)), 11)}
    assert await store.query("SELECT n FROM tally WHERE hub = 'lingering'") == [(2,)]


async def test_leading_hubs_fold_a_projection_in_one_process_at_a_time(
    backend: tuple[str, str], event_types: EventTypes
) -> None:
    """Two processes' hubs that lead: only one folds the projection while both run (the
    other stands by), and when the leader goes the other takes over and goes on."""
    one = await open_store(backend, event_types)
    two = await open_store(backend, event_types) if backend[0] == "postgres" else one
    try:
        first = ProjectionHub(one, [Tally("one")], lead=True)
        second = ProjectionHub(two, [Tally("two")], lead=True)
        async with first:
            head = await append_amounts(one, "counter:a", 1)
            assert await one.wait_for_projection("counter_totals", head, WAIT)  # it leads
            async with second:
                for amount in range(2, 11):
                    head = await append_amounts(one, "counter:a", amount)
                    await asyncio.sleep(0.01)
                assert await one.wait_for_projection("counter_totals", head, WAIT)
                if backend[0] == "postgres":
                    assert dict(await one.query("SELECT hub, n FROM tally")).keys() == {"one"}
                await first.shutdown()  # the leader goes: the one standing by goes on
                head = await append_amounts(one, "counter:a", 100)
                assert await two.wait_for_projection("counter_totals", head, WAIT)
        assert await totals(one) == {"counter:a": (155, 11)}
    finally:
        if two is not one:
            await two.close()
        await one.close()


async def test_a_batch_that_writes_nothing_moves_the_checkpoint_a_moment_later(
    store: ProjectionHost,
) -> None:
    """Events a projection ignores are folded at once in process, and their checkpoint
    move, deferred to save a transaction, still reaches the log within a moment."""
    head = await append_amounts(store, "counter:a", 1)
    async with ProjectionRunner(store, Totals()) as runner:
        assert await runner.wait_until(head, WAIT)
        ignored = await store.append("counter:a", [new_event(Renamed(name="n"))], 1)
        assert await runner.wait_until(ignored.position, WAIT)
        assert await store.wait_for_projection(Totals.name, ignored.position, WAIT)
    assert await store.projection_checkpoint(Totals.name) == ignored.position
    assert await totals(store) == {"counter:a": (1, 1)}


TOTALS = Table("counter_totals", (("stream", "text"), ("total", "bigint"), ("events", "bigint")))


class LoadedTotals(Totals):
    """Totals folded in Python from the committed rows each batch loads (a RowSet), or,
    with ``carry``, from the rows the batch before left (Carried) when they still stand
    where the transaction's do."""

    def __init__(self, carry: bool = False) -> None:
        self.carried: Carried[RowSet] | None = Carried() if carry else None
        self.loads = 0

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        rows = (self.carried and self.carried.take(tx.since)) or RowSet(TOTALS)
        mine = [e for e in events if e.type == "counter.incremented"]
        await rows.load(_Counted(tx, self), "stream", [e.stream for e in mine])
        for event in mine:
            row = rows.get(event.stream) or {"stream": event.stream, "total": 0, "events": 0}
            row["total"] += DECODE.decode(event.data).amount
            row["events"] += 1
            rows.put(row)
        await rows.flush(tx)
        if self.carried is not None:
            self.carried.keep(rows, events[-1].position, len(rows))


class _Counted:
    """A transaction's committed reads, counted for the projection that makes them."""

    def __init__(self, tx: SqlTx, projection: LoadedTotals) -> None:
        self.tx, self.projection = tx, projection

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        self.projection.loads += 1
        return await self.tx.committed_rows(table, column, values)


@pytest.mark.parametrize("carry", [False, True], ids=["loaded", "carried"])
async def test_rebuild_pipeline_reads_each_batch_after_the_one_before_committed(
    store: ProjectionHost, carry: bool
) -> None:
    """Rebuild folds a batch while the one before commits: a projection that reads its
    committed rows every batch still sees every earlier batch (the read waits for that
    commit, or the rows are carried), so no increment is lost."""
    for amount in range(1, 31):
        head = await append_amounts(store, f"counter:{amount % 3}", amount)
    projection = LoadedTotals(carry)
    assert await ProjectionRunner(store, projection, batch=2).rebuild() == head
    assert await totals(store) == {"counter:0": (165, 10), "counter:1": (145, 10),
                                   "counter:2": (155, 10)}
    assert await store.projection_checkpoint("counter_totals") == head
    if carry:  # each stream's row is read once, then carried from batch to batch
        assert projection.loads <= 3


async def test_carried_rows_are_used_only_where_they_stand(store: ProjectionHost) -> None:
    """A live runner and a rebuild racing, each carrying rows: a carried set is taken
    only by a transaction whose checkpoint is where the set was left, so the totals end
    exact whichever runner commits which batch."""
    head = await append_amounts(store, "counter:a", *range(1, 21))
    live = ProjectionRunner(store, LoadedTotals(carry=True), batch=4)
    async with live:
        assert await live.wait_until(head, WAIT)
        await ProjectionRunner(store, LoadedTotals(carry=True), batch=3).rebuild()
        head = await append_amounts(store, "counter:a", 100)
        assert await live.wait_until(head, WAIT)
    assert await totals(store) == {"counter:a": (310, 21)}


def test_carried_state_is_taken_once_and_only_at_its_position() -> None:
    carried: Carried[str] = Carried(limit=10)
    carried.keep("rows", 7, size=3)
    assert carried.take(6) is None  # elsewhere: dropped
    assert carried.take(7) is None  # ... and gone
    carried.keep("rows", 7, size=3)
    assert carried.take(None) is None  # a transaction that cannot say where it stands
    carried.keep("rows", 7, size=3)
    assert carried.take(7) == "rows"
    assert carried.take(7) is None
    carried.keep("too many", 9, size=11)  # past the limit: not kept
    assert carried.take(9) is None


async def test_hub_rebuilds_its_projections_from_one_read(store: ProjectionHost) -> None:
    """A hub's rebuild drops and refolds every projection of it, each batch read once for
    all: both tables equal the ones folded live, both checkpoints at the head."""
    await append_amounts(store, "counter:a", 1, 2)
    await store.append("counter:a", [new_event(Renamed(name="first"))], 2)
    head = await append_amounts(store, "counter:b", 5)
    async with ProjectionHub(store, [Totals(), Renames()]) as hub:
        assert await hub.wait_until(head, WAIT)
    folded = (await totals(store), await names(store))
    async with store.projection_tx("counter_names", head, head) as tx:
        await tx.execute("UPDATE counter_names SET name = 'spoiled'")
    assert await ProjectionHub(store, [Totals(), Renames()], batch=2).rebuild() == head
    assert (await totals(store), await names(store)) == folded
    assert await store.projection_checkpoint("counter_totals") == head
    assert await store.projection_checkpoint("counter_names") == head


async def test_a_rebuild_of_typed_projections_reads_only_their_types(
    store: ProjectionHost,
) -> None:
    """Projections that name their types are rebuilt from those events alone: the same
    tables as folded live from every event, and the checkpoints reach the head even when
    the log ends with a long run of events neither folds (windows with none in them)."""
    for i in range(1, 31):
        await append_amounts(store, "counter:a", i)
        await store.append("counter:b", [new_event(Renamed(name=f"b{i}"))], ANY_VERSION)
    for _ in range(40):  # more than a window's worth (4 batches of 3) of neither type
        head = (await store.append("counter:c", [new_event(Noted(text="x"))],
                                   ANY_VERSION)).position
    async with ProjectionHub(store, [Totals(), Renames()]) as hub:
        assert await hub.wait_until(head, WAIT)
    folded = (await totals(store), await names(store))
    assert folded == ({"counter:a": (465, 30)}, {"counter:b": "b30"})

    both = [TypedTotals(), TypedRenames()]
    assert await ProjectionHub(store, both, batch=3).rebuild() == head
    assert (await totals(store), await names(store)) == folded
    assert both[0].handed | both[1].handed == {"counter.incremented", "counter.renamed"}
    one = TypedTotals()
    assert await ProjectionRunner(store, one, batch=3).rebuild() == head
    assert one.handed == {"counter.incremented"} and await totals(store) == folded[0]
    assert await store.projection_checkpoint("counter_totals") == head


@pytest.mark.parametrize("typed", [False, True], ids=["every event", "typed"])
async def test_hub_rebuild_beside_a_live_runner_of_one_of_them_ends_exact(
    store: ProjectionHost, typed: bool,
) -> None:
    """A live runner folds one of the hub's projections, with events still coming, while
    the hub rebuilds both: the two take turns at that checkpoint (the one that loses a
    batch goes on from the other's point, the hub's other projection alone then), and
    nothing is counted twice or lost; also when the hub reads only their types."""
    for i in range(1, 201):
        await append_amounts(store, "counter:a", 1)
        head = (await store.append("counter:a", [new_event(Renamed(name=f"n{i}"))],
                                   ANY_VERSION)).position
    live = ProjectionRunner(store, Totals(), batch=4)
    async with live:
        assert await live.wait_until(head, WAIT)
        appending = asyncio.create_task(append_one_by_one(store, "counter:b", 2, 100))
        rebuilt: list[Projection] = [TypedTotals(), TypedRenames()] if typed else \
            [Totals(), Renames()]
        await ProjectionHub(store, rebuilt, batch=3).rebuild()
        head = await appending
        assert await live.wait_until(head, WAIT)
    assert await totals(store) == {"counter:a": (200, 200), "counter:b": (200, 100)}
    assert await names(store) == {"counter:a": "n200"}


class PerStreamTotals(LoadedTotals):
    """Carried totals that say each row is one stream's (``per_stream``): a rebuild on
    PostgreSQL may fold them in several parts of the log's streams side by side."""

    per_stream = True

    def __init__(self) -> None:
        super().__init__(carry=True)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_rebuild_in_parts_beside_a_live_runner_ends_exact(
    store: ProjectionHost, workers: int,
) -> None:
    """Per-stream totals rebuilt with one worker or two (one process per part of the
    streams on PostgreSQL; SQLite folds them in one), beside a projection that is not
    per stream and a live runner of the totals with events still coming: the tables are
    the ones a fold from the start gives, and both checkpoints reach the head."""
    for i in range(1, 121):
        await append_amounts(store, f"counter:s{i % 7}", i)
        await store.append(f"counter:s{i % 5}", [new_event(Renamed(name=f"n{i}"))],
                           ANY_VERSION)
    live = ProjectionRunner(store, PerStreamTotals(), batch=8)
    async with live:
        assert await live.wait_until(await store.head(), WAIT)
        appending = asyncio.create_task(append_one_by_one(store, "counter:late", 3, 40))
        hub = ProjectionHub(store, [PerStreamTotals(), Renames()], batch=16)
        reached = await hub.rebuild(workers=workers)
        head = await appending
        assert await live.wait_until(head, WAIT)
    expected = {f"counter:s{k}": (sum(i for i in range(1, 121) if i % 7 == k),
                                  len([i for i in range(1, 121) if i % 7 == k]))
                for k in range(7)}
    assert await totals(store) == {**expected, "counter:late": (120, 40)}
    last_names = {k: max(i for i in range(1, 121) if i % 5 == k) for k in range(5)}
    assert await names(store) == {f"counter:s{k}": f"n{i}" for k, i in last_names.items()}
    assert await store.projection_checkpoint("counter_names") == reached > 0
    assert await store.projection_checkpoint("counter_totals") == head
