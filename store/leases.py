"""Leases: named locks a process holds while alive, and how many processes share a group.

The shard balancer uses them to spread a kind's shard queues over the live workers.
On PostgreSQL one session per process (per store) carries every group the process joins:
a lease is a session advisory lock, and a membership is a lock on one of the group's
``MAX_MEMBERS`` member slots, so the members of a group are the held slots; all of them
end when the process (or its session) dies. Within the process the session remembers
which group holds which lock, because advisory locks are re-entrant per session. A
single-process store (SQLite) has one member that holds every lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import asyncpg
import structlog

from store.errors import StoreUnavailable

log = structlog.get_logger(__name__)

_CONN_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.PostgresError, TimeoutError)
#: processes that can be members of one group at once
MAX_MEMBERS = 64
#: how long one count of every group's members serves the balancers' periodic asks
MEMBERS_TTL = 0.5
_KEY = "hashtextextended($1::text, 1)"
#: the first free member slot of a group, locked
_JOIN = ("SELECT i FROM generate_series(0, $2::int - 1) AS i"
         " WHERE NOT (i = ANY($3::int[]))"
         " AND pg_try_advisory_lock(hashtextextended($1 || '.member.' || i, 1)) LIMIT 1")
#: the held member slots of each group in ``$1``, any session's
_MEMBERS = (
    "SELECT g, count(l.pid) FROM unnest($1::text[]) AS g"
    " CROSS JOIN generate_series(0, $2::int - 1) AS i"
    " CROSS JOIN LATERAL (SELECT hashtextextended(g || '.member.' || i, 1) AS k) AS h"
    " LEFT JOIN pg_locks AS l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid = ((h.k >> 32) & 4294967295)::oid AND l.objid = (h.k & 4294967295)::oid"
    " GROUP BY g")


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


class PgLeaseSession:
    """The PostgreSQL session that carries every lease group of one process."""

    def __init__(self, conn: Any, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout
        self._lock = asyncio.Lock()  # one query at a time on the connection
        self._groups: set[PgLeaseGroup] = set()
        #: lock name -> the group of this process that holds it
        self._holders: dict[str, PgLeaseGroup] = {}
        self._counts: dict[str, int] = {}
        self._counted_at = -MEMBERS_TTL
        self.lost = asyncio.Event()
        conn.add_termination_listener(self._on_lost)

    @classmethod
    async def open(cls, dsn: str, timeout: float = 10.0) -> PgLeaseSession:
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout,
                                         server_settings={"application_name": "orrery-leases"})
        except _CONN_ERRORS as exc:
            raise StoreUnavailable(f"cannot open the lease session: {exc!r}") from exc
        return cls(conn, timeout)

    def _on_lost(self, _conn: object) -> None:
        log.warning("lease_session_lost", groups=sorted(g.name for g in self._groups))
        self.lost.set()
        for group in self._groups:
            group.lost.set()

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        if self.lost.is_set():
            raise StoreUnavailable("the lease session is gone")
        try:
            async with self._lock:
                return list(await self._conn.fetch(sql, *args, timeout=self._timeout))
        except _CONN_ERRORS as exc:
            self._on_lost(self._conn)
            raise StoreUnavailable(f"lease session failed: {exc!r}") from exc

    async def join(self, name: str) -> PgLeaseGroup:
        """Become a member of group ``name``: take a free member slot."""
        taken = [int(k.rsplit(".", 1)[1]) for k in self._holders
                 if k.startswith(f"{name}.member.")]
        rows = await self._fetch(_JOIN, name, MAX_MEMBERS, taken)
        if not rows:
            raise StoreUnavailable(f"lease group {name} has {MAX_MEMBERS} members already")
        group = PgLeaseGroup(self, name, f"{name}.member.{rows[0][0]}")
        self._groups.add(group)
        self._holders[group.slot] = group
        self._counted_at = -MEMBERS_TTL  # a new member: count again
        return group

    async def members(self, name: str) -> int:
        """How many processes are members of ``name`` (counted for every group of this
        session at once, at most every MEMBERS_TTL seconds)."""
        if time.monotonic() - self._counted_at >= MEMBERS_TTL or name not in self._counts:
            names = sorted({g.name for g in self._groups} | {name})
            rows = await self._fetch(_MEMBERS, names, MAX_MEMBERS)
            self._counts = {r[0]: int(r[1]) for r in rows}
            self._counted_at = time.monotonic()
        return max(1, self._counts.get(name, 0))

    async def try_acquire(self, group: PgLeaseGroup, lock: str) -> bool:
        holder = self._holders.get(lock)
        if holder is not None:
            return holder is group
        rows = await self._fetch(f"SELECT pg_try_advisory_lock({_KEY})", lock)
        if rows[0][0]:
            self._holders[lock] = group
        return bool(rows[0][0])

    async def release(self, group: PgLeaseGroup, lock: str) -> None:
        if self._holders.get(lock) is not group:
            return
        del self._holders[lock]
        await self._fetch(f"SELECT pg_advisory_unlock({_KEY})", lock)

    async def leave(self, group: PgLeaseGroup) -> None:
        """Give back every lock ``group`` holds (nothing to do once the session is gone)."""
        self._groups.discard(group)
        self._counted_at = -MEMBERS_TTL
        for lock in [k for k, g in self._holders.items() if g is group]:
            if self.lost.is_set():
                del self._holders[lock]
                continue
            try:
                await self.release(group, lock)
            except StoreUnavailable:
                self._holders.pop(lock, None)

    async def close(self) -> None:
        try:
            await self._conn.close(timeout=self._timeout)
        except _CONN_ERRORS:
            self._conn.terminate()

    @property
    def pid(self) -> int:
        """The session's backend process id (the database ends it to simulate a crash)."""
        return int(self._conn.get_server_pid())


class PgLeaseGroup:
    """One group's membership and leases on the process's lease session."""

    def __init__(self, session: PgLeaseSession, name: str, slot: str) -> None:
        self.session = session
        self.name = name
        self.slot = slot
        self.lost = asyncio.Event()

    async def members(self) -> int:
        """Live members of this group, this process included."""
        return await self.session.members(self.name)

    async def try_acquire(self, name: str) -> bool:
        return await self.session.try_acquire(self, name)

    async def release(self, name: str) -> None:
        await self.session.release(self, name)

    async def close(self) -> None:
        """Leave the group: its leases and its member slot are given back."""
        await self.session.leave(self)


async def join_lease_group(store: object, group: str) -> LeaseGroup:
    """Join ``group`` on the store's backend: PostgreSQL sessions, or the local stand-in."""
    join = getattr(store, "join_leases", None)
    if join is None:
        return LocalLeases()
    joined: LeaseGroup = await join(group)
    return joined
