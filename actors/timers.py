"""Durable timers: a deadline an actor sets is an event; this service fires it when due.

The ``timer.set`` / ``timer.fired`` / ``timer.cancelled`` events fold into a projection
table of pending timers, so after any restart the pending set is read back from the log.
Firing sends a ``timer.fire`` message to the actor's shard; the actor records
``timer.fired`` with the timer as its cause, so a timer sent twice still fires once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec
import structlog

from actors import metrics
from actors.cell import TIMER_FIRE
from bus.protocol import Bus
from schemas import CommandEnvelope, EventEnvelope, TimerFired, TimerSet
from schemas.envelope import ENCODER
from store.leadership import STANDBY_SECONDS, leadership
from store.projections import ProjectionRunner
from store.protocol import EventStore, ProjectionStore, SqlTx
from store.tables import Table

log = structlog.get_logger(__name__)



class _TimerRef(msgspec.Struct):
    """The one field timer.fired and timer.cancelled share."""

    timer_id: str


_SET = msgspec.json.Decoder(TimerSet)
_REF = msgspec.json.Decoder(_TimerRef)
_ENDS = frozenset({"timer.fired", "timer.cancelled"})
FIRE_DEADLINE = dt.timedelta(days=1)
#: how long the pending-timer projection waits between reads of the log. Deadlines are
#: seconds, so a timer folded this much later still fires on time; and a saga step that
#: sets and cancels its timer within one read writes no row at all
FOLD_LINGER = 0.1


def _micros(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


class TimerStore(EventStore, ProjectionStore, Protocol):
    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


TIMERS = Table("orrery_timers", (("timer_id", "text"), ("kind", "text"), ("actor_id", "text"),
                                 ("name", "text"), ("fire_at", "bigint")))


class TimerProjection:
    """Pending timers by id, folded from the log."""

    name = "timers"
    #: all it folds (a rebuild reads only these)
    types = ("timer.cancelled", "timer.fired", "timer.set")
    #: a timer is set, fired and cancelled on the stream of the actor it belongs to
    per_stream = True
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS orrery_timers (timer_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
        " actor_id TEXT NOT NULL, name TEXT NOT NULL, fire_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS orrery_timers_due ON orrery_timers (fire_at)",
    )
    drop: Sequence[str] = ("DROP TABLE IF EXISTS orrery_timers",)

    def __init__(self, on_change: Callable[[int, int], None]) -> None:
        self.on_change = on_change

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        """A batch's timers in memory: one set and ended (fired or cancelled) within it
        writes nothing, and tells ``on_change`` nothing."""
        pending: dict[str, tuple[str, TimerSet]] = {}  # timer id -> (stream, its set)
        ended: list[dict[str, Any]] = []  # the keys of timers set before this batch
        for ev in events:
            if ev.type == "timer.set":
                t = _SET.decode(ev.data)
                pending[t.timer_id] = (ev.stream, t)
            elif ev.type in _ENDS:
                timer_id = _REF.decode(ev.data).timer_id
                if pending.pop(timer_id, None) is None:
                    ended.append({"timer_id": timer_id})
        rows = [_row(stream, t) for stream, t in pending.values()]
        await tx.delete_rows(TIMERS, ended)
        await tx.put_rows(TIMERS, rows)
        if rows:
            # called inside the projection's transaction: the rows are not visible to
            # other connections until the checkpoint reaches this position
            self.on_change(events[-1].position, min(row["fire_at"] for row in rows))


def _row(stream: str, t: TimerSet) -> dict[str, Any]:
    kind, _, actor_id = stream.partition(":")
    return {"timer_id": t.timer_id, "kind": kind, "actor_id": actor_id, "name": t.name,
            "fire_at": _micros(t.fire_at)}


class TimerService:
    """Keeps the pending-timer projection and sends each due timer to its actor."""

    def __init__(self, store: TimerStore, bus: Bus, *, resend_after: float = 30.0) -> None:
        self.store = store
        self.bus = bus
        self.resend_after = resend_after
        self._wake = asyncio.Event()
        self._added_at = 0
        #: when the earliest pending timer is due (µs since the epoch), as far as known
        self._next_due: int | None = None
        #: the earliest timer set since the last look at the table began
        self._set_since: int | None = None
        self._sent: dict[str, float] = {}
        self.projection = TimerProjection(self._changed)
        self.runner = ProjectionRunner(store, self.projection, linger=FOLD_LINGER)

    def _changed(self, position: int, fire_at: int) -> None:
        """Timers were set up to ``position``, the earliest due at ``fire_at``: the fire
        loop is woken only when that is sooner than what it waits for already."""
        self._added_at = max(self._added_at, position)
        if self._set_since is None or fire_at < self._set_since:
            self._set_since = fire_at
        if self._next_due is None or fire_at < self._next_due:
            self._next_due = fire_at
            self._wake.set()

    async def run(self) -> None:
        """Fire timers until cancelled (standing by while another process leads)."""
        while True:
            async with leadership(self.store, "timers") as leader:
                if not leader:
                    await asyncio.sleep(STANDBY_SECONDS)
                    continue
                await self.store.run_ddl(self.projection.ddl)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.runner.run(), name="timer-projection")
                    tg.create_task(self._fire_loop(), name="timer-fire")

    async def _fire_loop(self) -> None:
        while True:
            added = self._added_at
            if added:  # timers were set: wait until their rows are committed
                await self.runner.wait_until(added, timeout=5.0)
            self._set_since = None
            found = await self.fire_due()
            due = [at for at in (found, self._set_since) if at is not None]
            self._next_due = min(due) if due else None
            await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        """Until the earliest known timer is due (at most ``resend_after``); a sooner one
        set meanwhile shortens the wait."""
        while True:
            self._wake.clear()
            delay = self.resend_after
            if self._next_due is not None:
                delay = min(delay, self._next_due / 1_000_000 - time.time())
            if delay <= 0:
                return
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that lands as the wait completes, and this loop must stop when told.
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def fire_due(self) -> int | None:
        """Send every due timer not sent recently; returns when the next one is due."""
        now_us = _micros(dt.datetime.now(dt.UTC))
        rows = await self.store.query(
            "SELECT timer_id, kind, actor_id, name FROM orrery_timers WHERE fire_at <= $1"
            " ORDER BY fire_at LIMIT 500",
            now_us,
        )
        mono = time.monotonic()
        for timer_id, kind, actor_id, name in rows:
            sent = self._sent.get(timer_id)
            if sent is not None and mono - sent < self.resend_after:
                continue
            await self.bus.send(_fire_message(timer_id, kind, actor_id, name))
            self._sent[timer_id] = mono
            metrics.TIMERS_FIRED.inc()
            log.info("timer_due", timer_id=timer_id, actor=f"{kind}:{actor_id}", name=name)
        pending = {r[0] for r in rows}
        self._sent = {k: v for k, v in self._sent.items() if k in pending}
        nxt = await self.store.query(
            "SELECT MIN(fire_at) FROM orrery_timers WHERE fire_at > $1", now_us
        )
        value = nxt[0][0] if nxt else None
        return int(value) if value is not None else None


def _fire_message(timer_id: str, kind: str, actor_id: str, name: str) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=f"timer:{timer_id}",
        kind=kind,
        actor_id=actor_id,
        type=TIMER_FIRE,
        body=msgspec.Raw(ENCODER.encode(TimerFired(timer_id=timer_id, name=name))),
        correlation_id=f"timer:{timer_id}",
        deadline=dt.datetime.now(dt.UTC) + FIRE_DEADLINE,
    )

