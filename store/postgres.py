"""The PostgreSQL event log: group-commit appends, gap-free reads by position, projections.

Appends are validated, then queued for the group-commit writers (store/pg_writer.py), each
of which sends its share of what is queued (up to ``max_batch_events``) to
``orrery_append`` in one statement, hence one transaction; projection transactions live
in store/pg_projection.py. Positions are ``(xid << 20) + ordinal``; readers only read below
``snapshot xmin << 20``, where no transaction can still commit (see 002_append_function.sql).
Live subscribers share one LISTEN connection; they poll only while committed events wait
behind an open transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import asyncpg
import msgspec
import structlog

from schemas import EventEnvelope, NewEvent
from store.errors import StoreError, StoreUnavailable
from store.event_query import conditions
from store.leases import PgLeaseGroup, PgLeaseSession
from store.metrics import APPEND_SECONDS
from store.migrations import migrate
from store.pg_common import (
    EVENTS_CHANNEL,
    PROJECTIONS_CHANNEL,
    init_conn,
    mapped,
)
from store.pg_notify import RECHECK_SECONDS, Notifier
from store.pg_projection import PgProjectionTx
from store.pg_statistics import Statistics
from store.pg_writer import GroupCommit, PendingAppend
from store.protocol import (
    AppendResult,
    EventQuery,
    FilteredPage,
    LogRow,
    Snapshot,
    check_causes,
)
from store.registry import EventTypes

log = structlog.get_logger(__name__)

_HORIZON = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
_COLUMNS = ("position, stream, version, type, data, event_id, occurred_at,"
            " correlation_id, causation_id, project_id, user_id")
_READ_FOLLOW = (
    f"WITH h AS MATERIALIZED (SELECT {_HORIZON} AS horizon,"
    " (SELECT max(position) FROM events) AS top)"
    " SELECT h.horizon, h.top, e.* FROM h LEFT JOIN LATERAL"
    f" (SELECT {_COLUMNS} FROM events WHERE position > $1 AND position < h.horizon"
    " ORDER BY position LIMIT $2) AS e ON true")
#: a filtered read: the horizon, the newest position, the window of the next $3 positions
#: below the horizon (its last position and size), and the matching events in it
_READ_FILTERED = (
    f"WITH h AS MATERIALIZED (SELECT {_HORIZON} AS horizon,"
    " (SELECT max(position) FROM events) AS top),"
    " w AS MATERIALIZED ({window})"
    " SELECT h.horizon, h.top, w.last, w.n, e.* FROM h CROSS JOIN w LEFT JOIN LATERAL"
    f" (SELECT {_COLUMNS} FROM events WHERE position > $1 AND position <= w.last"
    " AND {where} ORDER BY position LIMIT $2) AS e ON true")
_WINDOW = ("SELECT max(s.position) AS last, count(*) AS n FROM (SELECT position FROM events"
           " WHERE position > $1 AND position < (SELECT horizon FROM h)"
           " ORDER BY position LIMIT $3) AS s")
#: no window: up to the horizon ($3 is NULL), for queries an index narrows (a stream)
_UNBOUNDED = ("SELECT max(position) AS last, $3::bigint AS n FROM events"
              " WHERE position < (SELECT horizon FROM h)")
_SCAN_LOG = ("SELECT position, stream, version, type, data, occurred_at, causation_id"
             " FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3")
_READ_STREAM = (f"SELECT {_COLUMNS} FROM events WHERE stream = $1 AND version >= $2"
                " ORDER BY version LIMIT $3")
_LOAD = (
    "WITH s AS MATERIALIZED (SELECT version, type, data FROM snapshots WHERE stream = $1)"
    " SELECT s.version, s.type, s.data, e.* FROM (SELECT 1) AS one LEFT JOIN s ON true"
    f" LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM events WHERE stream = $1"
    " AND version > coalesce(s.version, 0) ORDER BY version) AS e ON true")
_HEAD = (f"SELECT coalesce((SELECT max(position) FROM events WHERE position < {_HORIZON}), 0),"
         " coalesce((SELECT max(position) FROM events), 0)")
_SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (stream, version, type, data) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (stream) DO UPDATE SET version = excluded.version, type = excluded.type,"
    " data = excluded.data WHERE snapshots.version <= excluded.version")
_CORRELATED = (f"SELECT {_COLUMNS} FROM events WHERE correlation_id = ANY($1::text[])"
               " ORDER BY position")
#: a causation id of the uuid form may name an event (anything else cannot)
_UUID_FORM = "'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'"
#: events whose causation id is not a recorded cause of their append (a hash anti-join:
#: one pass over each table), then, of those few, the ones that name no earlier event
_UNEXPLAINED = (
    "WITH unrecorded AS MATERIALIZED (SELECT e.position, e.causation_id FROM events e"
    " WHERE e.causation_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM reactions r"
    " WHERE r.stream = e.stream AND r.cause = e.causation_id AND r.version >= e.version))"
    f" SELECT {_COLUMNS} FROM events WHERE position IN (SELECT u.position FROM unrecorded u"
    " WHERE NOT EXISTS (SELECT 1 FROM events c WHERE c.event_id ="
    f" (CASE WHEN u.causation_id ~ {_UUID_FORM} THEN u.causation_id::uuid END)"
    " AND c.position < u.position)) ORDER BY position LIMIT $1")
#: the anti-join's hash tables fit in memory for logs of millions of events
ANALYSIS_WORK_MEM = "256MB"
#: how long a whole-log analysis query may take
ANALYSIS_TIMEOUT = 3600.0
#: leadership sessions holding nothing that a store keeps for the next try
STANDBY_SESSIONS = 4
DDL_LOCK_KEY = 0x6F72_7265_7279_01  # held (per transaction) while projection DDL runs


def _envelope(r: Any, o: int = 0) -> EventEnvelope:
    """An EventEnvelope from a row of _COLUMNS starting at column ``o``."""
    # positional, in the envelope's field order: event_id, stream, version, position,
    # type, data, occurred_at, correlation_id, causation_id, project_id, user_id
    return EventEnvelope(r[o + 5], r[o + 1], r[o + 2], r[o], r[o + 3], msgspec.Raw(r[o + 4]),
                         r[o + 6], r[o + 7], r[o + 8], r[o + 9], r[o + 10])


class _Listener:
    """One LISTEN connection per store; every subscriber waits on its wake-up event. The
    store's own notifications are heard as they are sent (``heard``), so those coming
    back from ``sender``'s backend are ignored."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self.sender: Callable[[], int | None] = lambda: None
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.projection_moved = asyncio.Event()
        #: checkpoints as the notifications since the last (re)connect told them
        self.checkpoints: dict[str, int] = {}

    async def ensure(self) -> None:
        """Connect and LISTEN if not already; after a reconnect, wake every subscriber."""
        if self._conn is not None and not self._conn.is_closed():
            return
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            with mapped():
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
                await conn.add_listener(PROJECTIONS_CHANNEL, self._on_projection)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn
            self.checkpoints.clear()  # notifications may have been missed while not listening
            self._fire()
            self._moved(None)

    def heard(self, channel: str, payload: str) -> None:
        """A notification of this process's own, heard before it is sent."""
        if channel == PROJECTIONS_CHANNEL:
            self._moved(payload)
        else:
            self._fire()

    def _echo(self, pid: object) -> bool:
        """Whether a notification came from this store's own sender (heard already)."""
        return pid is not None and pid == self.sender()

    def _on_notify(self, conn: object, pid: object, channel: object, payload: object) -> None:
        if not self._echo(pid):
            self._fire()

    def _on_projection(self, conn: object, pid: object, channel: object,
                       payload: object) -> None:
        if not self._echo(pid):
            self._moved(payload if isinstance(payload, str) else None)

    def _moved(self, payload: str | None) -> None:
        """A checkpoint moved ("name position", sent in commit order), or may have (None:
        after a reconnect); wake the waiters."""
        if payload is not None:
            name, _, position = payload.rpartition(" ")
            if name and position.isdigit():
                self.checkpoints[name] = int(position)
        moved, self.projection_moved = self.projection_moved, asyncio.Event()
        moved.set()

    def _on_lost(self, conn: object) -> None:
        if conn is not self._conn:  # closed by us
            return
        log.warning("listen_connection_lost")
        self._conn = None
        self._fire()

    def _fire(self) -> None:
        old, self.wake = self.wake, asyncio.Event()
        old.set()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(timeout=self._timeout)
        self._fire()


