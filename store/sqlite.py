"""The embedded event log: SQLite on one writer thread, for single-process deployments."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog

from schemas import EventEnvelope, NewEvent
from store.errors import StoreError, StoreUnavailable
from store.event_query import conditions
from store.metrics import APPEND_SECONDS
from store.protocol import (
    ANY_VERSION,
    AppendResult,
    EventQuery,
    FilteredPage,
    LogRow,
    Snapshot,
    check_causes,
)
from store.registry import EventTypes
from store.sqlite_projection import SqliteProjectionTx, to_sqlite_params
from store.sqlite_writer import GroupCommit, Pending, utc

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Numbered migrations; each runs once, in order, recorded in schema_migrations.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL,
            type TEXT NOT NULL,
            data BLOB NOT NULL,
            occurred_at TEXT NOT NULL,
            correlation_id TEXT,
            causation_id TEXT,
            project_id TEXT,
            user_id TEXT,
            UNIQUE (stream, version)
        )""",
        """CREATE TABLE reactions (
            stream TEXT NOT NULL,
            cause TEXT NOT NULL,
            version INTEGER NOT NULL,
            position INTEGER NOT NULL,
            PRIMARY KEY (stream, cause)
        )""",
        """CREATE TABLE snapshots (
            stream TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            type TEXT NOT NULL,
            data BLOB NOT NULL
        )""",
        """CREATE TABLE projection_checkpoints (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL
        )""",
    )),
    # read_correlated: everything one request caused, without scanning the log
    (2, ("CREATE INDEX events_correlation ON events (correlation_id)",)),
)

_COLUMNS = (
    "position, event_id, stream, version, type, data, occurred_at,"
    " correlation_id, causation_id, project_id, user_id"
)
_SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (stream, version, type, data) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (stream) DO UPDATE SET version = excluded.version,"
    " type = excluded.type, data = excluded.data WHERE excluded.version >= snapshots.version"
)
#: how many of its latest events the store keeps in memory for its readers (at least)
TAIL_EVENTS = 20_000
#: how often a follower (another process writes the file) looks for new events
FOLLOW_POLL_SECONDS = 0.2
#: events whose causation id is neither an earlier event's id nor the recorded cause of
#: their own append (see EventStore.unexplained_causes)
_UNEXPLAINED = (
    f"SELECT {_COLUMNS} FROM events e WHERE e.causation_id IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM reactions r WHERE r.stream = e.stream"
    " AND r.cause = e.causation_id AND r.version >= e.version)"
    " AND NOT EXISTS (SELECT 1 FROM events c WHERE c.event_id = e.causation_id"
    " AND c.position < e.position)"
    " ORDER BY e.position LIMIT ?")
#: how long a whole-log analysis query may take
ANALYSIS_TIMEOUT = 3600.0
#: SQLite's default limit on host parameters is 999 in old builds
_IN_CHUNK = 500


def _utc_text(when: dt.datetime) -> str:
    return utc(when).isoformat()


def _envelope(row: tuple[Any, ...]) -> EventEnvelope:
    return EventEnvelope(
        position=row[0], event_id=uuid.UUID(row[1]), stream=row[2], version=row[3],
        type=row[4], data=msgspec.Raw(bytes(row[5])),
        occurred_at=dt.datetime.fromisoformat(row[6]), correlation_id=row[7],
        causation_id=row[8], project_id=row[9], user_id=row[10],
    )


def _page(events: list[EventEnvelope], limit: int, last: int) -> FilteredPage:
    """A filtered page: resume after the last event when the page is full, else after
    the last position the read looked at."""
    scanned = events[-1].position if len(events) >= limit else last
    return FilteredPage(events=events, scanned=scanned)


def _position(event: EventEnvelope) -> int:
    return event.position


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _migrate(conn: sqlite3.Connection) -> list[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied = []
    for number, statements in MIGRATIONS:
        with _transaction(conn):
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (number,)
            ).fetchone()
            if done:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (number, _utc_text(dt.datetime.now(dt.UTC))),
            )
            applied.append(number)
    return applied


