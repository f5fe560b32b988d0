"""The deliverer's tables: its targets, its outbox, its replays and every attempt.

Why tables, not events: the log stays the only source of truth of what happened to
resources and subscriptions; which deliveries are pending and how each attempt went is
the deliverer's operational state, derived from the log (like a projection) and written
at a rate of several rows per event (an outbox row, an attempt, its removal). As events,
every attempt would itself be an event a ``#`` subscription matches, a loop; as rows they
cost one batched transaction per round and are dropped after the retention period.

Every write goes through one projection transaction of the checkpoint `CHECKPOINT`, so the
fan-out's rows, its targets and the checkpoint move together, and a deliverer that lost
its leadership to another finds out (ConcurrencyError) instead of writing beside it.

- ``webhook_targets``: each subscription as the fan-out last folded it (with its secret).
- ``webhook_outbox``: one row per pending delivery, in ``seq`` order per subscription,
  with the exact body to send; removed once accepted, given up, or cancelled.
- ``webhook_replays``: replays not finished, with where each will read on.
- ``webhook_attempts``: one row per attempt (what ``…/deliveries`` shows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec

from store.protocol import ProjectionStore

CHECKPOINT = "webhooks"

DDL: Sequence[str] = (
    "CREATE TABLE IF NOT EXISTS webhook_targets (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,"
    " all_projects INTEGER NOT NULL, url TEXT NOT NULL, event_types TEXT NOT NULL,"
    " secret TEXT NOT NULL, enabled INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS webhook_outbox (subscription_id TEXT NOT NULL,"
    " seq BIGINT NOT NULL, delivery_id TEXT NOT NULL, position BIGINT NOT NULL,"
    " event_id TEXT NOT NULL, stream TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL,"
    " occurred_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL,"
    " first_at DOUBLE PRECISION, next_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (subscription_id, seq))",
    "CREATE TABLE IF NOT EXISTS webhook_replays (subscription_id TEXT NOT NULL,"
    " until_position BIGINT NOT NULL, next_after BIGINT NOT NULL,"
    " PRIMARY KEY (subscription_id, until_position))",
    "CREATE TABLE IF NOT EXISTS webhook_attempts (delivery_id TEXT NOT NULL,"
    " attempt INTEGER NOT NULL, seq BIGINT NOT NULL, subscription_id TEXT NOT NULL,"
    " event_id TEXT NOT NULL, position BIGINT NOT NULL, stream TEXT NOT NULL,"
    " type TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL,"
    " response_code INTEGER, latency_ms DOUBLE PRECISION, error TEXT,"
    " next_retry_at DOUBLE PRECISION, PRIMARY KEY (delivery_id, attempt))",
    "CREATE INDEX IF NOT EXISTS webhook_attempts_by_subscription"
    " ON webhook_attempts (subscription_id, seq)",
    "CREATE INDEX IF NOT EXISTS webhook_attempts_by_time ON webhook_attempts (at)",
)

_OUTBOX_COLUMNS = ("subscription_id, seq, delivery_id, position, event_id, stream, type, body,"
                   " occurred_at, attempts, first_at, next_at")
INSERT_OUTBOX = (f"INSERT INTO webhook_outbox ({_OUTBOX_COLUMNS}) VALUES"
                 " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
SELECT_OUTBOX = (f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE subscription_id = $1"
                 " AND seq > $2 ORDER BY seq LIMIT $3")
DELETE_OUTBOX = "DELETE FROM webhook_outbox WHERE subscription_id = $1 AND seq = $2"
CANCEL_OUTBOX = "DELETE FROM webhook_outbox WHERE subscription_id = $1"
RETRY_OUTBOX = ("UPDATE webhook_outbox SET attempts = $3, first_at = $4, next_at = $5"
                " WHERE subscription_id = $1 AND seq = $2")
MAX_SEQ = "SELECT max(seq) FROM webhook_outbox"
INSERT_ATTEMPT = (
    "INSERT INTO webhook_attempts (delivery_id, attempt, seq, subscription_id, event_id,"
    " position, stream, type, at, status, response_code, latency_ms, error, next_retry_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    " ON CONFLICT (delivery_id, attempt) DO NOTHING")
PRUNE_ATTEMPTS = "DELETE FROM webhook_attempts WHERE at < $1"
MAX_ATTEMPT_SEQ = "SELECT max(seq) FROM webhook_attempts"
UPSERT_TARGET = (
    "INSERT INTO webhook_targets (id, project_id, all_projects, url, event_types, secret,"
    " enabled) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET"
    " url = excluded.url, event_types = excluded.event_types, enabled = excluded.enabled")
DELETE_TARGET = "DELETE FROM webhook_targets WHERE id = $1"
SELECT_TARGETS = ("SELECT id, project_id, all_projects, url, event_types, secret, enabled"
                  " FROM webhook_targets")
INSERT_REPLAY = ("INSERT INTO webhook_replays (subscription_id, until_position, next_after)"
                 " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
MOVE_REPLAY = ("UPDATE webhook_replays SET next_after = $3 WHERE subscription_id = $1"
               " AND until_position = $2")
END_REPLAY = "DELETE FROM webhook_replays WHERE subscription_id = $1 AND until_position = $2"
CANCEL_REPLAYS = "DELETE FROM webhook_replays WHERE subscription_id = $1"
SELECT_REPLAYS = ("SELECT subscription_id, until_position, next_after FROM webhook_replays"
                  " ORDER BY until_position")

_ATTEMPT_COLUMNS = ("seq, delivery_id, attempt, event_id, position, stream, type, at, status,"
                    " response_code, latency_ms, error, next_retry_at")


class AttemptDoc(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt as ``GET …/deliveries`` shows it (times in seconds since the epoch)."""

    seq: int
    delivery_id: str
    attempt: int
    event_id: str
    position: int
    stream: str
    type: str
    attempted_at: float
    status: str
    response_code: int | None
    latency_ms: float | None
    error: str | None
    next_retry_at: float | None


class QueryStore(Protocol):
    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


class DeliveryRecords:
    """Reads the attempts (the gateway's ``DeliveryLog``); creates the tables on first use
    so an API process can answer before any deliverer has run."""

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store
        self._ready = False

    async def attempts(self, subscription_id: str, before: int | None,
                       limit: int) -> Sequence[Mapping[str, Any]]:
        if not self._ready:
            await self._store.run_ddl(DDL)
            self._ready = True
        rows = await self._store.query(
            f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE subscription_id = $1"
            " AND seq < $2 ORDER BY seq DESC LIMIT $3",
            subscription_id, before if before is not None else 2**62, limit)
        return [msgspec.structs.asdict(_attempt(r)) for r in rows]


def _attempt(row: tuple[Any, ...]) -> AttemptDoc:
    (seq, delivery_id, attempt, event_id, position, stream, type_, at, status, code,
     latency, error, next_retry) = row
    return AttemptDoc(seq=int(seq), delivery_id=delivery_id, attempt=int(attempt),
                      event_id=event_id, position=int(position), stream=stream, type=type_,
                      attempted_at=float(at), status=status,
                      response_code=None if code is None else int(code),
                      latency_ms=None if latency is None else float(latency), error=error,
                      next_retry_at=None if next_retry is None else float(next_retry))