class PostgresEventStore:
    """EventStore and ProjectionStore on PostgreSQL 15 (asyncpg)."""

    def __init__(self, dsn: str, types: EventTypes, pool: Any, append_pool: Any,
                 writers: int, max_batch_events: int, timeout: float,
                 settle_timeout: float) -> None:
        self._dsn = dsn
        self._settle_timeout = settle_timeout
        self._types = types
        self._pool = pool
        self._append_pool = append_pool
        self._timeout = timeout
        self._closed = False
        self._listener = _Listener(dsn, timeout)
        self._notifier = Notifier(dsn, timeout, hear=self._listener.heard)
        self._statistics = Statistics(pool, timeout)
        self._listener.sender = lambda: self._notifier.sender_pid
        self._writer = GroupCommit(append_pool, writers, max_batch_events, timeout,
                                   self._notifier.events_committed)
        self._leases: PgLeaseSession | None = None
        self._lease_lock = asyncio.Lock()
        #: leadership sessions that hold nothing, kept for the next try
        self._standby_sessions: list[Any] = []

    @classmethod
    async def connect(cls, dsn: str, types: EventTypes, *, writers: int = 2,
                      max_batch_events: int = 500, read_pool_size: int = 10,
                      timeout: float = 30.0, settle_timeout: float = 2.0
                      ) -> PostgresEventStore:
        """Apply pending migrations and open the pools (``writers`` append connections).

        ``timeout`` bounds every database call; ``settle_timeout`` how long read_all and
        head wait for an open transaction that holds committed events behind the horizon.
        """
        with mapped():
            conn = await asyncpg.connect(dsn, timeout=timeout)
            try:
                await migrate(conn, timeout=timeout)
            finally:
                await conn.close(timeout=timeout)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=read_pool_size,
                                             init=init_conn, timeout=timeout,
                                             reset=_light_reset)
            try:
                append_pool = await asyncpg.create_pool(
                    dsn, min_size=writers, max_size=writers, init=init_conn, timeout=timeout,
                    reset=_light_reset)
            except BaseException:
                await pool.close()
                raise
        log.info("event_store_connected", writers=writers, max_batch_events=max_batch_events)
        return cls(dsn, types, pool, append_pool, writers, max_batch_events, timeout,
                   settle_timeout)

    async def close(self) -> None:
        """Commit what is queued, stop the writers and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._writer.close(drain_timeout=self._timeout)
        await self._statistics.close()
        await self._notifier.close()
        await self._listener.close()
        if self._leases is not None:
            await self._leases.close()
        standby, self._standby_sessions = self._standby_sessions, []
        for conn in standby:
            conn.terminate()  # holds nothing: nothing to hand back first
        await self._append_pool.close()
        await self._pool.close()

    async def append(self, stream: str, events: Sequence[NewEvent], expected_version: int,
                     *, cause: str | None = None,
                     causes: Sequence[tuple[str, int]] = ()) -> AppendResult:
        check_causes(cause, causes, len(events))
        for ev in events:
            self._types.validate(ev.type, ev.data)
        if self._closed:
            raise StoreUnavailable("event store closed")
        started = time.perf_counter()
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._writer.submit(PendingAppend(stream, expected_version, cause, events, future,
                                          tuple(causes)))
        try:
            return await future
        finally:
            APPEND_SECONDS.observe(time.perf_counter() - started)

    async def read_stream(self, stream: str, from_version: int = 1,
                          limit: int | None = None) -> list[EventEnvelope]:
        with mapped():
            rows = await self._pool.fetch(_READ_STREAM, stream, from_version, limit,
                                          timeout=self._timeout)
        return [_envelope(r) for r in rows]

    async def load(self, stream: str) -> tuple[Snapshot | None, list[EventEnvelope]]:
        """The latest snapshot and the events after it, in one round trip."""
        with mapped():
            rows = await self._pool.fetch(_LOAD, stream, timeout=self._timeout)
        first = rows[0]
        snapshot = None if first[0] is None else Snapshot(
            stream=stream, version=first[0], type=first[1], data=bytes(first[2]))
        return snapshot, [_envelope(r, 3) for r in rows if r[3] is not None]

    async def stream_version(self, stream: str) -> int:
        with mapped():
            version = await self._pool.fetchval(
                "SELECT version FROM streams WHERE stream = $1", stream, timeout=self._timeout)
        return int(version or 0)

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[EventEnvelope]:
        """Events below the horizon. When committed events wait behind a transaction that
        is still open (anywhere in the cluster), re-read for up to ``settle_timeout`` so a
        reader sees what was committed before it asked (read-your-writes)."""
        backoff, deadline = 0.0, time.monotonic() + self._settle_timeout
        while True:
            events, _, top = await self._read_follow(after, limit)
            last = events[-1].position if events else after
            if len(events) == limit or top <= last or time.monotonic() >= deadline:
                return events
            backoff = min(max(backoff * 2, 0.002), 0.1)
            await asyncio.sleep(backoff)

    async def scan_log(self, after: int, until: int, limit: int) -> Sequence[LogRow]:
        with mapped():
            rows = await self._pool.fetch(_SCAN_LOG, after, until, limit, timeout=self._timeout)
        return cast("list[LogRow]", rows)  # asyncpg Records index and unpack as tuples

    async def read_filtered(self, query: EventQuery, after: int = 0, limit: int = 100,
                            scan: int | None = 10_000) -> FilteredPage:
        """Filters in SQL over a window of the log below the horizon; settles like
        read_all while a short window waits behind an open transaction."""
        where, args = conditions(query, "postgres", 4)
        window = _WINDOW if scan is not None else _UNBOUNDED
        sql = _READ_FILTERED.replace("{window}", window).replace("{where}", where)
        backoff, deadline = 0.0, time.monotonic() + self._settle_timeout
        while True:
            with mapped():
                rows = await self._pool.fetch(sql, after, limit, scan, *args,
                                              timeout=self._timeout)
            top, last, seen = rows[0][1] or 0, rows[0][2] or after, rows[0][3]
            events = [_envelope(r, 4) for r in rows if r[4] is not None]
            if len(events) >= limit:
                return FilteredPage(events=events, scanned=events[-1].position)
            if (scan is not None and seen == scan) or top <= last or time.monotonic() >= deadline:
                return FilteredPage(events=events, scanned=last)
            backoff = min(max(backoff * 2, 0.002), 0.1)
            await asyncio.sleep(backoff)

    async def _read_follow(self, after: int, limit: int) -> tuple[list[EventEnvelope], int, int]:
        """A batch after ``after`` plus the horizon and the newest visible position."""
        with mapped():
            rows = await self._pool.fetch(_READ_FOLLOW, after, limit, timeout=self._timeout)
        horizon, top = rows[0][0], rows[0][1] or 0
        if rows[0][2] is None:
            return [], horizon, top
        return [_envelope(r, 2) for r in rows], horizon, top

    async def subscribe(self, after: int = 0,
                        batch: int = 1000) -> AsyncGenerator[list[EventEnvelope], None]:
        backoff = 0.0
        while not self._closed:
            await self._listener.ensure()
            wake = self._listener.wake
            events, horizon, top = await self._read_follow(after, batch)
            if events:
                yield events
                after = events[-1].position
                if len(events) == batch:
                    continue
            if top > after and top >= horizon:
                # Committed events wait behind an open transaction. Its commit notifies,
                # which wakes us at once; only an abort is silent, so that case alone is
                # caught by a timed re-read (the only polling, and only while a gap is open).
                backoff = min(max(backoff * 2, 0.002), 0.1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await wake.wait()
                continue
            backoff = 0.0
            if top <= after:  # a commit wakes us; a lost wake-up costs RECHECK_SECONDS
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK_SECONDS):
                        await wake.wait()

    async def read_correlated(self, correlation_ids: Sequence[str]) -> list[EventEnvelope]:
        with mapped():
            rows = await self._pool.fetch(_CORRELATED, list(dict.fromkeys(correlation_ids)),
                                          timeout=self._timeout)
        return [_envelope(r) for r in rows]

    async def unexplained_causes(self, limit: int = 100) -> list[EventEnvelope]:
        with mapped():
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.execute(f"SET LOCAL work_mem = '{ANALYSIS_WORK_MEM}'",
                                   timeout=self._timeout)
                rows = await conn.fetch(_UNEXPLAINED, limit, timeout=ANALYSIS_TIMEOUT)
        return [_envelope(r) for r in rows]

    async def head(self) -> int:
        """The newest position below the horizon (settling like read_all)."""
        backoff, deadline = 0.0, time.monotonic() + self._settle_timeout
        while True:
            with mapped():
                visible, top = await self._pool.fetchrow(_HEAD, timeout=self._timeout)
            if visible == top or time.monotonic() >= deadline:
                return int(visible)
            backoff = min(max(backoff * 2, 0.002), 0.1)
            await asyncio.sleep(backoff)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        with mapped():
            await self._pool.execute(_SAVE_SNAPSHOT, snapshot.stream, snapshot.version,
                                     snapshot.type, snapshot.data, timeout=self._timeout)

    async def load_snapshot(self, stream: str) -> Snapshot | None:
        with mapped():
            row = await self._pool.fetchrow(
                "SELECT version, type, data FROM snapshots WHERE stream = $1", stream,
                timeout=self._timeout)
        if row is None:
            return None
        return Snapshot(stream=stream, version=row[0], type=row[1], data=bytes(row[2]))

    async def projection_checkpoint(self, name: str) -> int:
        with mapped():
            position = await self._pool.fetchval(
                "SELECT position FROM projection_checkpoints WHERE name = $1", name,
                timeout=self._timeout)
        return int(position or 0)

    @property
    def notifier_pid(self) -> int | None:
        """The PostgreSQL backend that sends this store's wake-ups, once connected."""
        return self._notifier.sender_pid

    async def wait_for_projection(self, name: str, position: int, timeout: float) -> bool:
        """True once ``name``'s checkpoint reaches ``position``, whichever process runs the
        projection; False after ``timeout`` seconds. Each projection commit notifies its
        new checkpoint, so a waiter reads the table only when the listener has not heard of
        ``name`` since it (re)connected."""
        listener = self._listener
        recheck = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await listener.ensure()
                    moved = listener.projection_moved
                    known = listener.checkpoints.get(name)
                    if known is None or recheck:
                        known = await self.projection_checkpoint(name)
                    if known >= position:
                        return True
                    recheck = False
                    try:  # a lost notification costs RECHECK_SECONDS
                        async with asyncio.timeout(RECHECK_SECONDS):
                            await moved.wait()
                    except TimeoutError:
                        recheck = True
        except TimeoutError:
            return False

    def projection_tx(self, name: str, expected: int, new: int) -> PgProjectionTx:
        return PgProjectionTx(self._pool, {name: expected}, new, self._timeout,
                              notifier=self._notifier, statistics=self._statistics)

    def projections_tx(self, expected: Mapping[str, int], new: int, *,
                       defer_empty: bool = False, bulk: bool = False) -> PgProjectionTx:
        return PgProjectionTx(self._pool, expected, new, self._timeout,
                              defer_empty=defer_empty, notifier=self._notifier, lazy=True,
                              statistics=None if bulk else self._statistics)

    async def rebuild_projections(self, projections: Sequence[Any], *, batch: int,
                                  workers: int, progress: Callable[[int, int, int], None],
                                  ) -> int:
        """Refold ``projections`` from position 0 into tables beside the live ones (with
        up to ``workers`` processes) and swap them in (store.pg_rebuild); returns the
        checkpoint they were given."""
        from store.pg_rebuild import Shadow  # it builds on this module

        target = await self.head()
        shadow = Shadow(self._dsn, projections, batch=batch, workers=workers,
                        timeout=self._timeout, progress=progress)
        return await shadow.run(target)

    async def reset_projection(self, name: str, ddl_drop: Sequence[str],
                               ddl: Sequence[str] = ()) -> None:
        await self._in_tx([*((sql, ()) for sql in ddl_drop),
                           ("DELETE FROM projection_checkpoints WHERE name = $1", (name,)),
                           *((sql, ()) for sql in ddl),
                           ("SELECT pg_notify($1, $2)", (PROJECTIONS_CHANNEL, f"{name} 0"))])

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """A read-only query on projection tables (``$1`` placeholders)."""
        with mapped():
            rows = await self._pool.fetch(sql, *args, timeout=self._timeout)
        return [tuple(r) for r in rows]

    async def run_ddl(self, ddl: Sequence[str]) -> None:
        await self._in_tx([(sql, ()) for sql in ddl])

    async def _in_tx(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Run DDL in one transaction, serialised cluster-wide: concurrent ``CREATE TABLE
        IF NOT EXISTS`` of the same table can otherwise fail on pg_type's unique index."""
        with mapped():
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK_KEY,
                                   timeout=self._timeout)
                for sql, args in statements:
                    await conn.execute(sql, *args, timeout=self._timeout)

    async def join_leases(self, group: str) -> PgLeaseGroup:
        """Join lease group ``group`` (see store/leases.py) on this store's lease session,
        opened on first use and again after it was lost."""
        async with self._lease_lock:
            session = self._leases
            if session is None or session.lost.is_set():
                if session is not None:
                    await session.close()
                session = self._leases = await PgLeaseSession.open(self._dsn, self._timeout)
        return await session.join(group)

    @contextlib.asynccontextmanager
    async def try_leaderships(self, names: Iterable[str]) -> AsyncIterator[PgLeaderSet]:
        """Hold as many of the leaderships ``names`` as are free, on one session of its
        own, until the block exits (or the session dies: ``take_more`` then raises)."""
        conn = await self._leader_session()
        leader = PgLeaderSet(conn, names, self._timeout)
        ended = False
        try:
            await leader.take_more()
            yield leader
            ended = True
        finally:
            await self._end_leader_session(conn, reuse=ended and not leader.held)

    @contextlib.asynccontextmanager
    async def try_leadership(self, name: str) -> AsyncIterator[bool]:
        """Yield True while this process holds the cluster-wide leadership ``name``.

        A session advisory lock on a dedicated connection, released when the block
        exits (or the connection dies: callers re-check by re-entering).
        """
        conn = await self._leader_session()
        got, ended = False, False
        try:
            with mapped():
                got = bool(await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name,
                    timeout=self._timeout))
            yield got
            ended = True
        finally:
            await self._end_leader_session(conn, reuse=ended and not got)

    async def _leader_session(self) -> Any:
        """A session to ask for leaderships on: one a standby left, or a new one."""
        while self._standby_sessions:
            conn = self._standby_sessions.pop()
            if not conn.is_closed():
                return conn
        with mapped():
            return await asyncpg.connect(self._dsn, timeout=self._timeout)

    async def _end_leader_session(self, conn: Any, *, reuse: bool) -> None:
        """Keep a session that holds nothing for the next try (a standby asks every
        second: a new session each time cost PostgreSQL a backend and a TLS handshake);
        close any other, which releases what it held."""
        if reuse and not self._closed and len(self._standby_sessions) < STANDBY_SESSIONS:
            self._standby_sessions.append(conn)
            return
        try:
            await conn.close(timeout=self._timeout)  # ends the session: locks released
        except BaseException:
            conn.terminate()
            raise


