"""Whole-row writes on every backend: ``put_rows`` inserts or replaces rows by key,
``delete_rows`` removes them, ``committed_rows`` reads what earlier transactions
committed, and a ``RowSet`` folds a batch in memory and writes each touched row once."""

from __future__ import annotations

import pytest

from store.projections import ProjectionHost
from store.rowset import RowSet
from store.tables import Table

PAIRS = Table("row_pairs", (("a", "text"), ("b", "bigint"), ("note", "text"),
                            ("n", "integer")), key=2)
DDL = ("CREATE TABLE IF NOT EXISTS row_pairs (a TEXT NOT NULL, b BIGINT NOT NULL,"
       " note TEXT, n INTEGER NOT NULL, PRIMARY KEY (a, b))",)


def pair(a: str, b: int, note: str | None, n: int) -> dict[str, object]:
    return {"a": a, "b": b, "note": note, "n": n}


async def rows(store: ProjectionHost) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await store.query(
        "SELECT a, b, note, n FROM row_pairs ORDER BY a, b")]


async def test_put_replaces_by_key_and_delete_removes_by_key(store: ProjectionHost) -> None:
    await store.run_ddl(DDL)
    async with store.projection_tx("pairs", 0, 1) as tx:
        await tx.put_rows(PAIRS, [pair("x", 1, "one", 1), pair("x", 2, None, 2),
                                  pair("y", 1, "y", 3)])
    async with store.projection_tx("pairs", 1, 2) as tx:
        await tx.put_rows(PAIRS, [pair("x", 2, "two", 20), pair("z", 9, "new", 4)])
        await tx.delete_rows(PAIRS, [{"a": "y", "b": 1}, {"a": "nothing", "b": 0}])
    assert await rows(store) == [("x", 1, "one", 1), ("x", 2, "two", 20), ("z", 9, "new", 4)]
    assert await store.projection_checkpoint("pairs") == 2


async def test_committed_rows_are_what_was_committed_not_what_is_queued(
    store: ProjectionHost,
) -> None:
    await store.run_ddl(DDL)
    async with store.projection_tx("pairs", 0, 1) as tx:
        await tx.put_rows(PAIRS, [pair("x", 1, "one", 1), pair("x", 2, "two", 2),
                                  pair("y", 1, "y", 3)])
    async with store.projection_tx("pairs", 1, 2) as tx:
        await tx.put_rows(PAIRS, [pair("x", 3, "queued", 3)])
        found = await tx.committed_rows(PAIRS, "a", ["x", "absent"])
        assert sorted(found) == [("x", 1, "one", 1), ("x", 2, "two", 2)]
        assert await tx.committed_rows(PAIRS, "b", []) == []
        assert sorted(await tx.committed_rows(PAIRS, "b", [1])) == [
            ("x", 1, "one", 1), ("y", 1, "y", 3)]


async def test_a_failed_transaction_writes_no_row(store: ProjectionHost) -> None:
    await store.run_ddl(DDL)
    with pytest.raises(RuntimeError):
        async with store.projection_tx("pairs", 0, 1) as tx:
            await tx.put_rows(PAIRS, [pair("x", 1, "one", 1)])
            raise RuntimeError("the fold failed")
    assert await rows(store) == []
    assert await store.projection_checkpoint("pairs") == 0


async def test_a_row_set_writes_each_touched_row_once_as_the_batch_left_it(
    store: ProjectionHost,
) -> None:
    await store.run_ddl(DDL)
    async with store.projection_tx("pairs", 0, 1) as tx:
        await tx.put_rows(PAIRS, [pair("x", 1, "one", 1), pair("y", 1, "y", 1)])
    batch = RowSet(PAIRS)
    async with store.projection_tx("pairs", 1, 2) as tx:
        assert [r["b"] for r in await batch.load(tx, "a", ["x", "y", "x"])] == [1, 1]
        assert await batch.load(tx, "a", ["x"]) == []  # asked before: not read again
        row = batch.get("x", 1)
        assert row is not None and row["note"] == "one"
        for _ in range(10):  # ten changes of one row: one row written
            row["n"] += 1
            batch.changed(row)
        batch.put({"a": "z", "b": 5, "note": None, "n": 0})
        batch.put({"a": "z", "b": 5, "note": "last", "n": 7})
        batch.delete("y", 1)
        batch.put({"a": "w", "b": 1, "note": "gone", "n": 0})
        batch.delete("w", 1)
        await batch.flush(tx)
    assert await rows(store) == [("x", 1, "one", 11), ("z", 5, "last", 7)]


async def test_a_row_born_and_gone_within_the_batch_writes_nothing(
    store: ProjectionHost,
) -> None:
    """A fresh key put and deleted in one batch queues no statement: the transaction has
    nothing to commit (and defers its checkpoint move)."""
    await store.run_ddl(DDL)
    batch = RowSet(PAIRS)
    moving = store.projections_tx({"pairs": 0}, 1, defer_empty=True)
    async with moving as tx:
        batch.put({"a": "t", "b": 1, "note": None, "n": 0}, new=True)
        batch.delete("t", 1)
        await batch.flush(tx)
    assert moving.deferred and await rows(store) == []
