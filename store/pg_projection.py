"""Projection transactions on PostgreSQL: the projections' writes and their checkpoints'
moves committed together; the listeners are told after the commit (store.pg_notify).

Readers of the log only see below the oldest open writing transaction in the cluster
(store/postgres.py), so every write transaction that stays open holds every reader back.
A projection transaction therefore writes as late and as briefly as it can: ``execute``
only queues a statement, and the block's end sends BEGIN, the queued statements (each run
of one statement as one pipelined ``executemany``), the checkpoint move and COMMIT back to
back. Each checkpoint move is conditional (``position = expected``): a runner that is
behind another (a rebuild racing the live folder) finds out there, and its writes are
rolled back. (It used to read the checkpoints first as well, to find out before writing:
one more trip in every commit, for a case that only a rebuild meets.) A deadlock between
two such runners ends the loser's transaction the same way (ConcurrencyError: the runner
re-reads the checkpoints and follows on). A ``fetch`` (which must see the transaction's
own writes) opens the transaction early and flushes the queue.

A batch whose writes are all whole rows (``put_rows``/``delete_rows``, each table written
once, or put and deleted on keys apart) needs no transaction block at all: its writes and
the checkpoints' moves go as the data-modifying parts of one statement, which commits on
its own (one trip where BEGIN, each write, the move and COMMIT took one each). A
checkpoint moved by another runner makes the statement raise (``orrery_checkpoints_moved``,
migration 007), which undoes its writes as a rollback would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
import structlog

from store.errors import ConcurrencyError
from store.pg_common import mapped
from store.pg_notify import Notifier
from store.pg_statistics import Statistics
from store.tables import Table, pg_delete, pg_put, pg_select

#: move each checkpoint that is where the runner expects it; fewer rows back than names:
#: another runner moved one first (the listeners hear of the move after the commit, from
#: store.pg_notify: a NOTIFY in here would queue every notifying commit behind this one)
_MOVE_CHECKPOINTS = (
    "UPDATE projection_checkpoints AS c SET position = $2"
    " FROM unnest($1::text[], $3::bigint[]) AS m(name, expected)"
    " WHERE c.name = m.name AND c.position = m.expected RETURNING c.name"
)
#: the same, for a transaction whose commit need not wait for its WAL to reach the disk
#: (set before COMMIT, which is when it counts: no extra trip)
_MOVE_CHECKPOINTS_LAZY = (
    f"WITH moved AS ({_MOVE_CHECKPOINTS})"
    " SELECT name, set_config('synchronous_commit', 'off', true) FROM moved"
)
_ENSURE_CHECKPOINTS = ("INSERT INTO projection_checkpoints (name, position)"
                       " SELECT unnest($1::text[]), 0 ON CONFLICT (name) DO NOTHING")
_CHECKPOINTS = "SELECT name, position FROM projection_checkpoints WHERE name = ANY($1::text[])"
#: what orrery_checkpoints_moved raises with
_MOVED_ELSEWHERE = "OR409"

log = structlog.get_logger(__name__)
_JSON = msgspec.json.Encoder()


def _shifted(sql: str, by: int) -> str:
    """``sql`` with each placeholder ``$k`` renumbered ``$(k + by)``."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql)


