"""Planner statistics of the projection tables, where no one else keeps them.

PostgreSQL's planner picks an index from each table's statistics, and autovacuum's
ANALYZE keeps them. A server run with autovacuum off (as the CI machines are) never
analyses a projection table, and the planner guesses from nothing: listing a project's
BUILD servers, it took the project's index and walked every server of the project (2 ms a
listing of 4,000 servers, where the status index answers in 0.1 ms).

So when the server's ``autovacuum`` is off, the store analyses a projection table itself
once enough of its rows were written since the last time (500 rows plus a fifth of the
table; autovacuum's 50 and a tenth analysed the servers of the boot benchmark 60 times a
minute): one table at a time, in the background, never in a commit.
With autovacuum on, it does nothing. Only ANALYZE: vacuuming stays the operator's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

#: rows written before a table is analysed: BASE plus FRACTION of its rows
BASE, FRACTION = 500, 0.2
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


class Statistics:
    """Counts the rows each projection commit wrote per table, and analyses a table
    whose count passed its threshold."""

    def __init__(self, pool: Any, timeout: float, *, base: int = BASE,
                 fraction: float = FRACTION) -> None:
        self._pool, self._timeout = pool, timeout
        self._base, self._fraction = base, fraction
        #: whether the server leaves it to us (None until first asked)
        self._ours: bool | None = None
        self._written: dict[str, int] = {}
        self._rows: dict[str, float] = {}  # each table's rows at its last ANALYZE
        self._due: dict[str, None] = {}
        self._task: asyncio.Task[None] | None = None
        #: tables analysed so far, in order (what tests and logs look at)
        self.analysed: list[str] = []

    def wrote(self, table: str, rows: int) -> None:
        """A commit wrote ``rows`` rows of ``table`` (puts and deletes)."""
        if self._ours is False or not _NAME.match(table):
            return
        written = self._written[table] = self._written.get(table, 0) + rows
        if written < self._base + self._fraction * self._rows.get(table, 0.0):
            return
        self._due[table] = None
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._analyse_due())

    async def _analyse_due(self) -> None:
        try:
            if self._ours is None:
                self._ours = await self._pool.fetchval(
                    "SELECT current_setting('autovacuum') = 'off'", timeout=self._timeout)
            while self._due and self._ours:
                table = next(iter(self._due))
                self._written[table] = 0  # what is written from here counts for the next
                await self._pool.execute(f"ANALYZE {table}", timeout=self._timeout)
                rows = await self._pool.fetchval(
                    "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", table,
                    timeout=self._timeout)
                self._rows[table] = max(float(rows or 0.0), 0.0)
                self.analysed.append(table)
                del self._due[table]
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # statistics are a hint: the next threshold passed tries again
            log.info("projection_analyse_skipped", tables=list(self._due), error=repr(exc))
        finally:
            self._due.clear()

    async def close(self) -> None:
        """Stop an ANALYZE in flight (its statistics are only a hint)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
