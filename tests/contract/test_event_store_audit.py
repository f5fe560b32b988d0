"""The EventStore contract, continued: the reads the replay tool audits the log with
(events by correlation id, causation ids the log does not explain) and, on SQLite, a
follower reading a file another store writes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from schemas import NewEvent
from store.errors import StoreError
from store.projections import ProjectionHost
from store.protocol import NO_STREAM
from store.registry import EventTypes
from store.sqlite import SqliteEventStore
from tests.support.events import Incremented, new_event

WAIT = 10.0


def inc(amount: int, **meta: object) -> NewEvent:
    return new_event(Incremented(amount=amount), **meta)


async def test_read_correlated_returns_each_requests_events_in_position_order(
    store: ProjectionHost,
) -> None:
    """Events of the asked correlation ids, across streams, in log order; others not."""
    await store.append("counter:a", [inc(1, correlation_id="req-1")], NO_STREAM)
    await store.append("counter:b", [inc(2, correlation_id="req-2")], NO_STREAM)
    await store.append("counter:a", [inc(3, correlation_id="req-1"),
                                     inc(4, correlation_id="timer:t")], 1)
    await store.append("counter:c", [inc(5)], NO_STREAM)
    got = await store.read_correlated(["req-1", "timer:t", "req-1"])
    assert [(e.stream, e.version) for e in got] == [
        ("counter:a", 1), ("counter:a", 2), ("counter:a", 3)]
    assert [e.position for e in got] == sorted(e.position for e in got)
    assert await store.read_correlated(["req-none"]) == []


async def test_causes_explained_by_an_earlier_event_or_by_the_recorded_append_cause(
    store: ProjectionHost,
) -> None:
    """A reaction names an earlier event; a command's events name the command, which the
    append recorded as its cause; events without causation need no explaining."""
    first = await store.append("counter:a", [inc(1)], NO_STREAM)
    [cause] = await store.read_stream("counter:a")
    await store.append("counter:b", [inc(2, causation_id=str(cause.event_id))], NO_STREAM,
                       cause=str(cause.event_id))
    await store.append("counter:c", [inc(3, causation_id="cmd-1"),
                                     inc(4, causation_id="cmd-1")], NO_STREAM, cause="cmd-1")
    await store.append("counter:a", [inc(5, causation_id=str(cause.event_id))], 1)
    assert first.version == 1
    assert await store.unexplained_causes() == []


async def test_causes_the_log_does_not_explain_are_listed_in_position_order(
    store: ProjectionHost,
) -> None:
    """An id that names no event and no recorded cause; a cause recorded for another
    stream; a cause event that comes later in the log: each is listed, nothing else."""
    await store.append("counter:a", [inc(1, causation_id=str(uuid.uuid4()))], NO_STREAM)
    await store.append("counter:b", [inc(2, causation_id="cmd-x")], NO_STREAM, cause="cmd-x")
    await store.append("counter:c", [inc(3, causation_id="cmd-x")], NO_STREAM)
    later = uuid.uuid4()
    await store.append("counter:d", [inc(4, causation_id=str(later))], NO_STREAM)
    await store.append("counter:e", [new_event(Incremented(amount=5), event_id=later)],
                       NO_STREAM)
    await store.append("counter:f", [inc(6, causation_id="not-a-uuid")], NO_STREAM)
    got = await store.unexplained_causes()
    assert [e.stream for e in got] == ["counter:a", "counter:c", "counter:d", "counter:f"]
    assert [e.stream for e in await store.unexplained_causes(limit=2)] == [
        "counter:a", "counter:c"]


async def test_a_sqlite_follower_reads_and_follows_what_another_store_writes(
    tmp_path: Path, event_types: EventTypes,
) -> None:
    """The writer's events after the follower opened are read and followed from the file
    (no in-memory tail of its own stands in the way); a follower never appends."""
    path = tmp_path / "log.sqlite"
    writer = await SqliteEventStore.open(path, event_types)
    follower = await SqliteEventStore.open(path, event_types, follower=True)
    try:
        await writer.append("counter:a", [inc(1)], NO_STREAM)
        batches = follower.subscribe(0)
        assert [e.version for e in await anext(batches)] == [1]
        await writer.append("counter:a", [inc(2)], 1)
        async with asyncio.timeout(WAIT):
            assert [e.version for e in await anext(batches)] == [2]
        assert [e.version for e in await follower.read_all(0)] == [1, 2]
        await batches.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StoreError):
            await follower.append("counter:b", [inc(3)], NO_STREAM)
    finally:
        await follower.close()
        await writer.close()


async def test_a_sqlite_follower_waits_for_a_projection_another_process_folds(
    tmp_path: Path, event_types: EventTypes,
) -> None:
    """wait_for_projection on a follower sees checkpoints the writer moves."""
    path = tmp_path / "log.sqlite"
    writer = await SqliteEventStore.open(path, event_types)
    follower = await SqliteEventStore.open(path, event_types, follower=True)
    try:
        waiting = asyncio.create_task(follower.wait_for_projection("p", 5, timeout=WAIT))
        async with writer.projection_tx("p", 0, 5):
            pass
        assert await waiting
        assert not await follower.wait_for_projection("p", 6, timeout=0.3)
    finally:
        await follower.close()
        await writer.close()
