"""A batch's rows of one projection table, folded in memory and each written once.

A projection that folds event by event in SQL pays a statement per event; one that uses
a ``RowSet`` loads the committed rows the batch touches (one query), changes them in
memory event by event, and writes each touched row once when the batch ends (one
statement on PostgreSQL): a stream's ten events in one batch are one row written. The
fold reads the rows as dicts (column -> value). Only the projection's own hub writes its
tables, so the committed rows are the rows as of its checkpoint; a runner that raced it
loses at the checkpoint's compare-and-swap and folds the batch again from fresh rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from store.protocol import SqlTx
from store.tables import Table

Row = dict[str, Any]
Key = tuple[Any, ...]


class RowSet:
    """The rows of ``table`` one batch touches: loaded, changed, then ``flush``-ed."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._names = table.names
        self._keys = self._names[:table.key]
        #: key -> the row as it stands in this batch (None: deleted)
        self.rows: dict[Key, Row | None] = {}
        self._dirty: dict[Key, None] = {}  # in the order first touched
        #: keys no committed row has (put with ``new``): deleting them writes nothing
        self._new: set[Key] = set()
        self._loaded: dict[str, set[Any]] = {}

    def key(self, row: Row) -> Key:
        keys = self._keys
        if len(keys) == 1:
            return (row[keys[0]],)
        return tuple(row[k] for k in keys)

    async def load(self, tx: SqlTx, column: str, values: Iterable[Any]) -> list[Row]:
        """Make the committed rows whose ``column`` is one of ``values`` known (those not
        asked for before in this batch); a row this batch has changed keeps its change.
        Returns the rows newly loaded."""
        asked = self._loaded.setdefault(column, set())
        todo = [v for v in dict.fromkeys(values) if v not in asked]
        if not todo:
            return []
        asked.update(todo)
        loaded = []
        for values_ in await tx.committed_rows(self.table, column, todo):
            row = dict(zip(self._names, values_, strict=True))
            key = self.key(row)
            if key not in self.rows:
                self.rows[key] = row
                loaded.append(row)
        return loaded

    def get(self, *key: Any) -> Row | None:
        """The row with ``key`` as this batch has it (None: unknown or deleted); rows not
        written in this batch must have been loaded first."""
        return self.rows.get(key)

    def put(self, row: Row, *, new: bool = False) -> None:
        """Set the whole row (every column) as it must be written; ``new`` when no
        committed row can have its key (a fresh id), so that a delete in the same batch
        leaves nothing to write."""
        key = self.key(row)
        self.rows[key] = row
        self._dirty[key] = None
        if new:
            self._new.add(key)

    def changed(self, row: Row) -> None:
        """Note that ``row`` (one of this set's, changed in place) must be written."""
        self._dirty[self.key(row)] = None

    def delete(self, *key: Any) -> None:
        self.rows[key] = None
        if key in self._new:  # born and gone within the batch
            self._dirty.pop(key, None)
        else:
            self._dirty[key] = None

    async def flush(self, tx: SqlTx) -> None:
        """Queue the batch's writes: each changed row once, each deleted key once."""
        puts: list[Row] = []
        deletes: list[Row] = []
        keys = self._keys
        for key in self._dirty:
            row = self.rows[key]
            if row is None:
                deletes.append(dict(zip(keys, key, strict=True)))
            else:
                puts.append(row)
        self._dirty.clear()
        self._new.clear()
        await tx.delete_rows(self.table, deletes)
        await tx.put_rows(self.table, puts)
