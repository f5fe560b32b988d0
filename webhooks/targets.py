"""Subscriptions as the deliverer knows them: folded from the log in its order, so each
event is matched against the subscriptions as they were at that event's position."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from actors.event_feed import ADMIN_ONLY_KINDS, shown
from actors.subscription import (
    KIND,
    ReplayRequested,
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionDisabled,
    SubscriptionUpdated,
)
from schemas import EventEnvelope, stream_kind
from webhooks import tables
from webhooks.signing import secret_key

_EVENTS = msgspec.json.Decoder(
    SubscriptionCreated | SubscriptionUpdated | SubscriptionDisabled | SubscriptionDeleted
    | ReplayRequested)
_TYPES = msgspec.json.Decoder(tuple[str, ...])
Statement = tuple[str, tuple[object, ...]]


@dataclass
class Target:
    """One subscription: where its deliveries go, what it wants and may see, its key."""

    id: str
    project_id: str
    all_projects: bool
    url: str
    patterns: tuple[str, ...]
    secret: str
    enabled: bool = True
    key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = secret_key(self.secret)

    def wants(self, event: EventEnvelope) -> bool:
        """Whether ``event`` goes to this subscription: it is enabled, may see the event
        (as a member of its project, or an admin with ``all_projects``) and matches."""
        if not self.enabled:
            return False
        if not self.all_projects and (event.project_id != self.project_id
                                      or stream_kind(event.stream) in ADMIN_ONLY_KINDS):
            return False
        return shown(event, self.patterns)

    def row(self) -> tuple[object, ...]:
        return (self.id, self.project_id, int(self.all_projects), self.url,
                msgspec.json.encode(self.patterns).decode(), self.secret, int(self.enabled))


@dataclass
class Folded:
    """What folding a batch changed: statements for the fan-out's transaction, the
    subscriptions whose pending deliveries end, and the replays to start."""

    statements: list[Statement] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    replays: list[tuple[str, int, int]] = field(default_factory=list)  # (id, until, after)


class Targets:
    """Every subscription the deliverer knows, by id."""

    def __init__(self, targets: Iterable[Target] = ()) -> None:
        self.by_id = {t.id: t for t in targets}

    @classmethod
    async def load(cls, store: tables.QueryStore) -> Targets:
        rows = await store.query(tables.SELECT_TARGETS)
        return cls(_target(r) for r in rows)

    def any_enabled(self) -> bool:
        """Whether any subscription is to be delivered to."""
        return any(t.enabled for t in self.by_id.values())

    def matching(self, event: EventEnvelope) -> list[Target]:
        return [t for t in self.by_id.values() if t.wants(event)]

    def fold(self, event: EventEnvelope, out: Folded) -> None:
        """Fold ``event`` into the targets if it is a subscription's (else nothing)."""
        if stream_kind(event.stream) == KIND and event.type.startswith(KIND + "."):
            self._fold_one(event, _EVENTS.decode(event.data), out)

    def _fold_one(self, event: EventEnvelope, change: Any, out: Folded) -> None:
        sid = change.subscription_id
        target = self.by_id.get(sid)
        match change:
            case SubscriptionCreated():
                target = self.by_id[sid] = Target(
                    id=sid, project_id=change.project_id, all_projects=change.all_projects,
                    url=change.url, patterns=change.event_types, secret=change.secret)
                out.statements.append((tables.UPSERT_TARGET, target.row()))
            case ReplayRequested() if target is not None and target.enabled:
                out.replays.append((sid, event.position, max(change.from_position - 1, 0)))
                out.statements.append((tables.INSERT_REPLAY, out.replays[-1]))
            case SubscriptionUpdated() if target is not None:
                target.url, target.patterns = change.url, change.event_types
                self._enable(target, change.enabled, out)
            case SubscriptionDisabled() if target is not None:
                self._enable(target, False, out)
            case SubscriptionDeleted() if target is not None:
                del self.by_id[sid]
                out.statements.append((tables.DELETE_TARGET, (sid,)))
                self._cancel(sid, out)

    def _enable(self, target: Target, enabled: bool, out: Folded) -> None:
        target.enabled = enabled
        out.statements.append((tables.UPSERT_TARGET, target.row()))
        if not enabled:
            self._cancel(target.id, out)

    @staticmethod
    def _cancel(sid: str, out: Folded) -> None:
        out.cancelled.add(sid)
        out.statements.append((tables.CANCEL_OUTBOX, (sid,)))
        out.statements.append((tables.CANCEL_REPLAYS, (sid,)))


def _target(row: tuple[Any, ...]) -> Target:
    sid, project, every, url, types, secret, enabled = row
    return Target(id=sid, project_id=project, all_projects=bool(every), url=url,
                  patterns=_TYPES.decode(types), secret=secret, enabled=bool(enabled))
