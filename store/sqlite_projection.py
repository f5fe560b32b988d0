"""Projection transactions on SQLite: the projections' writes and their checkpoints' moves
in one transaction, run on the store's writer thread."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from store.errors import ConcurrencyError
from store.tables import SQLITE_IN_CHUNK, Table, sqlite_delete, sqlite_put, sqlite_select

if TYPE_CHECKING:
    from store.sqlite import SqliteEventStore

_PLACEHOLDER = re.compile(r"\$(\d+)")
#: a statement's parameters: positional, or named (whole-row writes)
_Params = tuple[object, ...] | Mapping[str, Any]


@functools.lru_cache(maxsize=1024)
def to_sqlite_params(sql: str) -> str:
    """Rewrite PostgreSQL ``$1`` placeholders as SQLite's numbered ``?1`` (statements are
    few and repeated, so each is rewritten once)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class SqliteProjectionTx:
    """One transaction of one or more projections, with its writes deferred.

    ``execute`` only queues a statement; the transaction (BEGIN IMMEDIATE, the checkpoints'
    check, the queued statements, the checkpoints' move, COMMIT) runs as one job on the
    writer thread when the block ends, so a batch costs one thread hop and holds the
    writer only while it really writes. A ``fetch`` (which must see the transaction's own
    writes) opens the transaction early and flushes the queue; from then on the writer is
    held until the end, as before. Jobs go to the single writer thread in submission
    order, so the ROLLBACK or the COMMIT always runs after every statement, even when the
    awaiting task is cancelled.
    """

    def __init__(self, store: SqliteEventStore, expected: Mapping[str, int], new: int, *,
                 defer_empty: bool = False) -> None:
        self._store = store
        self._expected = dict(expected)
        self._new = new
        self._defer_empty = defer_empty
        #: true once the block ended without a write, so nothing was committed
        self.deferred = False
        #: where the rows stand: the one projection's expected checkpoint
        self.since = next(iter(expected.values())) if len(expected) == 1 else None
        self._pending: list[tuple[str, _Params]] = []
        self._open = False

    async def __aenter__(self) -> SqliteProjectionTx:
        return self

    def _begin(self) -> None:
        conn = self._store._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name, expected in self._expected.items():
                row = conn.execute(
                    "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
                ).fetchone()
                current = int(row[0]) if row else 0
                if current != expected:
                    raise ConcurrencyError(f"projection:{name}", expected, current)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _flush(self, pending: list[tuple[str, _Params]]) -> None:
        """Run the queued statements, each run of one statement as one executemany."""
        conn = self._store._writer_conn
        start = 0
        while start < len(pending):
            statement = pending[start][0]
            end = start + 1
            while end < len(pending) and pending[end][0] == statement:
                end += 1
            if end - start == 1:
                conn.execute(statement, pending[start][1])
            else:
                conn.executemany(statement, [args for _, args in pending[start:end]])
            start = end

    def _session(self, open_: bool) -> None:
        """On the writer thread: appends wait while this transaction spans several jobs."""
        appends = self._store._appends
        if appends is not None:
            appends.session_open = open_

    def _commit(self) -> None:
        conn = self._store._writer_conn
        self._session(False)
        try:
            conn.executemany(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                [(name, self._new) for name in self._expected],
            )
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _whole(self, pending: list[tuple[str, _Params]]) -> None:
        """BEGIN, the queued statements and COMMIT in one job (rolled back on error)."""
        self._begin()
        try:
            self._flush(pending)
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _rollback(self) -> None:
        conn = self._store._writer_conn
        self._session(False)
        if conn.in_transaction:  # some errors already rolled SQLite back
            conn.execute("ROLLBACK")

    def _take(self) -> list[tuple[str, _Params]]:
        pending, self._pending = self._pending, []
        return pending

    async def __aexit__(self, *exc: object) -> bool | None:
        store = self._store
        if not self._open:
            if exc[0] is not None:
                return None  # nothing ran yet: nothing to undo
            pending = self._take()
            if not pending and self._defer_empty:
                self.deferred = True
                return None
            async with store._write_lock:
                await store._run(store._writer, lambda: self._whole(pending))
            store._projections_moved(self._expected, self._new)
            return None
        try:
            if exc[0] is None:
                pending = self._take()
                def finish() -> None:
                    self._flush(pending)
                    self._commit()

                await store._run(store._writer, finish)
                store._projections_moved(self._expected, self._new)
            else:
                loop = asyncio.get_running_loop()
                # submitted now, so it runs next on the writer thread even if we are cancelled
                await asyncio.shield(loop.run_in_executor(store._writer, self._rollback))
        finally:
            store._write_lock.release()
            store._kick_appends()
        return None

    async def execute(self, sql: str, *args: object) -> None:
        self._pending.append((to_sqlite_params(sql), args))

    async def put_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        sql = sqlite_put(table)
        self._pending += [(sql, dict(row)) for row in rows]  # as they are now

    async def delete_rows(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        sql = sqlite_delete(table)
        self._pending += [(sql, dict(key)) for key in keys]

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        """Read on the store's reader connection (a file: WAL shows it the last commit);
        a ``:memory:`` store has one connection, whose reads see a transaction this tx
        has opened with ``fetch``."""
        rows: list[tuple[object, ...]] = []
        values = list(values)
        for i in range(0, len(values), SQLITE_IN_CHUNK):
            chunk = tuple(values[i:i + SQLITE_IN_CHUNK])
            rows += await self._store._read(sqlite_select(table, column, len(chunk)), chunk)
        return rows

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        store = self._store
        conn = store._writer_conn
        statement = to_sqlite_params(sql)
        pending = self._take()
        def more() -> list[tuple[object, ...]]:
            self._flush(pending)
            return conn.execute(statement, args).fetchall()

        if self._open:
            return await store._run(store._writer, more)
        await store._write_lock.acquire()

        def first() -> list[tuple[object, ...]]:
            self._begin()
            self._session(True)
            return more()

        try:
            rows = await store._run(store._writer, first)
        except BaseException:
            loop = asyncio.get_running_loop()
            await asyncio.shield(loop.run_in_executor(store._writer, self._rollback))
            store._write_lock.release()
            store._kick_appends()
            raise
        self._open = True
        return rows
