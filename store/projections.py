"""Projections: query tables folded from the log, checkpoint moved in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Protocol

import structlog
from prometheus_client import Gauge

from schemas import EventEnvelope
from store.errors import ConcurrencyError
from store.protocol import EventStore, ProjectionStore, SqlTx

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


class Projection(Protocol):
    """A query table fed by the log.

    ``ddl`` is idempotent and portable between PostgreSQL and SQLite (``CREATE TABLE IF
    NOT EXISTS``, TEXT/BIGINT/INTEGER, ``ON CONFLICT … DO UPDATE``); ``drop`` removes the
    tables. ``apply`` folds one batch inside the transaction that moves the checkpoint,
    using ``$1, $2 …`` placeholders; it decodes ``bytes(event.data)`` with msgspec.
    """

    name: str
    ddl: Sequence[str]
    drop: Sequence[str]

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        ...


class ProjectionHost(EventStore, ProjectionStore, Protocol):
    """A log that can also hold projections (both of our stores)."""


class ProjectionRunner:
    """Folds the log into one projection, exactly once per event.

    Each batch from ``store.subscribe`` is applied in one ``projection_tx``, so rows and
    checkpoint move together. When another runner moved the checkpoint first, this one
    re-reads it and follows on from there. Own it with ``async with``, with
    ``start()``/``shutdown()``, or await ``run()`` inside a TaskGroup of your own.
    """

    def __init__(self, store: ProjectionHost, projection: Projection, *, batch: int = 500) -> None:
        self._store = store
        self._projection = projection
        self._batch = batch
        self._position = 0
        self._head_seen = 0
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._failure: Exception | None = None
        self._log = log.bind(projection=projection.name)

    @property
    def name(self) -> str:
        return self._projection.name

    @property
    def position(self) -> int:
        """The checkpoint as this runner last knew it."""
        return self._position

    async def run(self) -> None:
        """Follow the log from the checkpoint until the store's subscription ends.

        A failing ``apply`` (or store) ends the run with its exception, the failing
        batch unapplied; waiters in ``wait_until`` are released with False at once.
        """
        self._failure = None
        try:
            await self._run()
        except Exception as exc:
            self._log.error("projection_failed", checkpoint=self._position, error=repr(exc))
            self._failure = exc
            await self._advance(self._position)
            raise

    async def _run(self) -> None:
        await self._store.run_ddl(self._projection.ddl)
        while True:
            checkpoint = await self._store.projection_checkpoint(self.name)
            if checkpoint < self._position:  # reset by a rebuild: tables may be gone
                await self._store.run_ddl(self._projection.ddl)
            await self._advance(checkpoint)
            self._log.info("projection_following", checkpoint=checkpoint)
            if not await self._follow(checkpoint):
                self._log.info("projection_subscription_ended", checkpoint=self._position)
                return

    async def _follow(self, checkpoint: int) -> bool:
        """Apply batches from ``checkpoint``; True when another runner moved it first."""
        batches = self._store.subscribe(checkpoint, self._batch)
        try:
            async for events in batches:
                await self._note_head(events)
                try:
                    await self._apply(checkpoint, events)
                except ConcurrencyError as exc:
                    self._log.info("projection_checkpoint_moved", current=exc.current)
                    return True
                checkpoint = events[-1].position
            return False
        finally:
            await _aclose(batches)

    async def _apply(self, expected: int, events: Sequence[EventEnvelope]) -> None:
        new = events[-1].position
        async with self._store.projection_tx(self.name, expected, new) as tx:
            await self._projection.apply(tx, events)
        await self._advance(new)

    async def _note_head(self, events: Sequence[EventEnvelope]) -> None:
        """Track how far the log goes: exact while catching up, positions seen when live."""
        self._head_seen = max(self._head_seen, events[-1].position)
        if len(events) >= self._batch:
            self._head_seen = max(self._head_seen, await self._store.head())

    async def _advance(self, position: int) -> None:
        PROJECTION_POSITION.labels(self.name).set(position)
        PROJECTION_LAG.labels(self.name).set(max(0, self._head_seen - position))
        async with self._moved:
            self._position = position
            self._moved.notify_all()

    async def wait_until(self, position: int, timeout: float) -> bool:
        """True once the checkpoint has reached ``position``; False after ``timeout`` s
        (or at once if the run has failed).

        The gateway calls this between a write and the read that must see it; the
        timeout is part of the call's contract, hence the parameter.
        """
        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(
                    lambda: self._position >= position or self._failure is not None
                )
        except TimeoutError:
            return False
        return self._position >= position

    async def rebuild(self) -> int:
        """Drop the tables and checkpoint, recreate, and fold the log up to its head."""
        await self._store.reset_projection(self.name, self._projection.drop)
        await self._store.run_ddl(self._projection.ddl)
        await self._advance(0)
        target = await self._store.head()
        self._head_seen = max(self._head_seen, target)
        checkpoint = 0
        while checkpoint < target:
            events = await self._store.read_all(checkpoint, self._batch)
            if not events:
                break
            try:
                await self._apply(checkpoint, events)
                checkpoint = events[-1].position
            except ConcurrencyError:  # a live runner is folding too: go on from its point
                checkpoint = await self._store.projection_checkpoint(self.name)
                await self._advance(checkpoint)
        self._log.info("projection_rebuilt", checkpoint=checkpoint)
        return checkpoint

    # -- ownership ---------------------------------------------------------------------

    def start(self) -> None:
        """Run in a task this runner owns until ``shutdown()``."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"projection:{self.name}")

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

    async def __aenter__(self) -> ProjectionRunner:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
