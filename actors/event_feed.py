"""How the log is shown to its users: event documents, who may see which event, redaction.

The event feed (gateway) and webhook delivery (webhooks) show an event the same way, as
an `EventDoc`: its id, stream (and the resource kind and id it names), version, global
position, type, time, correlation and causation ids, project, user and data. Rules that
hold for every kind, present and future:

- **Visibility.** An admin sees every event. Anyone else sees the events recorded for
  their project (the envelope's ``project_id``: the project of the request that caused
  them, carried along reactions), except those of the `ADMIN_ONLY_KINDS`: hosts and
  network segments are infrastructure (Nova and Neutron show them to admins only), and
  identity records belong to the cloud's administrators. Events without a project (a
  host's heartbeats, the bootstrap) are admin-only.
- **Bookkeeping is not shown.** The runtime's durable timer events (``timer.*``) stay in
  the log but are no one's business outside it (the relay keeps them off the bus too).
- **Secrets are redacted.** A field named in `SECRET_FIELDS` (a webhook's signing secret,
  a user's password hash), at any depth of the data, is shown as ``"[redacted]"``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from bus.routing import topic_matches
from schemas import EventEnvelope
from store.protocol import EventQuery

#: kinds whose events only admins see, whatever project recorded them
ADMIN_ONLY_KINDS: tuple[str, ...] = (
    "host", "segment", "user", "project", "token", "identity_name",
)
#: data fields never shown outside the log
SECRET_FIELDS = frozenset({"secret", "password_hash", "password"})
REDACTED = "[redacted]"
_NEEDLES = tuple(f'"{name}"'.encode() for name in SECRET_FIELDS)
_ENCODER = msgspec.json.Encoder()
#: how many type patterns one query or subscription may give
MAX_PATTERNS = 20


class EventDoc(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the feed and webhooks show it."""

    id: uuid.UUID
    stream: str
    resource_kind: str
    resource_id: str
    version: int
    position: int
    type: str
    time: dt.datetime
    correlation_id: str | None
    causation_id: str | None
    project_id: str | None
    user_id: str | None
    data: msgspec.Raw


def visibility(project_id: str | None, *, is_admin: bool) -> EventQuery:
    """What someone scoped to ``project_id`` may see (an admin: everything)."""
    if is_admin:
        return EventQuery()
    return EventQuery(project_id=project_id or "", exclude_kinds=ADMIN_ONLY_KINDS)


def bookkeeping(event: EventEnvelope) -> bool:
    """The runtime's timer events: in the log, never shown."""
    return event.type.startswith("timer.")


def shown(event: EventEnvelope, patterns: tuple[str, ...] = ()) -> bool:
    """Whether ``event`` is shown at all and, given patterns, matches one of them (AMQP
    topic patterns over its routing key ``<kind>.<type>``)."""
    if bookkeeping(event):
        return False
    return not patterns or any(topic_matches(p, event.routing_key) for p in patterns)


def redact(data: bytes) -> bytes:
    """``data`` with every secret field's value replaced (unchanged, not even re-encoded,
    when it names none: the common case costs one scan of the bytes)."""
    if not any(needle in data for needle in _NEEDLES):
        return data
    return _ENCODER.encode(redacted(msgspec.json.decode(data)))


def redacted(value: Any) -> Any:
    """Plain data (dicts, lists, scalars) with every secret field's value replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_FIELDS and v is not None else redacted(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def document(event: EventEnvelope) -> EventDoc:
    """The document of ``event``, secrets redacted."""
    kind, _, resource_id = event.stream.partition(":")
    return EventDoc(
        id=event.event_id, stream=event.stream, resource_kind=kind, resource_id=resource_id,
        version=event.version, position=event.position, type=event.type,
        time=event.occurred_at, correlation_id=event.correlation_id,
        causation_id=event.causation_id, project_id=event.project_id, user_id=event.user_id,
        data=msgspec.Raw(redact(bytes(event.data))),
    )


def encode(event: EventEnvelope) -> bytes:
    """The document of ``event`` as JSON bytes (a webhook's body, an SSE message's data)."""
    return _ENCODER.encode(document(event))


def check_patterns(patterns: list[str]) -> str | None:
    """Why ``patterns`` are not valid event type patterns (None: they are)."""
    if not patterns:
        return "event_types must name at least one event type pattern (e.g. 'instance.*')."
    if len(patterns) > MAX_PATTERNS:
        return f"event_types may hold at most {MAX_PATTERNS} patterns."
    for pattern in patterns:
        words = pattern.split(".")
        if not 1 <= len(pattern) <= 255 or not all(_word(w) for w in words):
            return (f"Invalid event type pattern {pattern!r}: dot-separated words of letters,"
                    " digits, '_' or '-', where '*' stands for one word and '#' for any.")
    return None


def _word(word: str) -> bool:
    return word in ("*", "#") or (bool(word) and all(c.isalnum() or c in "_-" for c in word))


def pattern_kinds(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds every pattern names literally in its first word (empty: some pattern
    matches any kind), so a reader can narrow its SQL to them."""
    kinds: list[str] = []
    for pattern in patterns:
        first = pattern.split(".", 1)[0]
        if first in ("*", "#"):
            return ()
        kinds.append(first)
    return tuple(sorted(set(kinds)))
