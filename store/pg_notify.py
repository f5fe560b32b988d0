"""Wake-ups sent after commit, on a trip of their own.

A NOTIFY inside a writing transaction takes PostgreSQL's one notification lock at commit
and holds it through that commit's WAL flush: every notifying commit in the cluster then
waits for the one before it, and the database cannot flush many commits at once. Under
load appends and projection commits spent a large share of their time in that queue.

So the log's writers and the projection transactions notify here, after their commit.
A notification only wakes a reader (it then reads the log or the checkpoints), so those
that queue up while one is on its way are merged into the next: per channel and key, the
last payload wins (a projection's checkpoint only moves forward). A notification that is
lost (a crash right after a commit, a failed trip) is covered by the readers' periodic
re-read (``RECHECK_SECONDS``).

The process that commits hears its own wake-ups at once (``hear``), without the trip:
its own readers of the log and waiters for its own projections go on a round trip and a
delivery sooner; its listener then ignores them when PostgreSQL delivers them back
(``sender_pid``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from store.pg_common import CONN_ERRORS, EVENTS_CHANNEL, PROJECTIONS_CHANNEL

log = structlog.get_logger(__name__)

#: how often a reader that heard nothing looks again, in case a notification was lost
RECHECK_SECONDS = 1.0
_SEND = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)"


class Notifier:
    """Sends the merged notifications, one trip at a time, on a connection of its own (a
    busy pool would hold them back: every reader of the log waits for them)."""

    def __init__(self, dsn: str, timeout: float,
                 hear: Callable[[str, str], None] | None = None) -> None:
        self._dsn = dsn
        self._timeout = timeout
        #: told (channel, payload) of each notification as it is queued: this process's
        self._hear = hear
        self._conn: Any = None
        #: (channel, key) -> payload, waiting for the next trip
        self._pending: dict[tuple[str, str], str] = {}
        self._task: asyncio.Task[None] | None = None

    def events_committed(self, position: int) -> None:
        """Events up to ``position`` were committed."""
        self._queue(EVENTS_CHANNEL, "", str(position))

    def checkpoints_moved(self, names: list[str], position: int) -> None:
        """Each of these projections has folded up to ``position`` (committed)."""
        for name in names:
            self._queue(PROJECTIONS_CHANNEL, name, f"{name} {position}")

    @property
    def sender_pid(self) -> int | None:
        """The backend that sends the notifications (None while not connected)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    def _queue(self, channel: str, key: str, payload: str) -> None:
        if self._hear is not None:
            self._hear(channel, payload)
        self._pending[(channel, key)] = payload
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="pg-notify")

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                await self._conn.execute(_SEND, [c for c, _ in batch], list(batch.values()),
                                         timeout=self._timeout)
            except (*CONN_ERRORS, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("notify_failed", notifications=len(batch), error=repr(exc))
                await self._drop()

    async def close(self) -> None:
        """Send what is pending, then stop."""
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=self._timeout)
            except (*CONN_ERRORS, TimeoutError):
                conn.terminate()
