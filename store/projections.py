"""Projections: query tables folded from the log, checkpoints moved in the same transaction.

A ``ProjectionHub`` folds several projections from one reading of the log: each batch is
read once and applied to every projection in one transaction that also moves each one's
checkpoint, so a process pays one read and one commit per batch, not one per table. A
projection behind the others (new, or rebuilt) gets the events past its own checkpoint
until it has caught up. With ``lead``, a hub folds only the projections it leads across
the cluster (one PostgreSQL session holds the advisory locks of all of them), so two
processes never fold the same table side by side; it stands by for the others and takes
them over when their leader goes. A hub also rebuilds its projections from the start
of the log in one read (``rebuild``); ``ProjectionRunner`` is a hub of one projection.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import structlog
from prometheus_client import Gauge, Histogram

from schemas import EventEnvelope
from store.errors import ConcurrencyError, StoreError
from store.leadership import STANDBY_SECONDS, LeaderSet, leaderships
from store.protocol import (
    EventQuery,
    EventStore,
    FilteredPage,
    ProjectionStore,
    ProjectionTxContext,
    SqlTx,
)
from store.tables import Table

log = structlog.get_logger(__name__)

PROJECTION_LAG = Gauge(
    "orrery_projection_lag_events",
    "Events committed to the log but not yet folded by the projection (head - checkpoint).",
    ["projection"],
)
PROJECTION_POSITION = Gauge(
    "orrery_projection_position",
    "The log position the projection has folded up to (its checkpoint).",
    ["projection"],
)
PROJECTION_DELAY = Histogram(
    "orrery_projection_delay_seconds",
    "From the recording of a batch's first event to the commit that folds it: how long"
    " readers of the projection wait for a write.",
    ["projection"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 5.0),
)
#: told how a rebuild goes: (events folded in the last batch, checkpoint, target position)
Progress = Callable[[int, int, int], None]
#: the leadership a hub takes to fold a projection (``projection:<name>``)
LEADERSHIP_PREFIX = "projection:"
#: how long a checkpoint move may wait after a batch that wrote nothing
DEFERRED_MOVE_SECONDS = 0.5
#: a rebuild reading only some types looks at up to this many batches' worth of the log
#: for one batch of them (a window without any still moves the checkpoints)
FILTER_WINDOW_BATCHES = 4
_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)


class Projection(Protocol):
    """A query table fed by the log.

    ``ddl`` is idempotent and portable between PostgreSQL and SQLite (``CREATE TABLE IF
    NOT EXISTS``, TEXT/BIGINT/INTEGER, ``ON CONFLICT … DO UPDATE``); ``drop`` removes the
    tables. ``apply`` folds one batch inside the transaction that moves the checkpoint,
    using ``$1, $2 …`` placeholders; it decodes ``event.data`` (a ``msgspec.Raw``, which
    msgspec decodes as it is) with msgspec. It shares that transaction with the other
    projections of its hub, so it touches only its own tables.

    A projection may also say which event types it folds (``types``, exactly: it ignores
    every other event); a rebuild then reads only those from the log. Without ``types``
    it is handed every event. One whose every row is folded from the events of a single
    stream, and no row from two, may say so (``per_stream = True``): a rebuild on
    PostgreSQL then folds the log's streams in several parts side by side, each part
    seeing only its streams' events. And one may name the envelope fields its ``apply``
    reads besides those it always gets (``fields``; `ALWAYS_READ`): a rebuild on
    PostgreSQL then reads only those of the log's columns, and the envelopes it hands
    over hold placeholders in the others (the nil id, the epoch, version 0, None), which
    the projection promised not to look at. Parsing the columns nobody reads (the
    event's time above all) was close to half of the Python time a rebuild's workers
    spent reading the log.
    """

    name: str
    ddl: Sequence[str]
    drop: Sequence[str]

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        ...


class ProjectionHost(EventStore, ProjectionStore, Protocol):
    """A log that can also hold projections (both of our stores)."""


@runtime_checkable
class RebuildsBeside(Protocol):
    """A store that rebuilds projections in tables of its own beside the live ones and
    swaps them in (PostgreSQL: store.pg_rebuild), rather than refolding in place."""

    async def rebuild_projections(self, projections: Sequence[Any], *, batch: int,
                                  workers: int, progress: Progress) -> int:
        ...


class _Regroup(Exception):
    """The set of projections this hub leads grew: fold again with all of them."""


class _Ended(Exception):
    """The log's subscription ended (the store closed)."""


class _Fold:
    """The state of one follow of the log: per projection, the checkpoint committed and
    the position folded (ahead of it while a move is deferred)."""

    def __init__(self, projections: Sequence[Projection], committed: dict[str, int]) -> None:
        self.projections = projections
        self.committed = dict(committed)
        self.seen = dict(committed)
        #: one transaction at a time: a batch's, or a deferred move's
        self.lock = asyncio.Lock()


class ProjectionHub:
    """Folds ``projections`` from one subscription to the log, exactly once per event.

    Each batch is applied in one ``projections_tx``, so rows and checkpoints move
    together. When another runner moved a checkpoint first, the hub re-reads them all and
    follows on from there. Own it with ``async with``, with ``start()``/``shutdown()``, or
    await ``run()`` inside a TaskGroup of your own.
    """

    def __init__(self, store: ProjectionHost, projections: Iterable[Projection], *,
                 batch: int = 500, lead: bool = False, linger: float = 0.0) -> None:
        self._store = store
        self._projections = {p.name: p for p in projections}
        if not self._projections:
            raise ValueError("a projection hub needs at least one projection")
        self._batch = batch
        #: seconds to wait after a batch short of ``batch`` before reading the next: for
        #: projections nobody reads the moment a write lands, one read and commit per
        #: ``linger`` instead of one per commit of the log
        self._linger = linger
        self._lead = lead
        self._positions = dict.fromkeys(self._projections, 0)
        self._head_seen = 0
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._failure: Exception | None = None
        self._log = log.bind(projections=sorted(self._projections))

    @property
    def names(self) -> list[str]:
        return list(self._projections)

    def checkpoint(self, name: str) -> int:
        """Projection ``name``'s checkpoint as this hub last knew it."""
        return self._positions[name]

    async def run(self) -> None:
        """Fold until cancelled or the log's subscription ends.

        A failing ``apply`` (or store) ends the run with its exception, the failing batch
        unapplied; waiters in ``wait_until`` are released with False at once.
        """
        self._failure = None
        try:
            if self._lead:
                await self._run_leading()
            else:
                await self._fold(list(self._projections.values()))
        except Exception as exc:
            failure = _single(exc)
            self._log.error("projection_failed", checkpoints=self._positions,
                            error=repr(failure))
            self._failure = failure
            await self._advance({})
            raise failure from None

    async def _run_leading(self) -> None:
        keys = {LEADERSHIP_PREFIX + name: name for name in self._projections}
        while True:
            try:
                async with leaderships(self._store, keys) as leader:
                    if not leader.held:
                        await asyncio.sleep(STANDBY_SECONDS)
                        continue
                    led = [self._projections[keys[k]] for k in sorted(leader.held)]
                    self._log.info("projections_led", led=[p.name for p in led])
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._fold(led), name="projection-fold")
                            if len(leader.held) < len(keys):
                                tg.create_task(self._watch(leader), name="projection-lead")
                    except* _Regroup:
                        pass
            except* StoreError as group:  # the leadership session broke: ask again
                self._log.warning("projection_leadership_lost", error=repr(group.exceptions))
                await asyncio.sleep(STANDBY_SECONDS)

    @staticmethod
    async def _watch(leader: LeaderSet) -> None:
        """Ask for the leaderships still held elsewhere now and then; regroup on a win."""
        while True:
            await asyncio.sleep(STANDBY_SECONDS)
            if await leader.take_more():
                raise _Regroup

    async def _fold(self, projections: Sequence[Projection]) -> None:
        for projection in projections:
            await self._store.run_ddl(projection.ddl)
        while True:
            positions = {p.name: await self._store.projection_checkpoint(p.name)
                         for p in projections}
            for p in projections:
                if positions[p.name] < self._positions[p.name]:  # reset by a rebuild
                    await self._store.run_ddl(p.ddl)
            await self._advance(positions)
            self._log.info("projection_following", checkpoints=positions)
            if not await self._follow(projections, positions):
                self._log.info("projection_subscription_ended", checkpoints=positions)
                return

    async def _follow(self, projections: Sequence[Projection],
                      positions: dict[str, int]) -> bool:
        """Apply batches from the lowest checkpoint; True when another runner moved one."""
        fold = _Fold(projections, positions)
        moved = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(fold), name="projection-consume")
                tg.create_task(self._flush_deferred(fold), name="projection-flush")
        except* ConcurrencyError as group:
            exc = group.exceptions[0]
            assert isinstance(exc, ConcurrencyError)
            self._log.info("projection_checkpoint_moved", stream=exc.stream,
                           current=exc.current)
            moved = True
        except* _Ended:
            pass
        return moved

    async def _consume(self, fold: _Fold) -> None:
        batches = self._store.subscribe(min(fold.seen.values()), self._batch)
        try:
            async for events in batches:
                await self._note_head(events)
                new = events[-1].position
                todo = [(p, _after(events, fold.seen[p.name])) for p in fold.projections
                        if fold.seen[p.name] < new]
                if todo:
                    async with fold.lock:
                        await self._apply(fold, new, todo)
                if self._linger and len(events) < self._batch:
                    await asyncio.sleep(self._linger)
        finally:
            await _aclose(batches)
        raise _Ended

    async def _apply(self, fold: _Fold, new: int,
                     todo: Sequence[tuple[Projection, Sequence[EventEnvelope]]]) -> None:
        """Fold one batch. A batch that writes nothing commits nothing: its checkpoint move
        waits for the next write, or for ``_flush_deferred``."""
        names = [p.name for p, _ in todo]
        expected = {name: fold.committed[name] for name in names}
        moving = self._store.projections_tx(expected, new, defer_empty=True)
        async with moving as tx:
            for projection, events in todo:
                await projection.apply(_View(tx, fold.seen[projection.name]), events)
        fold.seen.update(dict.fromkeys(names, new))
        if not moving.deferred:
            fold.committed.update(dict.fromkeys(names, new))
            delay = time.time() - min(events[0].occurred_at.timestamp() for _, events in todo)
            for name in names:
                PROJECTION_DELAY.labels(name).observe(delay)
        await self._advance(dict.fromkeys(names, new))

    async def _flush_deferred(self, fold: _Fold) -> None:
        """Move checkpoints left behind by batches that wrote nothing, so that other
        processes waiting for those positions are not kept waiting."""
        while True:
            await asyncio.sleep(DEFERRED_MOVE_SECONDS)
            async with fold.lock:
                behind = {n: fold.committed[n] for n in fold.committed
                          if fold.committed[n] < fold.seen[n]}
                if not behind:
                    continue
                new = max(fold.seen[n] for n in behind)
                behind = {n: c for n, c in behind.items() if fold.seen[n] == new}
                async with self._store.projections_tx(behind, new):
                    pass
                fold.committed.update(dict.fromkeys(behind, new))

    async def _note_head(self, events: Sequence[EventEnvelope]) -> None:
        """Track how far the log goes: exact while catching up, positions seen when live."""
        self._head_seen = max(self._head_seen, events[-1].position)
        if len(events) >= self._batch:
            self._head_seen = max(self._head_seen, await self._store.head())

    async def _advance(self, moved: Mapping[str, int]) -> None:
        async with self._moved:
            self._positions.update(moved)
            for name in moved:
                PROJECTION_POSITION.labels(name).set(self._positions[name])
                PROJECTION_LAG.labels(name).set(max(0, self._head_seen - self._positions[name]))
            self._moved.notify_all()

    async def wait_until(self, position: int, timeout: float, name: str | None = None) -> bool:
        """True once projection ``name`` (default: every projection of the hub) has folded
        up to ``position``; False after ``timeout`` s (or at once if the run has failed).

        The timeout is part of the call's contract, hence the parameter.
        """
        names = list(self._projections) if name is None else [name]

        def reached() -> bool:
            return all(self._positions[n] >= position for n in names)

        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(lambda: reached() or self._failure is not None)
        except TimeoutError:
            return False
        return reached()

    # -- rebuilding ------------------------------------------------------------------------

    async def rebuild(self, progress: Progress | None = None, *, workers: int = 1) -> int:
        """Refold every projection from position 0, reading the log once for all of them,
        up to its head at least; returns the lowest checkpoint reached.
        ``progress(events, checkpoint, target)`` is told as it goes.

        A store that rebuilds beside the live tables (PostgreSQL) does so, with up to
        ``workers`` processes for the projections that fold ``per_stream``. Elsewhere the
        tables and checkpoints are dropped and recreated and the log folded into them in
        batches, each going to every projection in one transaction; secondary indexes are
        built once the rows are in (a live runner that resumes first builds them then;
        they are ``IF NOT EXISTS``). ``progress`` is then told after every batch (events
        this hub folded in it: 0 when a live runner moved a checkpoint past it)."""
        store = self._store
        projections = list(self._projections.values())
        if isinstance(store, RebuildsBeside):
            checkpoint = await store.rebuild_projections(projections, batch=self._batch,
                                                         workers=workers,
                                                         progress=progress or _quiet)
            await self._advance(dict.fromkeys(self._projections, checkpoint))
            self._log.info("projections_rebuilt", checkpoint=checkpoint, workers=workers)
            return checkpoint
        split = {p.name: split_ddl(p.ddl) for p in projections}
        for projection in projections:
            await store.reset_projection(projection.name, projection.drop,
                                         split[projection.name][0])
        await self._advance(dict.fromkeys(self._projections, 0))
        target = await store.head()
        self._head_seen = max(self._head_seen, target)
        reached = await self._refold(projections, 0, target, progress or _quiet)
        for projection in projections:
            # the secondary indexes, then the planner's statistics of the tables as loaded
            await store.run_ddl([*split[projection.name][1],
                                 *(f"ANALYZE {t}" for t in tables_of(projection.ddl))])
        self._log.info("projections_rebuilt", checkpoints=reached)
        return min(reached.values())

    async def _refold(self, projections: Sequence[Projection], position: int, target: int,
                      progress: Progress) -> dict[str, int]:
        """Fold ``projections`` (all at ``position``) up to ``target`` as a pipeline: while
        a batch commits, the next is read and folded (it waits for that commit only to
        read committed rows, and to commit after it). When every projection names the
        types it folds, only those are read. When a live runner moves some of the
        checkpoints apart, each projection goes on alone from its own. Returns the
        checkpoints reached."""
        store = self._store
        names = [p.name for p in projections]
        types = folded_types(projections)
        reading = self._read_from(position, target, types)
        flight: _Flight | None = None
        try:
            while reading is not None or flight is not None:
                page = await reading if reading is not None else None
                reading = None
                staged: ProjectionTxContext | None = None
                lost = False
                if page is not None and page.scanned > position:
                    reading = self._read_from(page.scanned, target, types)
                    staged = store.projections_tx(dict.fromkeys(names, position), page.scanned,
                                                  bulk=True)
                    lost = not await self._stage(staged, projections, page.events, position,
                                                 flight)
                if flight is not None:
                    lost = not await self._land(flight, names, target, progress) or lost
                    flight = None
                if lost:  # a live runner folds too: go on from where it got
                    if staged is not None:
                        await _abandon(staged)
                    await _cancel(reading)
                    reading = None
                    positions = {n: await store.projection_checkpoint(n) for n in names}
                    await self._advance(positions)
                    progress(0, min(positions.values()), target)
                    if len(set(positions.values())) > 1:
                        reached: dict[str, int] = {}
                        for projection in projections:
                            reached.update(await self._refold(
                                [projection], positions[projection.name], target, progress))
                        return reached
                    position = positions[names[0]]
                    reading = self._read_from(position, target, types)
                elif staged is not None and page is not None:
                    flight = _Flight(asyncio.ensure_future(staged.__aexit__(None, None, None)),
                                     page.scanned, len(page.events))
                    position = page.scanned
        finally:
            await _cancel(reading)
            if flight is not None:
                await _cancel(flight.commit)
        return dict.fromkeys(names, position)

    def _read_from(self, position: int, target: int, types: tuple[str, ...] | None,
                   ) -> asyncio.Future[FilteredPage] | None:
        if position >= target:
            return None
        return asyncio.ensure_future(self._page(position, types))

    async def _page(self, position: int, types: tuple[str, ...] | None) -> FilteredPage:
        """The next batch past ``position``: of ``types`` only, when given."""
        if types is not None:
            return await self._store.read_filtered(
                EventQuery(types=types), position, self._batch,
                scan=self._batch * FILTER_WINDOW_BATCHES)
        events = await self._store.read_all(position, self._batch)
        return FilteredPage(events=events, scanned=events[-1].position if events else position)

    async def _stage(self, staged: ProjectionTxContext, projections: Sequence[Projection],
                     events: Sequence[EventEnvelope], since: int, before: _Flight | None,
                     ) -> bool:
        """Fold a batch into its transaction, left open for the caller to commit; False
        (and nothing left open) when the batch before lost its checkpoints' race."""
        tx = await staged.__aenter__()
        commit = before.commit if before is not None else None
        try:
            for projection in projections if events else ():  # else: the checkpoints only
                await projection.apply(_View(tx, since, commit), events)
        except ConcurrencyError:
            await _abandon(staged)
            return False
        except BaseException as exc:
            await staged.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return True

    async def _land(self, flight: _Flight, names: Sequence[str], target: int,
                    progress: Progress) -> bool:
        """Wait for a batch's commit; False when it lost its checkpoints' race."""
        try:
            await flight.commit
        except ConcurrencyError:
            return False
        await self._advance(dict.fromkeys(names, flight.end))
        progress(flight.events, flight.end, target)
        return True

    # -- ownership ---------------------------------------------------------------------

    def start(self) -> None:
        """Run in a task this hub owns until ``shutdown()``."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"projections:{self.names}")

    async def shutdown(self) -> None:
        """Stop the owned task (idempotent); re-raises a failure of the run."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # our own cancellation still propagates from here
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure

    async def __aenter__(self) -> ProjectionHub:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


