"""The ``webhook_subscriptions`` projection: every live subscription as a row, for the API.

The row holds what the API shows (never the secret: it is shown once, by the create's
answer, and the dispatcher keeps its own copy from the log). Event types are stored as a
JSON array. Reads order by creation time, then id, on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from actors.subscription import (
    KIND,
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionDisabled,
    SubscriptionUpdated,
)
from schemas import EventEnvelope, stream_kind
from store.protocol import SqlTx

PROJECTION_NAME = TABLE = "webhook_subscriptions"

_COLUMNS = ("id, project_id, url, event_types, description, enabled, all_projects,"
            " disabled_reason, created_at, updated_at")
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    t.__struct_config__.tag: msgspec.json.Decoder(t)  # type: ignore[misc]
    for t in (SubscriptionCreated, SubscriptionUpdated, SubscriptionDisabled,
              SubscriptionDeleted)
}
_TYPES = msgspec.json.Decoder(tuple[str, ...])


class SubscriptionView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``webhook_subscriptions``: a subscription as the API shows it."""

    id: str
    project_id: str
    url: str
    event_types: tuple[str, ...]
    description: str
    enabled: bool
    all_projects: bool
    disabled_reason: str | None
    created_at: str
    updated_at: str


class SubscriptionProjection:
    """Folds ``subscription.*`` events into ``webhook_subscriptions``."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS webhook_subscriptions (id TEXT PRIMARY KEY,"
        " project_id TEXT NOT NULL, url TEXT NOT NULL, event_types TEXT NOT NULL,"
        " description TEXT NOT NULL, enabled INTEGER NOT NULL, all_projects INTEGER NOT NULL,"
        " disabled_reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS webhook_subscriptions_project"
        " ON webhook_subscriptions (project_id)",
    )
    drop: Sequence[str] = ("DROP TABLE IF EXISTS webhook_subscriptions",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            decoder = _DECODERS.get(ev.type)
            if decoder is not None and stream_kind(ev.stream) == KIND:
                await _apply_one(tx, decoder.decode(ev.data))


async def _apply_one(tx: SqlTx, event: msgspec.Struct) -> None:
    match event:
        case SubscriptionCreated():
            await tx.execute(
                f"INSERT INTO webhook_subscriptions ({_COLUMNS}) VALUES"
                " ($1, $2, $3, $4, $5, 1, $6, NULL, $7, $7) ON CONFLICT (id) DO NOTHING",
                event.subscription_id, event.project_id, event.url,
                msgspec.json.encode(event.event_types).decode(), event.description,
                int(event.all_projects), event.at)
        case SubscriptionUpdated():
            await tx.execute(
                "UPDATE webhook_subscriptions SET url = $2, event_types = $3, description = $4,"
                " enabled = $5, disabled_reason = CASE WHEN $5 = 1 THEN NULL"
                " ELSE disabled_reason END, updated_at = $6 WHERE id = $1",
                event.subscription_id, event.url,
                msgspec.json.encode(event.event_types).decode(), event.description,
                int(event.enabled), event.at)
        case SubscriptionDisabled():
            await tx.execute(
                "UPDATE webhook_subscriptions SET enabled = 0, disabled_reason = $2,"
                " updated_at = $3 WHERE id = $1", event.subscription_id, event.reason, event.at)
        case SubscriptionDeleted():
            await tx.execute("DELETE FROM webhook_subscriptions WHERE id = $1",
                             event.subscription_id)


class QueryStore(Protocol):
    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


def _row(row: tuple[Any, ...]) -> SubscriptionView:
    sid, project, url, types, description, enabled, every, reason, created, updated = row
    return SubscriptionView(id=sid, project_id=project, url=url,
                            event_types=_TYPES.decode(types), description=description,
                            enabled=bool(enabled), all_projects=bool(every),
                            disabled_reason=reason, created_at=created, updated_at=updated)


async def read_subscriptions(store: QueryStore, project_id: str | None) -> list[SubscriptionView]:
    """The subscriptions of ``project_id`` (None: of every project), oldest first."""
    if project_id is None:
        rows = await store.query(f"SELECT {_COLUMNS} FROM webhook_subscriptions")
    else:
        rows = await store.query(
            f"SELECT {_COLUMNS} FROM webhook_subscriptions WHERE project_id = $1", project_id)
    return sorted((_row(r) for r in rows), key=lambda s: (s.created_at, s.id))


async def read_subscription(store: QueryStore, subscription_id: str) -> SubscriptionView | None:
    rows = await store.query(
        f"SELECT {_COLUMNS} FROM webhook_subscriptions WHERE id = $1", subscription_id)
    return _row(rows[0]) if rows else None