def _keys(table: Table, rows: Sequence[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """The keys of ``rows`` (``table``'s key columns)."""
    key = table.names[:table.key]
    return {tuple(r[c] for c in key) for r in rows}


class PgProjectionTx:
    """The transaction of projections_tx; the object is also the SqlTx ``apply`` writes to."""

    def __init__(self, pool: Any, expected: Mapping[str, int], new: int,
                 timeout: float, *, defer_empty: bool = False,
                 notifier: Notifier | None = None, lazy: bool = False,
                 statistics: Statistics | None = None) -> None:
        self._pool, self._timeout = pool, timeout
        self._statistics = statistics
        #: commit without waiting for the WAL flush: for rows that are the log's fold and
        #: nothing else. A crash that loses the commit loses the checkpoint move with it,
        #: and the events are folded again; a later synchronous commit flushes this one
        #: too (the WAL is written in order)
        self._lazy = lazy
        self._notifier = notifier
        self._names = list(expected)
        self._expected, self._new = dict(expected), new
        self._defer_empty = defer_empty
        #: true once the block ended without a write, so nothing was committed
        self.deferred = False
        #: where the rows stand: the one projection's expected checkpoint
        self.since = next(iter(expected.values())) if len(expected) == 1 else None
        self._conn: Any = None
        self._tx: Any = None
        self._pending: list[tuple[str, tuple[object, ...]]] = []
        #: the queued whole-row writes (kind, table, rows), and whether they are all that
        #: is queued (no statement of another sort)
        self._rows: list[tuple[str, Table, Sequence[Mapping[str, Any]]]] = []
        self._rows_only = True

    async def __aenter__(self) -> PgProjectionTx:
        return self

    async def execute(self, sql: str, *args: object) -> None:
        self._pending.append((sql, args))
        self._rows_only = False

    async def put_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._pending.append((pg_put(table), (_JSON.encode(rows),)))
            self._rows.append(("put", table, rows))

    async def delete_rows(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        if keys:
            self._pending.append((pg_delete(table), (_JSON.encode(keys),)))
            self._rows.append(("delete", table, keys))

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        if not values:
            return []
        with mapped():
            rows = await self._pool.fetch(pg_select(table, column), list(values),
                                          timeout=self._timeout)
        return [tuple(r) for r in rows]

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        await self._open()
        await self._flush()
        with mapped():
            rows = await self._conn.fetch(sql, *args, timeout=self._timeout)
        return [tuple(r) for r in rows]

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self._conn is not None:
                await self._release(commit=False)
            return
        if self._conn is None and not self._pending and self._defer_empty:
            self.deferred = True
            return
        if self._conn is None and self._lazy and self._in_one():
            await self._commit_in_one()
            self._committed()
            return
        await self._open()
        try:
            try:
                await self._flush()
                with mapped():
                    moved = await self._conn.fetch(
                        _MOVE_CHECKPOINTS_LAZY if self._lazy else _MOVE_CHECKPOINTS,
                        self._names, self._new,
                        [self._expected[n] for n in self._names], timeout=self._timeout)
            except asyncpg.DeadlockDetectedError as exc:
                raise self._conflict({}) from exc
            if len(moved) != len(self._names):
                raise self._conflict(await self._current())
        except BaseException:
            await self._release(commit=False)
            raise
        await self._release(commit=True)
        self._committed()

    def _committed(self) -> None:
        """Tell the listeners the checkpoints moved, and the statistics what was written."""
        if self._notifier is not None:
            self._notifier.checkpoints_moved(self._names, self._new)
        if self._statistics is not None:
            for _, table, rows in self._rows:
                self._statistics.wrote(table.name, len(rows))

    async def _open(self) -> None:
        if self._conn is not None:
            return
        with mapped():
            self._conn = await self._pool.acquire(timeout=self._timeout)
        try:
            with mapped():
                self._tx = self._conn.transaction()
                await self._tx.start()
                fresh = [n for n in self._names if self._expected[n] == 0]
                if fresh:  # the first batch ever: the rows may not exist yet
                    await self._conn.execute(_ENSURE_CHECKPOINTS, fresh,
                                             timeout=self._timeout)
        except BaseException:
            await self._release(commit=False)
            raise

    async def _flush(self) -> None:
        """Send the queued statements, each run of one statement as one executemany."""
        pending, self._pending = self._pending, []
        start = 0
        with mapped():
            while start < len(pending):
                sql = pending[start][0]
                end = start + 1
                while end < len(pending) and pending[end][0] == sql:
                    end += 1
                if end - start == 1:
                    await self._conn.execute(sql, *pending[start][1], timeout=self._timeout)
                else:
                    await self._conn.executemany(sql, [args for _, args in pending[start:end]],
                                                 timeout=self._timeout)
                start = end

    def _in_one(self) -> bool:
        """Whether the batch can commit as one statement: only row writes, no table put
        or deleted twice nor on the same keys, and every checkpoint's row there already."""
        if not self._rows_only or any(self._expected[n] == 0 for n in self._names):
            return False
        writes: dict[tuple[str, Table], Sequence[Mapping[str, Any]]] = {}
        for kind, table, rows in self._rows:
            if (kind, table) in writes:
                return False
            writes[(kind, table)] = rows
        for (kind, table), rows in writes.items():
            deleted = writes.get(("delete", table)) if kind == "put" else None
            if deleted is not None and _keys(table, rows) & _keys(table, deleted):
                return False
        return True

    async def _commit_in_one(self) -> None:
        """The queued row writes and the checkpoints' moves as one statement."""
        parts: list[str] = []
        args: list[object] = []
        for i, (sql, params) in enumerate(self._pending):
            parts.append(f"w{i} AS ({_shifted(sql, len(args))})")
            args.extend(params)
        n = len(args)
        moves = _shifted(_MOVE_CHECKPOINTS, n)
        parts.append(f"moved AS ({moves})")
        sql = (f"WITH {', '.join(parts)} SELECT orrery_checkpoints_moved("
               f"(SELECT count(*) FROM moved), ${n + 4}),"
               " set_config('synchronous_commit', 'off', true)")
        self._pending = []
        try:
            with mapped():
                await self._pool.execute(
                    sql, *args, self._names, self._new,
                    [self._expected[name] for name in self._names], len(self._names),
                    timeout=self._timeout)
        except asyncpg.DeadlockDetectedError as exc:
            raise self._conflict({}) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != _MOVED_ELSEWHERE:
                raise
            raise self._conflict(await self._current()) from exc

    async def _current(self) -> dict[str, int]:
        """The checkpoints as they stand (in the open transaction, if there is one)."""
        source = self._conn if self._conn is not None else self._pool
        with mapped():
            rows = await source.fetch(_CHECKPOINTS, self._names, timeout=self._timeout)
        return {r[0]: int(r[1]) for r in rows}

    def _conflict(self, current: Mapping[str, int]) -> ConcurrencyError:
        """Another runner moved a checkpoint first (which one, when known)."""
        for name in self._names:
            if name in current and current[name] != self._expected[name]:
                return ConcurrencyError(f"projection:{name}", self._expected[name],
                                        current[name])
        name = self._names[0]
        return ConcurrencyError(f"projection:{name}", self._expected[name], -1)

    async def _release(self, commit: bool) -> None:
        conn, self._conn = self._conn, None
        try:
            if commit:
                with mapped():
                    await self._tx.commit()
            else:
                await self._rollback(conn)
        except BaseException:
            await self._rollback(conn)
            raise
        finally:
            await self._pool.release(conn, timeout=self._timeout)

    async def _rollback(self, conn: Any) -> None:
        """Roll back if the transaction still allows it; never mask the error in flight.

        A transaction that failed mid-commit (or was cancelled) is rolled back by the
        pool's reset when the connection is released.
        """
        if self._tx is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._tx.rollback()
        except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError) as exc:
            log.info("projection_tx_rollback_skipped", projections=self._names, error=repr(exc))
