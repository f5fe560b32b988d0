"""The outbox's pieces: a pending delivery, the order numbers, the retry schedule, and the
one writer every deliverer transaction goes through."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas import EventEnvelope
from schemas.envelope import new_uuid
from store.protocol import ProjectionStore
from webhooks import tables

Statement = tuple[str, tuple[object, ...]]


@dataclass
class Delivery:
    """One event on its way to one subscription; ``body`` is sent unchanged every time."""

    subscription_id: str
    seq: int
    delivery_id: str
    position: int
    event_id: str
    stream: str
    type: str
    body: bytes
    occurred_at: float
    attempts: int = 0
    first_at: float | None = None
    next_at: float = 0.0

    @classmethod
    def new(cls, subscription_id: str, seq: int, event: EventEnvelope, body: bytes,
            now: float) -> Delivery:
        return cls(subscription_id=subscription_id, seq=seq, delivery_id=str(new_uuid()),
                   position=event.position, event_id=str(event.event_id), stream=event.stream,
                   type=event.type, body=body, occurred_at=event.occurred_at.timestamp(),
                   next_at=now)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Delivery:
        (sid, seq, did, position, event_id, stream, type_, body, occurred, attempts, first,
         next_at) = row
        return cls(subscription_id=sid, seq=int(seq), delivery_id=did, position=int(position),
                   event_id=event_id, stream=stream, type=type_, body=str(body).encode(),
                   occurred_at=float(occurred), attempts=int(attempts),
                   first_at=None if first is None else float(first), next_at=float(next_at))

    def insert(self) -> Statement:
        return (tables.INSERT_OUTBOX, (
            self.subscription_id, self.seq, self.delivery_id, self.position, self.event_id,
            self.stream, self.type, self.body.decode(), self.occurred_at, self.attempts,
            self.first_at, self.next_at))


class Counter:
    """Increasing numbers that also increase across restarts: microseconds of the wall
    clock, or one more than the last when the clock has not moved on (or went back)."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        self.last = max(self.last + 1, int(time.time() * 1_000_000))
        return self.last


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(cap, base * 2**(n-1))`` seconds; no retry ``period`` seconds after the first."""

    period: float = 86_400.0
    base: float = 5.0
    cap: float = 3_600.0
    timeout: float = 10.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        full = min(self.cap, self.base * 2.0 ** min(attempts - 1, 60))
        return full / 2 + rng.uniform(0, full / 2)


class Writer:
    """Runs the deliverer's transactions one at a time under its checkpoint: a transaction
    of a deliverer that another has replaced fails (ConcurrencyError) instead of landing.

    ``checkpoint`` is the position committed, ``fanned`` the one the fan-out has gone
    through. A batch of the log that wrote nothing (no subscription wanted its events:
    every batch of a cloud without subscriptions) commits nothing; its move rides on the
    next write, or on ``flush``, which the dispatcher calls now and then. A restart
    fans such events out again, and they write nothing again."""

    def __init__(self, store: ProjectionStore, checkpoint: int) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.fanned = checkpoint
        self.lock = asyncio.Lock()

    async def write(self, statements: Sequence[Statement], new: int | None = None) -> None:
        """Run ``statements`` and move the checkpoint to ``new`` (default: stay)."""
        async with self.lock:
            await self.write_locked(statements, new)

    async def write_locked(self, statements: Sequence[Statement], new: int | None = None) -> None:
        """``write`` for a caller that holds ``lock``; with nothing to write, a move to
        ``new`` is only noted (see the class)."""
        if new is not None:
            self.fanned = max(self.fanned, new)
            if not statements:
                return
        target = self.fanned
        async with self.store.projection_tx(tables.CHECKPOINT, self.checkpoint, target) as tx:
            for sql, args in statements:
                await tx.execute(sql, *args)
        self.checkpoint = target

    async def flush(self) -> None:
        """Commit a move that batches without writes left behind."""
        async with self.lock:
            if self.fanned > self.checkpoint:
                await self.write_locked([])
