"""Projection transactions on PostgreSQL: the checkpoint row locked, moved and notified
in the same transaction as the projection's writes."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from store.errors import ConcurrencyError
from store.pg_common import PROJECTIONS_CHANNEL, mapped

#: move the checkpoint and tell every listener its new value ("name position"), one trip
_MOVE_CHECKPOINT = (
    "WITH moved AS (UPDATE projection_checkpoints SET position = $2 WHERE name = $1"
    " RETURNING name) SELECT pg_notify($3, $1 || ' ' || $2::text) FROM moved"
)

log = structlog.get_logger(__name__)


class PgTx:
    """SqlTx over one asyncpg connection inside an open transaction."""

    def __init__(self, conn: Any, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def execute(self, sql: str, *args: object) -> None:
        with mapped():
            await self._conn.execute(sql, *args, timeout=self._timeout)

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with mapped():
            rows = await self._conn.fetch(sql, *args, timeout=self._timeout)
        return [tuple(r) for r in rows]


class PgProjectionTx:
    """The transaction of projection_tx: checkpoint locked on enter, moved on clean exit."""

    def __init__(self, pool: Any, name: str, expected: int, new: int, timeout: float) -> None:
        self._pool, self._name, self._timeout = pool, name, timeout
        self._expected, self._new = expected, new
        self._conn: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> PgTx:
        with mapped():
            self._conn = await self._pool.acquire(timeout=self._timeout)
        try:
            with mapped():
                self._tx = self._conn.transaction()
                await self._tx.start()
                await self._conn.execute(
                    "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0)"
                    " ON CONFLICT (name) DO NOTHING", self._name, timeout=self._timeout)
                current = await self._conn.fetchval(
                    "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
                    self._name, timeout=self._timeout)
            if current != self._expected:
                raise ConcurrencyError(self._name, self._expected, current)
        except BaseException:
            await self._finish(commit=False)
            raise
        return PgTx(self._conn, self._timeout)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self._finish(commit=exc_type is None)

    async def _finish(self, commit: bool) -> None:
        conn, self._conn = self._conn, None
        try:
            if commit:
                with mapped():
                    await conn.execute(_MOVE_CHECKPOINT, self._name, self._new,
                                       PROJECTIONS_CHANNEL, timeout=self._timeout)
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
            log.info("projection_tx_rollback_skipped", projection=self._name, error=repr(exc))
