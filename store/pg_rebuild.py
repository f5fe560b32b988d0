"""Rebuilding projections on PostgreSQL: folded beside the live tables, then swapped in.

A rebuild creates the projections' tables afresh in a schema of its own (the shadow),
folds the log into them up to the head it saw when it began, and then, in one short
transaction, puts them in place of the live tables and moves the checkpoints. Until then
readers see the old tables whole, and a live runner folds on into them undisturbed.

The fold runs on connections whose ``search_path`` puts the shadow schema first, so a
projection's own SQL (its DDL, ``execute``, ``fetch``, the whole-row writes) reaches the
shadow tables without knowing. Nobody reads the shadow, so its writes need no checkpoint:
a batch's writes commit without waiting for the disk (the swap's commit, which does wait,
comes after them in the WAL), rows the fold has not written before go by COPY (several
batches' worth at a time: a put of one still waiting replaces it in memory), the others
as whole-row upserts, and the secondary indexes and planner statistics are built once the
rows are in.

The fold reads only the log's columns its projections say they look at (``fields``;
NULL for the others, placeholders in the envelopes): parsing the event's time and id was
close to half of what reading the log cost in Python.

Projections whose rows each come from one stream's events alone (``per_stream``) are
folded side by side: each worker process takes the streams of one hash partition. The
others are folded by one worker over every stream.

The swap locks the live tables, then the checkpoints' rows (the order a live runner's
commit takes them in), folds into the shadow whatever the live checkpoints passed
meanwhile (most of it beforehand, without the locks), drops the live tables and moves the
shadow's in, indexes and statistics with them. The checkpoints land at the furthest of
the live checkpoints and the rebuild's head: a live runner whose checkpoint is there goes
on (its rows in memory are the rebuilt rows: a fold is a function of the log), any other
finds its checkpoint moved and follows on from there. The swap waits for its locks
``SWAP_LOCK_TIMEOUT`` at most and tries again later: readers queue behind a lock request,
so a reader's long transaction must not hold them all up through the swap.

A rebuild holds an advisory lock named after its schema for as long as it runs; the next
rebuild drops the shadow schemas nobody holds (left by a rebuild that was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import multiprocessing
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import cache
from multiprocessing.connection import Connection as Pipe
from operator import itemgetter
from typing import Any, NamedTuple

import asyncpg
import msgspec
import structlog

from schemas import EventEnvelope
from store.pg_common import PROJECTIONS_CHANNEL, init_conn, mapped
from store.pg_projection import _CHECKPOINTS, _ENSURE_CHECKPOINTS
from store.postgres import _COLUMNS, DDL_LOCK_KEY
from store.projections import (
    Progress,
    Projection,
    _cancel,
    folded_types,
    read_fields,
    split_ddl,
    tables_of,
)
from store.tables import Table, pg_delete, pg_put, pg_select

log = structlog.get_logger(__name__)

SHADOW_PREFIX = "orrery_rebuild_"
#: how many times the swap folds what the live checkpoints passed before it takes the
#: locks (each round is shorter than the one before, as the live runners are near)
CATCH_UP_ROUNDS = 3
#: how long the swap waits for the live tables' and checkpoints' locks, and how many times
#: it tries
SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 8
#: the advisory locks a rebuild holds on its schema's name are of this class (the first
#: of the two keys)
SHADOW_LOCK_CLASS = 0x6F72_7262
#: how often the coordinator looks at its workers' reports (seconds)
POLL_SECONDS = 0.01
#: the collector's thresholds of a fold in this process (`replay.rebuild`): a young
#: collection every 50,000 allocations, not 700 (a fold allocates a few objects per event
#: and keeps few; the collections walked the rows a batch carries over and over: a seventh
#: of a fold's time). A worker process runs without the collector: its few collections
#: still walked the rows it carries (30-48 ms a worker on the 300k-event boots log), a
#: fold makes next to no cycles, and the worker lives for one rebuild.
WORKER_GC_THRESHOLDS = (50_000, 20, 100)
#: how many new rows of a table a fold's writer keeps before it COPYs them (`_Written`)
COPY_ROWS = 5_000
#: how many index builds and ANALYZEs run at once when the rows are in
FINISHING_AT_ONCE = 4
#: the statistics target of the ANALYZE of the rebuilt tables' indexed columns: a sample of
#: 3,000 rows (not 30,000), enough for the planner to choose between the indexes until
#: the store's statistics or autovacuum sample the table at the server's target (sorting
#: the larger sample's text keys was a quarter of the finishing's time, before the index
#: builds could start)
STATISTICS_TARGET = 10
_JSON = msgspec.json.Encoder()
_CHECKPOINTS_LOCKED = ("SELECT name, position FROM projection_checkpoints"
                       " WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE")
_MOVE_CHECKPOINTS = ("UPDATE projection_checkpoints SET position = $2"
                     " WHERE name = ANY($1::text[])")
_INDEXED_COLUMNS = ("SELECT DISTINCT a.attname FROM pg_index AS i JOIN pg_attribute AS a"
                    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                    " WHERE i.indrelid = $1::regclass ORDER BY a.attname")
#: what an envelope holds in a field its projections do not read (``Projection.fields``)
_NIL_ID = uuid.UUID(int=0)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: a CREATE INDEX's table and column list; a plain column's name
_INDEX_ON = re.compile(r"\bON\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE | re.DOTALL)
_PLAIN = re.compile(r"\w+")
_LIVE_TABLES = ("SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n"
                " ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'"
                " AND c.relname = ANY($2::text[]) ORDER BY c.relname")


class Part(NamedTuple):
    """A worker's share of the log: the streams whose hash is ``remainder`` modulo
    ``modulus``."""

    remainder: int
    modulus: int


class Job(NamedTuple):
    """What one worker folds: these projections (their positions in the rebuild's list),
    over the streams of ``part`` (None: every stream)."""

    projections: tuple[int, ...]
    part: Part | None


def plan(projections: Sequence[Projection], workers: int) -> list[Job]:
    """The per-stream projections split over ``workers`` partitions, the others on one
    worker of their own."""
    split = [i for i, p in enumerate(projections) if getattr(p, "per_stream", False)]
    whole = tuple(i for i in range(len(projections)) if i not in split)
    if workers <= 1 or not split:
        return [Job(tuple(range(len(projections))), None)]
    jobs = [Job(tuple(split), Part(k, workers)) for k in range(workers)]
    return [*jobs, Job(whole, None)] if whole else jobs


class _Written:
    """The keys a fold has written to each shadow table: a put of a key not among them
    can go by COPY (no row to replace), until the fold's own SQL writes (``execute``)
    make that unknowable. Rows for COPY wait in ``unsent`` (per table, by key) until
    ``copy_rows`` of them are there, a read or SQL of the fold's own needs them, or the
    fold ends: a later put of one of them replaces it there, a delete drops it. ``lock``:
    one operation at a time on the fold's writer."""

    def __init__(self, copy_rows: int = COPY_ROWS) -> None:
        self.keys: dict[str, set[tuple[Any, ...]]] = {}
        self.unsent: dict[Table, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        self.copy_rows = copy_rows
        self.copy = True
        self.lock = asyncio.Lock()


class ShadowTx:
    """A batch's transaction in the shadow schema: what ``apply`` writes to in a rebuild.

    Writes are queued and sent by ``commit``. ``before`` is the commit of the batch
    before, still in flight: reads of committed rows wait for it.
    """

    def __init__(self, conn: Any, schema: str, since: int, written: _Written,
                 before: asyncio.Future[None] | None = None) -> None:
        self._conn, self._schema, self._since = conn, schema, since
        self._written, self._before = written, before
        self._queue: list[tuple[str, Any, Any]] = []

    @property
    def since(self) -> int:
        return self._since

    async def execute(self, sql: str, *args: object) -> None:
        self._queue.append(("sql", sql, args))
        self._written.copy = False

    async def put_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._queue.append(("put", table, rows))

    async def delete_rows(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        if keys:
            self._queue.append(("delete", table, keys))

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        if not values:
            return []
        await self._settled()
        async with self._written.lock:
            with mapped():
                await self._copy(table)
                rows = await self._conn.fetch(pg_select(table, column), list(values))
        return [tuple(r) for r in rows]

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """A query that sees this batch's writes: they are sent first (nobody else reads
        the shadow, so they need no transaction of their own)."""
        await self._settled()
        await self.commit()
        async with self._written.lock:
            with mapped():
                await self.send_unsent()
                rows = await self._conn.fetch(sql, *args)
        return [tuple(r) for r in rows]

    async def commit(self) -> None:
        """Send the queued writes, in the order queued, in one transaction."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        async with self._written.lock:
            await self._send(queue)

    async def send_unsent(self) -> None:
        """COPY every row still waiting (the caller holds the writer's lock)."""
        for table in list(self._written.unsent):
            await self._copy(table)

    async def finish(self) -> None:
        """The fold is done: COPY the rows still waiting."""
        async with self._written.lock:
            await self.send_unsent()

    async def _send(self, queue: Sequence[tuple[str, Any, Any]]) -> None:
        with mapped():
            async with self._conn.transaction():
                for kind, what, args in queue:
                    if kind == "sql":
                        await self.send_unsent()
                        await self._conn.execute(what, *args)
                    elif kind == "delete":
                        await self._delete(what, args)
                    else:
                        await self._put(what, args)
                for table, unsent in list(self._written.unsent.items()):
                    if len(unsent) >= self._written.copy_rows:
                        await self._copy(table)

    async def _put(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        key, record = _getters(table)
        written = self._written.keys.setdefault(table.name, set())
        unsent = self._written.unsent.setdefault(table, {})
        known: list[Mapping[str, Any]] = []
        copy = self._written.copy
        for row in rows:
            k = key(row)
            if k in unsent or (copy and k not in written):
                unsent[k] = record(row)
                written.add(k)
            else:
                known.append(row)
        if known:
            await self._conn.execute(pg_put(table), _JSON.encode(known))

    async def _copy(self, table: Table) -> None:
        """COPY the table's rows that wait. Each COPY of 1,000 rows or more costs
        PostgreSQL 15 ~2.7 ms of its own (it registers a slot a row, up to 1,000, with the
        transaction, and places each of those identical registrations by probing past the
        others), so rows go several batches' worth at a time."""
        unsent = self._written.unsent.pop(table, None)
        if unsent:
            await self._conn.copy_records_to_table(table.name, records=list(unsent.values()),
                                                   columns=table.names,
                                                   schema_name=self._schema)

    async def _delete(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        key, _ = _getters(table)
        written = self._written.keys.setdefault(table.name, set())
        unsent = self._written.unsent.get(table, {})
        sent: list[Mapping[str, Any]] = []
        for row in keys:
            k = key(row)
            written.discard(k)
            if unsent.pop(k, None) is None:
                sent.append(row)
        if sent:
            await self._conn.execute(pg_delete(table), _JSON.encode(sent))

    async def _settled(self) -> None:
        if self._before is not None:
            await self._before


#: told how a fold goes: (events folded in the last batch, position folded up to)
Report = Callable[[int, int], None]


async def fold(reader: Any, writer: Any, schema: str, projections: Sequence[Projection],
               after: int, until: int, *, part: Part | None = None, batch: int,
               written: _Written, report: Report) -> None:
    """Fold the events in (``after``, ``until``] of the projections' types (of ``part``'s
    streams) into the shadow tables: read on ``reader`` (the next batch read while one is
    folded), written on ``writer`` (a batch's writes committing while the next is folded).
    ``report`` is told of each batch."""
    if not projections or until <= after:
        return
    types = folded_types(projections)
    sql = f"SELECT {_columns(read_fields(projections))} FROM events" \
        " WHERE position > $1 AND position <= $2"
    args: list[object] = [after, until]
    if types is not None:
        args.append(list(types))
        sql += f" AND type = ANY(${len(args)}::text[])"
    if part is not None:
        args.extend([part.modulus, part.remainder])
        sql += f" AND (hashtext(stream) & 2147483647) % ${len(args) - 1} = ${len(args)}"
    sql += " ORDER BY position"
    since = after
    tx: ShadowTx | None = None
    commit: asyncio.Future[None] | None = None
    with mapped():
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            # in the log's order by its key: the planner, guessing that the stream filter
            # keeps 0.5 % of the rows (it keeps half), sorted them after a whole scan,
            # on disk past work_mem
            await reader.execute("SET LOCAL enable_sort = off")
            cursor = await reader.cursor(sql, *args)
            reading: asyncio.Future[list[Any]] = asyncio.ensure_future(cursor.fetch(batch))
            try:
                while rows := await reading:
                    reading = asyncio.ensure_future(cursor.fetch(batch))
                    events = [_sparse_envelope(r) for r in rows]
                    tx = ShadowTx(writer, schema, since, written, commit)
                    for projection in projections:
                        await projection.apply(tx, events)
                    if commit is not None:
                        await commit
                    commit = asyncio.ensure_future(tx.commit())
                    since = events[-1].position
                    report(len(events), since)
                if commit is not None:
                    await commit
                if tx is not None:
                    await tx.finish()
            finally:
                for future in (reading, commit):
                    await _cancel(future)
    report(0, until)


def _columns(fields: frozenset[str] | None) -> str:
    """The select list of a fold's read: every column of the log the ``fields`` name
    (None: all), NULL in place of the others."""
    columns = [c.strip() for c in _COLUMNS.split(",")]
    return ", ".join(c if fields is None or c in fields else "NULL" for c in columns)


def _sparse_envelope(r: Any) -> EventEnvelope:
    """An envelope from a row of `_columns`: a placeholder where the column was not read
    (NULL; the columns that may be NULL in the log are None either way)."""
    # positional, in the envelope's field order: event_id, stream, version, position,
    # type, data, occurred_at, correlation_id, causation_id, project_id, user_id
    return EventEnvelope(r[5] or _NIL_ID, r[1], r[2] or 0, r[0], r[3], msgspec.Raw(r[4]),
                         r[6] or _EPOCH, r[7], r[8], r[9], r[10])


async def shadow_connection(dsn: str, path: str | None, timeout: float) -> Any:
    """A connection whose unqualified names reach the shadow first (``path``; None: the
    database's own path) and whose commits do not wait for the disk."""
    with mapped():
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await init_conn(conn)
            await conn.execute("SET synchronous_commit = off")
            if path is not None:
                await conn.execute(f"SET search_path = {path}")
        except BaseException:
            await conn.close()
            raise
    return conn


class Shadow:
    """One rebuild: its schema, its connections, its workers and the swap."""

    def __init__(self, dsn: str, projections: Sequence[Projection], *, batch: int,
                 workers: int, timeout: float, progress: Progress) -> None:
        self.dsn, self.projections, self.batch = dsn, list(projections), batch
        self.workers, self.timeout, self.progress = workers, timeout, progress
        self.schema = f"{SHADOW_PREFIX}{uuid.uuid4().hex[:12]}"
        self.names = [p.name for p in self.projections]
        self.tables = [t for p in self.projections for t in tables_of(p.ddl)]
        self.live_schema = "public"
        self.live_path = "public"

    @property
    def path(self) -> str:
        return f"{self.schema}, {self.live_path}"

    async def run(self, target: int) -> int:
        """Rebuild up to ``target`` at least; returns the checkpoint the swap set."""
        admin = await shadow_connection(self.dsn, None, self.timeout)
        try:
            with mapped():
                self.live_path = await admin.fetchval("SELECT current_setting('search_path')")
                self.live_schema = await admin.fetchval("SELECT current_schema()")
                await admin.execute("SELECT pg_advisory_lock($1, hashtext($2))",
                                    SHADOW_LOCK_CLASS, self.schema)
                await _drop_orphans(admin)
                await admin.execute(f"CREATE SCHEMA {self.schema}")
                await admin.execute(f"SET search_path = {self.path}")
                for projection in self.projections:
                    for sql in split_ddl(projection.ddl)[0]:
                        await admin.execute(sql)
            # the finishing's and the swap's connections, opened while the workers fold
            opening = asyncio.ensure_future(self._connections(FINISHING_AT_ONCE))
            try:
                began = time.perf_counter()
                await self._fold_all(target)
                folded = time.perf_counter()
                spare = await opening
                try:
                    await self._finish_tables(spare)
                    finished = time.perf_counter()
                    reached = await self._swap(admin, spare[0], target)
                finally:
                    for conn in spare:
                        await conn.close()
            finally:
                await _cancel(opening)
            log.info("projections_rebuild_phases", fold=round(folded - began, 3),
                     tables=round(finished - folded, 3),
                     swap=round(time.perf_counter() - finished, 3))
            return reached
        finally:
            with contextlib.suppress(Exception):
                await admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            await admin.close()

    async def _connections(self, count: int) -> list[Any]:
        """``count`` connections to the shadow, opened side by side (all or none)."""
        opened = await asyncio.gather(
            *(shadow_connection(self.dsn, self.path, self.timeout) for _ in range(count)),
            return_exceptions=True)
        failed = [c for c in opened if isinstance(c, BaseException)]
        if failed:
            for conn in opened:
                if not isinstance(conn, BaseException):
                    await conn.close()
            raise failed[0]
        return opened

    async def _fold_all(self, target: int) -> None:
        jobs = plan(self.projections, self.workers)
        if len(jobs) == 1:
            [job] = jobs
            positions = {0: 0}

            def report(events: int, position: int) -> None:
                self._report(positions, 0, events, position, target)

            await self._fold_job(job, 0, target, report)
            return
        await self._fork(jobs, target)

    def _report(self, positions: dict[int, int], worker: int, events: int, position: int,
                target: int) -> None:
        positions[worker] = position
        self.progress(events, min(positions.values()), target)

    async def _fold_job(self, job: Job, after: int, until: int, report: Report) -> None:
        reader, writer = await self._connections(2)
        try:
            await fold(reader, writer, self.schema,
                              [self.projections[i] for i in job.projections], after, until,
                              part=job.part, batch=self.batch, written=_Written(),
                              report=report)
        finally:
            await writer.close()
            await reader.close()

    async def _fork(self, jobs: Sequence[Job], target: int) -> None:
        """Fold each job in a process of its own (forked: it has the projections as they
        are here); their reports come back on pipes."""
        context = multiprocessing.get_context("fork")
        started: list[tuple[Any, Pipe]] = []
        positions = dict.fromkeys(range(len(jobs)), 0)
        try:
            for job in jobs:
                theirs, ours = context.Pipe(duplex=False)
                process = context.Process(target=self._child, args=(job, target, ours),
                                          daemon=True)
                process.start()
                ours.close()
                started.append((process, theirs))
            running = set(range(len(jobs)))
            while running:
                await asyncio.sleep(POLL_SECONDS)
                for worker in sorted(running):
                    process, pipe = started[worker]
                    while pipe.poll():
                        message = pipe.recv()
                        if message[0] == "failed":
                            raise RebuildFailed(f"rebuild worker {worker}: {message[1]}")
                        self._report(positions, worker, message[1], message[2], target)
                        if message[0] == "done":
                            running.discard(worker)
                            break
                    else:
                        if process.exitcode is not None:
                            raise RebuildFailed(f"rebuild worker {worker} exited with"
                                                f" {process.exitcode} before it was done")
        finally:
            for process, pipe in started:
                if process.is_alive():
                    process.kill()
                process.join()
                pipe.close()

    def _child(self, job: Job, target: int, pipe: Pipe) -> None:
        """A worker process: fold the job on a loop of its own, report, and leave without
        running the parent's exit handlers (its connections and sockets are the
        parent's)."""
        code = 0
        try:
            signal.set_wakeup_fd(-1)  # the parent's loop's, not ours
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            asyncio.events._set_running_loop(None)  # forked from inside the parent's
            gc.disable()  # see WORKER_GC_THRESHOLDS

            def report(events: int, position: int) -> None:
                pipe.send(("progress", events, position))

            _run_loop(self._fold_job(job, 0, target, report))
            pipe.send(("done", 0, target))
        except BaseException as exc:  # everything goes back to the parent, which raises
            code = 1
            with contextlib.suppress(Exception):
                pipe.send(("failed", repr(exc)))
        finally:
            with contextlib.suppress(Exception):
                pipe.close()
            os._exit(code)

    async def _finish_tables(self, connections: Sequence[Any]) -> None:
        """The planner's statistics of each shadow table's indexed columns (what plans are
        chosen by: the whole table is sampled later, as the store's statistics or
        autovacuum see the writes), then the secondary indexes, several at once on
        ``connections``. Statistics first: ANALYZE waits for a table's index builds (their
        locks conflict), and once the builds run they keep both cores busy to the end,
        where an ANALYZE after them ran alone. An index on anything but plain columns
        (whose statistics come from the index) has its table analysed after it."""
        idle: asyncio.Queue[Any] = asyncio.Queue()
        for conn in connections:
            with mapped():
                await conn.execute(f"SET default_statistics_target = {STATISTICS_TARGET}")
            idle.put_nowait(conn)

        async def run(sql: str, *args: object) -> list[Any]:
            conn = await idle.get()
            try:
                with mapped():
                    return list(await conn.fetch(sql, *args))
            finally:
                idle.put_nowait(conn)

        builds: dict[str, list[str]] = {t: [] for t in self.tables}
        columns: dict[str, set[str]] = {t: set() for t in self.tables}
        for projection in self.projections:
            for sql in split_ddl(projection.ddl)[1]:
                on = _INDEX_ON.search(sql)
                table = on.group(1) if on else ""
                builds.setdefault(table, []).append(sql)
                # each column's first word (a name, unless it is an expression)
                names = [(c.split() or [""])[0] for c in on.group(2).split(",")] if on else []
                if table in columns and all(_PLAIN.fullmatch(c) for c in names):
                    columns[table].update(names)
                else:  # analysed after its builds, as the index's statistics need
                    columns.pop(table, None)

        async def analyze(table: str) -> None:
            keys = [r[0] for r in await run(_INDEXED_COLUMNS, f"{self.schema}.{table}")]
            named = sorted(columns.get(table, set()).union(keys))
            await run(f"ANALYZE {self.schema}.{table}"
                      + (f" ({', '.join(named)})" if named else ""))

        async def finish(table: str, indexes: list[str]) -> None:
            await asyncio.gather(*(run(sql) for sql in indexes))
            if table in self.tables and table not in columns:
                await analyze(table)

        await asyncio.gather(*(analyze(t) for t in columns))
        await asyncio.gather(*(finish(t, sqls) for t, sqls in builds.items()))

    async def _swap(self, admin: Any, reader: Any, target: int) -> int:
        """Catch the shadow up with the live checkpoints (reading on ``reader``), then put
        it in place. The locks are waited for ``SWAP_LOCK_TIMEOUT`` at most (a reader's
        long transaction would otherwise hold every reader queued behind the swap), and
        the swap tried again after a pause, up to ``SWAP_ATTEMPTS`` times."""
        position = target
        written = _Written()
        written.copy = False  # the rows are the workers' now: upsert
        for attempt in range(SWAP_ATTEMPTS):
            for _ in range(CATCH_UP_ROUNDS):
                live = await self._live_position(admin, locked=False)
                if live <= position:
                    break
                await self._catch_up(reader, admin, position, live, written)
                position = live
            swapped = await self._swap_once(admin, reader, position, written)
            if swapped is not None:
                self.progress(0, swapped, target)
                return swapped
            log.warning("rebuild_swap_waited", projections=self.names, attempt=attempt + 1)
            await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
        raise RebuildFailed(f"the live tables of {', '.join(self.names)} stayed locked"
                            f" through {SWAP_ATTEMPTS} tries of {SWAP_LOCK_TIMEOUT} each")

    async def _swap_once(self, admin: Any, reader: Any, position: int,
                         written: _Written) -> int | None:
        """One try of the swap, the shadow standing at ``position``: the checkpoint set,
        or None when a lock was not had in time (nothing changed)."""
        with mapped():
            try:
                async with admin.transaction():
                    await admin.execute("SET LOCAL synchronous_commit = on;"
                                        f" SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                    await admin.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK_KEY)
                    live_tables = [r[0] for r in await admin.fetch(
                        _LIVE_TABLES, self.live_schema, self.tables)]
                    if live_tables:
                        names = ", ".join(f"{self.live_schema}.{t}" for t in live_tables)
                        await admin.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
                    await admin.execute(_ENSURE_CHECKPOINTS, self.names)
                    live = await self._live_position(admin, locked=True)
                    if live > position:
                        await self._catch_up(reader, admin, position, live, written)
                        position = live
                    await admin.execute(f"SET LOCAL search_path = {self.live_path}")
                    for projection in self.projections:
                        for sql in projection.drop:
                            await admin.execute(sql)
                    for table in self.tables:
                        await admin.execute(f"ALTER TABLE {self.schema}.{table}"
                                            f" SET SCHEMA {self.live_schema}")
                    await admin.execute(_MOVE_CHECKPOINTS, self.names, position)
                    for name in self.names:
                        await admin.execute("SELECT pg_notify($1, $2)", PROJECTIONS_CHANNEL,
                                            f"{name} {position}")
            except asyncpg.LockNotAvailableError:
                return None
        return position

    async def _live_position(self, conn: Any, *, locked: bool) -> int:
        """The furthest live checkpoint of the rebuild's projections (0: none yet)."""
        rows = await conn.fetch(_CHECKPOINTS_LOCKED if locked else _CHECKPOINTS, self.names)
        return max((int(r[1]) for r in rows), default=0)

    async def _catch_up(self, reader: Any, writer: Any, after: int, until: int,
                        written: _Written) -> None:
        def report(events: int, position: int) -> None:
            self.progress(events, position, until)

        await fold(reader, writer, self.schema, self.projections, after, until,
                   batch=self.batch, written=written, report=report)


async def _drop_orphans(admin: Any) -> None:
    """Drop the shadow schemas of rebuilds that died (killed before they could): each
    rebuild holds an advisory lock named after its schema for as long as it runs."""
    rows = await admin.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                             SHADOW_PREFIX.replace("_", "\\_") + "%")
    for (schema,) in rows:
        if await admin.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))",
                                SHADOW_LOCK_CLASS, schema):
            log.warning("rebuild_orphan_dropped", schema=schema)
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await admin.execute("SELECT pg_advisory_unlock($1, hashtext($2))",
                                SHADOW_LOCK_CLASS, schema)


def _run_loop(main: Coroutine[Any, Any, Any]) -> None:
    """Run ``main`` on a new loop: uvloop's when it is installed, as in production."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


class RebuildFailed(Exception):
    """A worker of a rebuild failed (its error, as text) or died."""


@cache
def _getters(table: Table) -> tuple[Callable[[Mapping[str, Any]], Any],
                                    Callable[[Mapping[str, Any]], tuple[Any, ...]]]:
    """A row's key (a value, or a tuple of a key of several columns) and its values as a
    tuple in the table's column order."""
    names = table.names
    values = itemgetter(*names)
    record = values if len(names) > 1 else (lambda row: (values(row),))
    return itemgetter(*names[:table.key]), record