class _transaction:
    """BEGIN IMMEDIATE … COMMIT on a connection, ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:  # some errors already rolled SQLite back
            self._conn.execute("ROLLBACK")


class SqliteEventStore:
    """EventStore and ProjectionStore on one SQLite file (or ``":memory:"``).

    All writes go through one connection on one dedicated thread, so commit order is
    position order and the log is gap-free; a second connection serves reads on the event
    loop (WAL lets it read while the writer writes). The store must be its file's only
    writer: it keeps the events it committed last in memory (the tail), so that
    subscribers, woken in-process when an append commits, follow the log without reading
    it back.

    A store opened as a ``follower`` reads a file another process writes (the replay tool
    beside ``orrery up``): it reads every event from the file, follows by polling, and
    refuses appends; it may still fold projections (the file serialises its writers).
    """

    def __init__(
        self, path: str, types: EventTypes, writer: sqlite3.Connection,
        reader: sqlite3.Connection | None, *, timeout: float, follower: bool = False,
    ) -> None:
        self._path = path
        self._types = types
        self._timeout = timeout
        self._writer_conn = writer
        self._reader_conn = reader or writer
        #: reads run on the loop over their own connection; ":memory:" has only one
        self._inline_reads = reader is not None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="orrery-sqlite-w")
        #: held by every write and for the whole of a projection transaction
        self._write_lock = asyncio.Lock()
        #: set and replaced each time an append commits past ``_head`` (wakes subscribers)
        self._committed = asyncio.Event()
        self._moved = asyncio.Event()
        #: projection checkpoints as this process (the only writer) last committed them
        self._checkpoints: dict[str, int] = {}
        self._head = 0
        #: the events committed here after ``_tail_floor``, in order (see _from_tail)
        self._tail: list[EventEnvelope] = []
        self._tail_floor = 0
        self._closed = False
        self._appends: GroupCommit | None = None
        self._follower = follower

    @classmethod
    async def open(
        cls, path: str | Path, types: EventTypes, *, op_timeout: float = 30.0,
        follower: bool = False,
    ) -> SqliteEventStore:
        """Open (creating and migrating if needed) the log at ``path``; as a ``follower``
        when another process is (or may be) its writer."""
        name = str(path)
        memory = name == ":memory:"
        async with asyncio.timeout(op_timeout):
            writer = await asyncio.to_thread(_connect, name)
        try:
            async with asyncio.timeout(op_timeout):
                applied = await asyncio.to_thread(_migrate, writer)
                reader = None if memory else await asyncio.to_thread(_connect, name)
        except BaseException:
            writer.close()
            raise
        store = cls(name, types, writer, reader, timeout=op_timeout, follower=follower)
        store._head = store._tail_floor = await store.head()
        store._appends = GroupCommit(writer, store._writer.submit, asyncio.get_running_loop(),
                                     store._note_commit, store._head)
        log.info("sqlite_store_opened", path=name, migrations=applied, head=store._head)
        return store

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the SQLite event store is closed")
        future = asyncio.get_running_loop().run_in_executor(executor, fn)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that
            # arrives as the thread finishes, leaving the caller's task uncancellable.
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError as exc:
            raise StoreUnavailable(f"SQLite did not answer within {self._timeout}s") from exc
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._write_lock:
            return await self._run(self._writer, lambda: fn(self._writer_conn))

    async def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        conn = self._reader_conn
        return await self._on_reader(lambda: conn.execute(sql, args).fetchall())

    async def _on_reader(self, fn: Callable[[], T]) -> T:
        """Run a read. With a reader connection of its own (a file), on the event loop:
        WAL never makes a reader wait for the writer, and the query is shorter than a hop
        to a thread and back. ``:memory:`` has one connection, so reads go to its thread."""
        if not self._inline_reads:
            return await self._run(self._writer, fn)
        if self._closed:
            raise StoreUnavailable("the SQLite event store is closed")
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- EventStore --------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int,
        *, cause: str | None = None, causes: Sequence[tuple[str, int]] = (),
    ) -> AppendResult:
        if expected_version < ANY_VERSION:
            raise ValueError(f"expected_version must be >= {ANY_VERSION}")
        check_causes(cause, causes, len(events))
        for event in events:
            self._types.validate(event.type, event.data)
        if self._follower:
            raise StoreError("a follower store reads the log; another process appends")
        if self._closed or self._appends is None:
            raise StoreUnavailable("the SQLite event store is closed")
        outcome: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        pending = Pending(stream, list(events), expected_version, cause, outcome,
                          causes=tuple(causes))
        started = time.perf_counter()
        self._appends.put(pending)
        try:
            async with asyncio.timeout(self._timeout):
                result = await outcome
        except TimeoutError as exc:
            pending.abandoned = True  # not taken yet: it never will be
            raise StoreUnavailable(f"SQLite did not commit within {self._timeout}s") from exc
        APPEND_SECONDS.observe(time.perf_counter() - started)
        return result

    def _kick_appends(self) -> None:
        """A projection transaction that held the writer ended: commit what queued meanwhile."""
        if self._appends is not None and not self._closed:
            self._appends.kick()

    def _note_commit(self, written: list[EventEnvelope]) -> None:
        """Events just committed: into the tail, and every subscriber woken."""
        self._tail.extend(written)
        if len(self._tail) > 2 * TAIL_EVENTS:
            drop = len(self._tail) - TAIL_EVENTS
            self._tail_floor = self._tail[drop - 1].position
            del self._tail[:drop]
        if written[-1].position > self._head:
            self._head = written[-1].position
            self._committed.set()
            self._committed = asyncio.Event()

    def _from_tail(self, after: int, limit: int) -> list[EventEnvelope] | None:
        """Events after ``after`` from memory, or None when the tail does not reach back
        that far. The tail holds every event this store committed after ``_tail_floor``
        (it is the file's only writer), in position order."""
        if after < self._tail_floor or self._follower:
            return None
        start = bisect.bisect_right(self._tail, after, key=_position)
        return self._tail[start:start + limit]

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[EventEnvelope]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version >= ?"
            " ORDER BY version LIMIT ?",
            (stream, from_version, -1 if limit is None else limit),
        )
        return [_envelope(r) for r in rows]

    async def stream_version(self, stream: str) -> int:
        rows = await self._read(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
        )
        return int(rows[0][0])

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[EventEnvelope]:
        recent = self._from_tail(after, limit)
        if recent is not None:
            return recent
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, limit),
        )
        return [_envelope(r) for r in rows]

    async def scan_log(self, after: int, until: int, limit: int) -> Sequence[LogRow]:
        rows = await self._read(
            "SELECT position, stream, version, type, data, occurred_at, causation_id"
            " FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
            (after, until, limit))
        fromiso = dt.datetime.fromisoformat
        return [(p, s, v, t, bytes(d), fromiso(at), c) for p, s, v, t, d, at, c in rows]

    async def read_filtered(self, query: EventQuery, after: int = 0, limit: int = 100,
                            scan: int | None = 10_000) -> FilteredPage:
        """From the in-memory tail when it reaches back to ``after`` (windowed reads), else
        in SQL (an unbounded read lets the stream index do the work)."""
        window = None if scan is None else self._from_tail(after, scan)
        if window is not None:
            found = [e for e in window if query.matches(e)][:limit]
            last = window[-1].position if window else after
            return _page(found, limit, last)
        end = (await self._read(
            "SELECT max(position) FROM (SELECT position FROM events WHERE position > ?"
            " ORDER BY position LIMIT ?)", (after, scan)))[0][0] if scan is not None else (
            await self._read("SELECT max(position) FROM events WHERE position > ?", (after,))
        )[0][0]
        if end is None:
            return FilteredPage(events=[], scanned=after)
        where, args = conditions(query, "sqlite", 4)
        rows = await self._read(to_sqlite_params(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND position <= $2"
            f" AND {where} ORDER BY position LIMIT $3"), (after, end, limit, *args))
        return _page([_envelope(r) for r in rows], limit, int(end))

    async def subscribe(
        self, after: int = 0, batch: int = 1000
    ) -> AsyncIterator[list[EventEnvelope]]:
        position = after
        while True:
            events = await self.read_all(position, batch)
            if events:
                position = events[-1].position
                yield events
            elif not await self._wait_past(position):
                return

    async def _wait_past(self, position: int) -> bool:
        """Wait until an append commits past ``position``; False once the store closes."""
        if self._follower:  # the writer is elsewhere: nobody here is woken by its commits
            while not self._closed:
                if await self.head() > position:
                    return True
                await asyncio.sleep(FOLLOW_POLL_SECONDS)  # polled: no signal crosses processes
            return False
        while not self._closed and self._head <= position:
            await self._committed.wait()
        return not self._closed

    async def read_correlated(self, correlation_ids: Sequence[str]) -> list[EventEnvelope]:
        ids = list(dict.fromkeys(correlation_ids))
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += await self._read(
                f"SELECT {_COLUMNS} FROM events WHERE correlation_id IN ({marks})",
                tuple(chunk))
        rows.sort(key=lambda r: int(r[0]))
        return [_envelope(r) for r in rows]

    async def unexplained_causes(self, limit: int = 100) -> list[EventEnvelope]:
        if self._inline_reads:  # a file: the whole-log query gets a connection of its own
            async with asyncio.timeout(ANALYSIS_TIMEOUT):
                rows = await asyncio.to_thread(self._unexplained_rows, limit)
        else:
            conn = self._reader_conn
            rows = await self._run(self._writer,
                                   lambda: conn.execute(_UNEXPLAINED, (limit,)).fetchall())
        return [_envelope(r) for r in rows]

    def _unexplained_rows(self, limit: int) -> list[tuple[Any, ...]]:
        """On a connection of its own: a whole-log query runs beside the loop's reads."""
        conn = _connect(self._path)
        try:
            return conn.execute(_UNEXPLAINED, (limit,)).fetchall()
        finally:
            conn.close()

    async def head(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(position), 0) FROM events", ())
        return int(rows[0][0])

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        args = (snapshot.stream, snapshot.version, snapshot.type, bytes(snapshot.data))
        await self._write(lambda c: c.execute(_SAVE_SNAPSHOT, args))

    async def load_snapshot(self, stream: str) -> Snapshot | None:
        rows = await self._read(
            "SELECT stream, version, type, data FROM snapshots WHERE stream = ?", (stream,)
        )
        if not rows:
            return None
        s, version, type_, data = rows[0]
        return Snapshot(stream=s, version=version, type=type_, data=bytes(data))

    async def close(self) -> None:
        if self._closed:
            return
        async with self._write_lock:
            self._closed = True
            self._committed.set()
            if self._appends is not None:
                self._appends.fail_queued(StoreUnavailable("the SQLite event store closed"))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._writer_conn.close)
            if self._inline_reads:
                self._reader_conn.close()
            self._writer.shutdown(wait=False)
        log.info("sqlite_store_closed", path=self._path)

    # -- ProjectionStore ---------------------------------------------------------------

    async def projection_checkpoint(self, name: str) -> int:
        rows = await self._read(
            "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
        )
        return int(rows[0][0]) if rows else 0

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read projection tables; sees only committed projection transactions."""
        statement = to_sqlite_params(sql)
        if self._inline_reads:
            return await self._read(statement, args)
        async with self._write_lock:  # ":memory:": one connection, so wait out open txs
            return await self._read(statement, args)

    async def load(self, stream: str) -> tuple[Snapshot | None, list[EventEnvelope]]:
        """The latest snapshot and the events after it (one job on the reader thread)."""
        conn = self._reader_conn

        def both() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            snap = conn.execute(
                "SELECT stream, version, type, data FROM snapshots WHERE stream = ?", (stream,)
            ).fetchall()
            after = snap[0][1] if snap else 0
            return snap, conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version > ?"
                " ORDER BY version", (stream, after)).fetchall()

        snap, rows = await self._on_reader(both)
        snapshot = None if not snap else Snapshot(
            stream=snap[0][0], version=snap[0][1], type=snap[0][2], data=bytes(snap[0][3]))
        return snapshot, [_envelope(r) for r in rows]

    def projection_tx(self, name: str, expected: int, new: int) -> SqliteProjectionTx:
        return SqliteProjectionTx(self, {name: expected}, new)

    def projections_tx(self, expected: Mapping[str, int], new: int, *,
                       defer_empty: bool = False, bulk: bool = False) -> SqliteProjectionTx:
        return SqliteProjectionTx(self, expected, new, defer_empty=defer_empty)

    def _projections_moved(self, names: Iterable[str], position: int) -> None:
        for name in names:
            self._checkpoints[name] = position
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_for_projection(self, name: str, position: int, timeout: float) -> bool:
        """True once ``name``'s checkpoint reaches ``position``; False after ``timeout``
        seconds. This process is the log's only writer, so after one read the checkpoint
        is known from its own projection commits, each of which wakes the waiters (a
        follower, whose writer is elsewhere, reads the checkpoint until it is there)."""
        if self._follower:
            return await self._poll_projection(name, position, timeout)
        if name not in self._checkpoints:
            known = await self.projection_checkpoint(name)
            self._checkpoints[name] = max(known, self._checkpoints.get(name, 0))
        try:
            async with asyncio.timeout(timeout):
                while self._checkpoints[name] < position:
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True

    async def _poll_projection(self, name: str, position: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if await self.projection_checkpoint(name) >= position:
                        break
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)  # polled, as _wait_past
        except TimeoutError:
            return False
        return True

    async def reset_projection(self, name: str, ddl_drop: Sequence[str],
                               ddl: Sequence[str] = ()) -> None:
        def reset(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                for statement in ddl_drop:
                    conn.execute(statement)
                conn.execute("DELETE FROM projection_checkpoints WHERE name = ?", (name,))
                for statement in ddl:
                    conn.execute(statement)

        await self._write(reset)
        self._checkpoints[name] = 0
        log.info("projection_reset", projection=name)

    async def run_ddl(self, ddl: Sequence[str]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                for statement in ddl:
                    conn.execute(statement)

        await self._write(run)


if TYPE_CHECKING:
    from store.protocol import EventStore, ProjectionStore

    def _conforms(store: SqliteEventStore) -> tuple[EventStore, ProjectionStore]:
        return store, store
