"""A batch's rows of one projection table, folded in memory and each written once.

A projection that folds event by event in SQL pays a statement per event; one that uses
a ``RowSet`` loads the committed rows the batch touches (one query), changes them in
memory event by event, and writes each touched row once when the batch ends (one
statement on PostgreSQL): a stream's ten events in one batch are one row written. The
fold reads the rows as dicts (column -> value). Only the projection's own hub writes its
tables, so the committed rows are the rows as of its checkpoint; a runner that raced it
loses at the checkpoint's compare-and-swap and folds the batch again from fresh rows.

A ``RowSet`` (or whatever a projection folds a batch into) may also outlive its batch:
``Carried`` hands it to the next batch when that batch's rows stand where this one left
them (``SqlTx.since``), so rows a batch just wrote are not read back by the next one.
The rows of a table as of a log position are a function of the log alone (only the
projection writes its tables, folding deterministically), so a carried set is right
whenever its position is the transaction's, whichever runner committed up to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar

from store.protocol import SqlTx
from store.tables import Table

Row = dict[str, Any]
Key = tuple[Any, ...]
S = TypeVar("S")


class CommittedReads(Protocol):
    """What ``RowSet.load`` needs of a transaction (``SqlTx.committed_rows``)."""

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        ...


class RowSet:
    """The rows of ``table`` one batch touches: loaded, changed, then ``flush``-ed."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._names = table.names
        self._keys = self._names[:table.key]
        self._key = itemgetter(*self._keys)  # a tuple when the key has several columns
        #: key -> the row as it stands in this batch (None: deleted)
        self.rows: dict[Key, Row | None] = {}
        self._dirty: dict[Key, None] = {}  # in the order first touched
        #: keys no committed row has (put with ``new``): deleting them writes nothing
        self._new: set[Key] = set()
        self._loaded: dict[str, set[Any]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, row: Row) -> Key:
        key = self._key(row)
        return key if len(self._keys) > 1 else (key,)

    async def load(self, tx: CommittedReads, column: str, values: Iterable[Any]) -> list[Row]:
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

    def known(self, column: str, values: Iterable[Any]) -> None:
        """Note that every row whose ``column`` is one of ``values`` is in the set already
        (as for a fresh id, which no committed row has): ``load`` will not ask for them."""
        self._loaded.setdefault(column, set()).update(values)

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

    def changed_key(self, *key: Any) -> None:
        """``changed`` of the row with ``key``, for a fold that has the key at hand."""
        self._dirty[key] = None

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


class Carried(Generic[S]):
    """What a projection's last batch left in memory, for its next batch to go on from.

    ``take(tx.since)`` returns it (once) when it stands where the transaction's rows do,
    else None: the batch then starts afresh from the committed rows. ``keep`` stores a
    batch's state as of the position of the batch's last event, unless ``size`` passes
    ``limit`` (memory stays bounded: the next batch starts afresh instead). A batch that
    fails never calls ``keep``, and a transaction rolled back leaves its checkpoint
    behind the kept position, so neither is carried.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._state: S | None = None
        self._at: int | None = None

    def take(self, since: int | None) -> S | None:
        state, at = self._state, self._at
        self._state = self._at = None
        return state if since is not None and at == since else None

    def keep(self, state: S, at: int, size: int) -> None:
        if size <= self.limit:
            self._state, self._at = state, at