class ProjectionRunner(ProjectionHub):
    """A hub of one projection, which it can also rebuild from the start of the log."""

    def __init__(self, store: ProjectionHost, projection: Projection, *,
                 batch: int = 500, lead: bool = False, linger: float = 0.0) -> None:
        super().__init__(store, [projection], batch=batch, lead=lead, linger=linger)
        self._projection = projection

    @property
    def name(self) -> str:
        return self._projection.name

    @property
    def position(self) -> int:
        """The checkpoint as this runner last knew it."""
        return self.checkpoint(self.name)

    async def __aenter__(self) -> ProjectionRunner:
        self.start()
        return self


class _Flight(NamedTuple):
    """A batch whose transaction is committing: up to ``end``, ``events`` folded."""

    commit: asyncio.Future[object]
    end: int
    events: int


class _View:
    """One projection's view of a batch's transaction: its rows stand at ``since``, and
    reads of committed rows (and ``fetch``, which opens the transaction) wait first for
    ``before``, the commit of the batch before it when rebuild pipelines them."""

    def __init__(self, tx: SqlTx, since: int,
                 before: asyncio.Future[object] | None = None) -> None:
        self._tx, self._since, self._before = tx, since, before

    @property
    def since(self) -> int:
        return self._since

    async def execute(self, sql: str, *args: object) -> None:
        await self._tx.execute(sql, *args)

    async def put_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        await self._tx.put_rows(table, rows)

    async def delete_rows(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        await self._tx.delete_rows(table, keys)

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        await self._settled()
        return await self._tx.committed_rows(table, column, values)

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        await self._settled()
        return await self._tx.fetch(sql, *args)

    async def _settled(self) -> None:
        if self._before is not None:
            await self._before  # its ConcurrencyError is this batch's too


def split_ddl(ddl: Sequence[str]) -> tuple[list[str], list[str]]:
    """A projection's DDL as (what its rows need: tables, unique indexes; its secondary
    indexes, which a bulk load builds once afterwards far more cheaply than row by row)."""
    later = [sql for sql in ddl if sql.lstrip().upper().startswith("CREATE INDEX")]
    return [sql for sql in ddl if sql not in later], later


def tables_of(ddl: Sequence[str]) -> list[str]:
    """The tables a projection's DDL creates."""
    return [m.group(1) for sql in ddl
            if (m := _CREATE_TABLE.match(sql.lstrip())) is not None]


def folded_types(projections: Iterable[Projection]) -> tuple[str, ...] | None:
    """Every event type these projections fold, or None when one of them takes every
    event (names no ``types``)."""
    union = _union(projections, "types")
    return None if union is None else tuple(sorted(union))


#: the envelope fields every projection is handed, whatever its ``fields`` say
ALWAYS_READ = frozenset({"stream", "type", "data", "position"})


def read_fields(projections: Iterable[Projection]) -> frozenset[str] | None:
    """Every envelope field these projections read, or None when one of them may read
    any (names no ``fields``)."""
    union = _union(projections, "fields")
    return None if union is None else ALWAYS_READ | union


def _union(projections: Iterable[Projection], attribute: str) -> frozenset[str] | None:
    """The union of the projections' ``attribute`` (a collection of names each may
    declare), or None when one of them does not declare it."""
    union: set[str] = set()
    for projection in projections:
        names: Iterable[str] | None = getattr(projection, attribute, None)
        if names is None:
            return None
        union.update(names)
    return frozenset(union)


def _quiet(folded: int, checkpoint: int, target: int) -> None:
    pass


async def _abandon(staged: ProjectionTxContext) -> None:
    """Roll back a staged transaction whose batch is folded again elsewhere."""
    lost = ConcurrencyError("projection", 0, 0)
    await staged.__aexit__(ConcurrencyError, lost, None)


async def _cancel(future: asyncio.Future[Any] | None) -> None:
    if future is not None and not future.done():
        future.cancel()
    if future is not None:
        await asyncio.gather(future, return_exceptions=True)


def _after(events: Sequence[EventEnvelope], position: int) -> Sequence[EventEnvelope]:
    """The events of a batch (in position order) past ``position``."""
    if events[0].position > position:
        return events
    return [e for e in events if e.position > position]


def _single(exc: Exception) -> Exception:
    """The one error inside (nested) exception groups, or the group itself."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        if not isinstance(inner, Exception):
            break
        exc = inner
    return exc


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