__all__ = ["EVENTS_CHANNEL", "PROJECTIONS_CHANNEL", "PostgresEventStore", "StoreError"]


class PgLeaderSet:
    """Session advisory locks, one per leadership name, all on one connection."""

    def __init__(self, conn: Any, names: Iterable[str], timeout: float) -> None:
        self._conn = conn
        self._wanted = sorted(set(names))
        self._timeout = timeout
        self.held: frozenset[str] = frozenset()

    async def take_more(self) -> bool:
        """Try the locks not held yet (and check the session is alive); True on a win."""
        missing = [n for n in self._wanted if n not in self.held]
        with mapped():
            if not missing:
                await self._conn.fetchval("SELECT 1", timeout=self._timeout)
                return False
            got = await self._conn.fetchval(
                "SELECT array_agg(n) FROM unnest($1::text[]) AS n"
                " WHERE pg_try_advisory_lock(hashtextextended(n, 0))", missing,
                timeout=self._timeout)
        if not got:
            return False
        self.held = self.held | frozenset(got)
        return True


async def _light_reset(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release: out of any transaction a cancelled task
    left open. asyncpg's default reset (RESET ALL, UNLISTEN, unlock every advisory lock,
    close cursors) costs a round trip per release, and pool connections never take
    session state: LISTEN and session locks live on connections of their own."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
