"""The fan-out: follows the log by position and writes one outbox row per event and
subscription that wants it, in the transaction that moves the deliverer's checkpoint,
and hands the rows to the sender as that transaction starts (sending does not wait for it).

Subscription events are folded as they come, so each event meets the subscriptions as
they stood at its position: a subscription gets the events after its creation, none after
it was disabled or deleted (its pending rows are cancelled in the same transaction), and a
``subscription.replay_requested`` starts a replay of ``[from_position, its position)``.
Replays (`Replays`) read the log again with the subscription's filters pushed into SQL,
a page at a time, each page's rows and the replay's progress in one transaction; a
replay waits while its subscription has more waiting than its lane holds, so a replay of
the whole log never floods the outbox. After a restart both go on from their tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from actors.event_feed import ADMIN_ONLY_KINDS, encode, pattern_kinds
from schemas import EventEnvelope
from store.protocol import EventQuery, EventStore
from webhooks import tables
from webhooks.outbox import Counter, Delivery, Statement, Writer
from webhooks.sender import Sender
from webhooks.targets import Folded, Target, Targets

log = structlog.get_logger(__name__)

REPLAY_PAGE, REPLAY_SCAN = 200, 5_000
#: with no subscription enabled, the fan-out only watches the log for a new one: it reads
#: it this often (a bigger batch each time) instead of at every commit. A subscription
#: created meanwhile gets every event after its creation all the same, this much later
IDLE_PAUSE = 0.25


class FanOut:
    """Follows the log from the writer's checkpoint; hands new rows to the sender."""

    def __init__(self, store: EventStore, writer: Writer, targets: Targets, sender: Sender,
                 replays: Replays, seq: Counter, *, batch: int = 500) -> None:
        self.store, self.writer, self.targets = store, writer, targets
        self.sender, self.replays, self.seq = sender, replays, seq
        self.batch = batch

    async def run(self) -> None:
        async for events in self.store.subscribe(self.writer.checkpoint, self.batch):
            await self._fan(events)
            if len(events) < self.batch and not self.targets.any_enabled():
                await asyncio.sleep(IDLE_PAUSE)

    async def _fan(self, events: Sequence[EventEnvelope]) -> None:
        now, folded = time.time(), Folded()
        rows: list[Delivery] = []
        statements: list[Statement] = []
        for event in events:
            wanting = self.targets.matching(event)
            if wanting:
                body = encode(event)
                new = [Delivery.new(t.id, self.seq.next(), event, body, now) for t in wanting]
                rows += new
                statements += [d.insert() for d in new]
            before = len(folded.statements)
            self.targets.fold(event, folded)
            statements += folded.statements[before:]
        async with self.writer.lock:
            # Handed over before the rows commit, so the POSTs go out while they do: an
            # attempt's record and the row's removal go through this same lock, after the
            # commit; if the commit fails, or the process dies first, the checkpoint has
            # not moved and these events are fanned out (sent) again: at least once.
            self.sender.offer(d for d in rows if d.subscription_id not in folded.cancelled)
            await self.writer.write_locked(statements, events[-1].position)
        for sid in folded.cancelled:
            self.sender.cancel(sid)
        self.replays.start(folded.replays)


def replay_query(target: Target) -> EventQuery:
    """What a replay reads of the log for ``target``, narrowed in SQL as far as possible."""
    kinds = pattern_kinds(target.patterns)
    if target.all_projects:
        return EventQuery(kinds=kinds)
    return EventQuery(kinds=kinds, project_id=target.project_id, exclude_kinds=ADMIN_ONLY_KINDS)


class Replays:
    """Redelivers ranges of the log to subscriptions that asked (one replay at a time)."""

    def __init__(self, store: EventStore, writer: Writer, targets: Targets, sender: Sender,
                 seq: Counter) -> None:
        self.store, self.writer, self.targets = store, writer, targets
        self.sender, self.seq = sender, seq
        self.jobs: list[tuple[str, int, int]] = []
        self._more = asyncio.Event()

    def start(self, jobs: Sequence[tuple[str, int, int]]) -> None:
        if jobs:
            self.jobs += jobs
            self._more.set()

    async def run(self) -> None:
        rows = await self.writer.store.query(tables.SELECT_REPLAYS)
        self.start([(str(r[0]), int(r[1]), int(r[2])) for r in rows])
        while True:
            await self._more.wait()
            self._more.clear()
            while self.jobs:
                sid, until, after = self.jobs.pop(0)
                await self._replay(sid, until, after)

    async def _replay(self, sid: str, until: int, after: int) -> None:
        log.info("webhook_replay_started", subscription=sid, after=after, until=until)
        while after < until - 1:
            target = self.targets.by_id.get(sid)
            if target is None or not target.enabled:
                return  # cancelled: its rows are gone with the subscription's
            await self._room(sid)
            after = await self._page(target, until, after)
        log.info("webhook_replay_finished", subscription=sid, until=until)

    async def _room(self, sid: str) -> None:
        """Wait while the subscription's lane has no room for a page."""
        while True:
            backlog = self.sender.backlog(sid)
            if backlog is not None and backlog + REPLAY_PAGE <= self.sender.cap:
                return
            await asyncio.sleep(0.05)

    async def _page(self, target: Target, until: int, after: int) -> int:
        page = await self.store.read_filtered(replay_query(target), after, REPLAY_PAGE,
                                              REPLAY_SCAN)
        now = time.time()
        rows = [Delivery.new(target.id, self.seq.next(), e, encode(e), now)
                for e in page.events if e.position < until and target.wants(e)]
        done = page.scanned >= until - 1 or page.scanned == after
        progress = ((tables.END_REPLAY, (target.id, until)) if done
                    else (tables.MOVE_REPLAY, (target.id, until, page.scanned)))
        async with self.writer.lock:
            if self.targets.by_id.get(target.id) is not target or not target.enabled:
                return until  # cancelled meanwhile
            await self.writer.write_locked([*(d.insert() for d in rows), progress])
            self.sender.offer(rows)
        return until if done else page.scanned
