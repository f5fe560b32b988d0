"""The webhook deliverer's writer, on every backend: a batch of the log that no
subscription wanted commits nothing, and its checkpoint move rides on the next write or
on a flush; a writer whose checkpoint another moved cannot write."""

from __future__ import annotations

import pytest

from store.errors import ConcurrencyError
from store.projections import ProjectionHost
from webhooks import tables
from webhooks.outbox import Writer

#: a statement that writes (nothing is old enough to prune)
PRUNE_NOTHING = (tables.PRUNE_ATTEMPTS, (0.0,))


async def committed(store: ProjectionHost) -> int:
    return await store.projection_checkpoint(tables.CHECKPOINT)


async def test_batches_without_rows_commit_nothing_until_a_write_or_a_flush(
    store: ProjectionHost,
) -> None:
    await store.run_ddl(tables.DDL)
    writer = Writer(store, 0)
    await writer.write([], 10)
    assert (writer.checkpoint, writer.fanned, await committed(store)) == (0, 10, 0)
    await writer.write([PRUNE_NOTHING])  # another write carries the move along
    assert (writer.checkpoint, await committed(store)) == (10, 10)
    await writer.write([], 20)
    await writer.write([], 30)
    assert await committed(store) == 10
    await writer.flush()
    assert (writer.checkpoint, await committed(store)) == (30, 30)
    await writer.flush()  # nothing left behind: nothing to do
    assert await committed(store) == 30
    await writer.write([PRUNE_NOTHING], 40)  # a batch with rows commits its move at once
    assert await committed(store) == 40


async def test_a_replaced_writer_cannot_write_or_flush(store: ProjectionHost) -> None:
    await store.run_ddl(tables.DDL)
    first, second = Writer(store, 0), Writer(store, 0)
    await second.write([PRUNE_NOTHING], 5)
    with pytest.raises(ConcurrencyError):
        await first.write([PRUNE_NOTHING], 7)
    await first.write([], 9)
    with pytest.raises(ConcurrencyError):
        await first.flush()
    assert await committed(store) == 5
