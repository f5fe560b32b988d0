"""Leases: named locks a process holds while alive, and how many processes share a group.

The shard balancer uses them to spread a kind's shard queues over the live workers.
On PostgreSQL a group is one session per process: its members are counted by the
session's application name, its leases are session advisory locks, and both end when the
process (or its connection) dies. A single-process store (SQLite) has one member that
holds every lease.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import asyncpg
import structlog

from store.errors import StoreUnavailable

log = structlog.get_logger(__name__)

_CONN_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.PostgresError, TimeoutError)


class LeaseGroup(Protocol):
    """One process's membership of a group, with the leases it holds."""

    lost: asyncio.Event
    """Set when membership ended behind our back (every lease is gone with it)."""

    async def members(self) -> int:
        ...

    async def try_acquire(self, name: str) -> bool:
        ...

    async def release(self, name: str) -> None:
        ...

    async def close(self) -> None:
        ...


class LocalLeases:
    """The only member of its group: every lease is granted (one process, SQLite)."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    async def members(self) -> int:
        return 1

    async def try_acquire(self, name: str) -> bool:
        return True

    async def release(self, name: str) -> None:
        return None

    async def close(self) -> None:
        return None


class PgLeases:
    """Membership and leases on one dedicated PostgreSQL session."""

    def __init__(self, conn: Any, group: str, timeout: float) -> None:
        self._conn = conn
        self._group = group
        self._timeout = timeout
        self.lost = asyncio.Event()
        conn.add_termination_listener(self._on_lost)

    @classmethod
    async def join(cls, dsn: str, group: str, timeout: float = 10.0) -> PgLeases:
        app = f"orrery-lease:{group}"[:63]
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout,
                                         server_settings={"application_name": app})
        except _CONN_ERRORS as exc:
            raise StoreUnavailable(f"cannot join lease group {group}: {exc!r}") from exc
        return cls(conn, app, timeout)

    def _on_lost(self, _conn: object) -> None:
        log.warning("lease_session_lost", group=self._group)
        self.lost.set()

    async def _fetchval(self, sql: str, *args: object) -> Any:
        try:
            return await self._conn.fetchval(sql, *args, timeout=self._timeout)
        except _CONN_ERRORS as exc:
            self.lost.set()
            raise StoreUnavailable(f"lease session failed: {exc!r}") from exc

    async def members(self) -> int:
        """Live sessions of this group in this database (this one included)."""
        count = await self._fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()", self._group)
        return max(1, int(count))

    async def try_acquire(self, name: str) -> bool:
        got = await self._fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 1))", name)
        return bool(got)

    async def release(self, name: str) -> None:
        await self._fetchval("SELECT pg_advisory_unlock(hashtextextended($1, 1))", name)

    async def close(self) -> None:
        """Leave the group: every lease is released with the session."""
        try:
            await self._conn.close(timeout=self._timeout)
        except _CONN_ERRORS:
            self._conn.terminate()


async def join_lease_group(store: object, group: str) -> LeaseGroup:
    """Join ``group`` on the store's backend: PostgreSQL sessions, or the local stand-in."""
    join = getattr(store, "join_leases", None)
    if join is None:
        return LocalLeases()
    joined: LeaseGroup = await join(group)
    return joined
