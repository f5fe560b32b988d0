"""One live actor: its folded state, its version, and how it handles one message."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
import structlog

from actors import metrics
from actors.codec import CellSnapshot, KindCodec, to_new_event
from actors.fold import fold_event
from actors.kind import Context, Rejected
from bus.errors import BadMessage
from bus.replies import REPLY_TYPE
from schemas import (
    EVENT_DECODER,
    CommandEnvelope,
    EventEnvelope,
    NewEvent,
    Reply,
    TimerFired,
    stream_name,
)
from schemas.envelope import ENCODER, REPLY_DECODER
from store.errors import ConcurrencyError
from store.protocol import EventStore, Snapshot

log = structlog.get_logger(__name__)

#: what handling one message came to: its reply and the effects it asks for, or its error
Handled = tuple[Reply, list[object]] | Exception

REACT = "react"
TIMER_FIRE = "timer.fire"
CONFLICT_RETRIES = 5
#: snapshot bytes a stream may write per event on average (see ActorCell._maybe_snapshot)
SNAPSHOT_BYTES_PER_EVENT = 1024
_FIRED = msgspec.json.Decoder(TimerFired)


class ActorCell:
    """An activated actor. Callers serialise access with ``lock``: one message at a time,
    or the messages waiting in ``mailbox`` together (``handle_many``)."""

    def __init__(self, codec: KindCodec, actor_id: str, store: EventStore) -> None:
        self.codec = codec
        self.kind = codec.kind
        self.actor_id = actor_id
        self.stream = stream_name(self.kind.name, actor_id)
        self.store = store
        self.lock = asyncio.Lock()
        self.waiting = 0
        #: messages waiting for the lock, with when each came and its reply's future
        self.mailbox: collections.deque[
            tuple[CommandEnvelope, dt.datetime, asyncio.Future[Reply]]] = collections.deque()
        self.last_used = time.monotonic()
        self.loaded = False
        self.state: Any = None
        self.version = 0
        self.timers: dict[str, str] = {}
        #: effects the last handled message asked for, for the runtime to carry out
        self.outbox: list[object] = []
        self._snapshot_version = 0
        #: events to the next snapshot beyond ``snapshot_every``, from the last one's size
        self._gap = 0

    # -- state ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Activate: the latest snapshot, then the tail of the stream after it."""
        self.state, self.version, self.timers = self.kind.initial(self.actor_id), 0, {}
        snap, tail = await self.store.load(self.stream)
        if snap is not None:
            saved = self.codec.snapshot.decode(snap.data)
            self.state = self.codec.state.decode(saved.state)
            self.timers = dict(saved.timers)
            self.version = self._snapshot_version = snap.version
        for env in tail:
            self._evolve(self.codec.events.decode(env.data))
            self.version = env.version
        self.loaded = True
        metrics.ACTIVATIONS.labels(self.kind.name).inc()

    def _presume_new(self) -> None:
        """Activate as a new actor, without reading the stream (see ActorKind.creates)."""
        self.state, self.version, self.timers = self.kind.initial(self.actor_id), 0, {}
        self.loaded = True

    def invalidate(self) -> None:
        """Forget the folded state; the next message reloads it from the log."""
        self.loaded = False

    def _evolve(self, event: msgspec.Struct) -> None:
        self.state = fold_event(self.codec, self.state, self.timers, event)

    async def _maybe_snapshot(self) -> None:
        """Every ``snapshot_every`` events, or less often for a big state: the gap grows
        with the last snapshot's size, so that a state that grows with every event (a
        subnet's holds) costs at most SNAPSHOT_BYTES_PER_EVENT of snapshot per event,
        not its whole size every ``snapshot_every`` events."""
        every = self.kind.snapshot_every
        if every <= 0 or self.version - self._snapshot_version < max(every, self._gap):
            return
        data = ENCODER.encode(
            CellSnapshot(state=msgspec.Raw(ENCODER.encode(self.state)), timers=self.timers)
        )
        await self.store.save_snapshot(
            Snapshot(stream=self.stream, version=self.version, type=self.kind.name, data=data)
        )
        self._snapshot_version = self.version
        self._gap = len(data) // SNAPSHOT_BYTES_PER_EVENT

    # -- messages ------------------------------------------------------------------------

    async def handle(self, msg: CommandEnvelope, now: dt.datetime) -> Reply:
        """Decide on ``msg`` and append what it decides; retried from fresh state on conflict."""
        self.outbox = []
        presumed = not self.loaded and msg.type in self.codec.create_tags
        for _ in range(CONFLICT_RETRIES):
            if presumed:
                self._presume_new()
            elif not self.loaded:
                await self.load()
            if msg.type in self.codec.query_tags:
                return self._answer(msg, now)
            try:
                payloads, cause, meta, ctx, command = self._decide(msg, now)
            except Rejected as exc:
                if presumed:  # on the state it really has, it may be refused otherwise
                    presumed = False
                    self.invalidate()
                    continue
                return _refused(msg, exc, self.version)
            if not payloads and presumed:
                presumed = False
                self.invalidate()
                continue
            if not payloads:
                return self._unchanged(msg, command, ctx, self.version)
            events = [to_new_event(p, **meta) for p in payloads]
            try:
                result = await self.store.append(self.stream, events, self.version, cause=cause)
            except ConcurrencyError:
                if not presumed:
                    metrics.CONFLICTS.labels(self.kind.name).inc()
                presumed = False
                self.invalidate()
                continue
            if result.duplicate:
                self.invalidate()  # someone (an earlier delivery) already recorded it
            else:
                for p in payloads:
                    self._evolve(p)
                self.version = result.version
                if self.kind.effects is not None:
                    self.outbox = list(self.kind.effects(self.state, payloads, ctx))
                await self._maybe_snapshot()
            return Reply(command_id=msg.command_id, ok=True, version=result.version,
                         position=result.position,
                         result=None if result.duplicate else self._result(command, ctx))
        raise ConcurrencyError(self.stream, self.version, -1)

    async def handle_many(self, msgs: Sequence[CommandEnvelope], now: dt.datetime
                          ) -> list[Handled]:
        """Messages that waited for this actor, handled together: each decided in turn on
        the state the ones before it leave, and all their events appended at once, each
        message's cause recorded with its own events. One append (one trip to the log)
        then serves them all. Anything out of the way (a query, a conflict, a message
        recorded before) is handled one message at a time instead, as ``handle`` does.
        Per message, in order: its reply and the effects it asks for, or the error it
        raised."""
        if len(msgs) < 2 or any(m.type in self.codec.query_tags for m in msgs):
            return [await self._one(m, now) for m in msgs]
        if not self.loaded:
            await self.load()
        done: list[Handled | None] = [None] * len(msgs)
        decided: list[_Decided] = []
        version = self.version
        for i, msg in enumerate(msgs):
            try:
                payloads, cause, meta, ctx, command = self._decide(msg, now)
            except Rejected as exc:
                done[i] = _refused(msg, exc, version), []
                continue
            except Exception as exc:  # its own failure (undecodable): the others go on
                done[i] = exc
                continue
            if not payloads:
                done[i] = self._unchanged(msg, command, ctx, version), []
                continue
            for p in payloads:
                self._evolve(p)
            version += len(payloads)
            effects = list(self.kind.effects(self.state, payloads, ctx)) \
                if self.kind.effects is not None else []
            decided.append(_Decided(i, [to_new_event(p, **meta) for p in payloads], cause,
                                    self._result(command, ctx), effects))
        if decided:
            await self._append_decided(msgs, decided, done, now)
        return [d if d is not None else RuntimeError("unhandled") for d in done]

    async def _append_decided(self, msgs: Sequence[CommandEnvelope], decided: list[_Decided],
                              done: list[Handled | None], now: dt.datetime) -> None:
        """One append of every decided message's events; one at a time if it fails."""
        events = [e for d in decided for e in d.events]
        causes, upto = [], 0
        for d in decided:
            upto += len(d.events)
            causes.append((d.cause, upto))
        try:
            result = await self.store.append(self.stream, events, self.version, causes=causes)
        except ConcurrencyError:
            metrics.CONFLICTS.labels(self.kind.name).inc()
            result = None
        if result is None or result.duplicate:
            self.invalidate()  # the state folded what was not recorded
            for d in decided:
                done[d.slot] = await self._one(msgs[d.slot], now)
            return
        first = result.version - len(events)
        for d, (_, last) in zip(decided, causes, strict=True):
            done[d.slot] = Reply(
                command_id=msgs[d.slot].command_id, ok=True, version=first + last,
                position=result.position - (len(events) - last), result=d.result), d.effects
        self.version = result.version
        await self._maybe_snapshot()

    async def _one(self, msg: CommandEnvelope, now: dt.datetime) -> Handled:
        try:
            reply = await self.handle(msg, now)
        except Exception as exc:
            self.invalidate()
            return exc
        outbox, self.outbox = self.outbox, []
        return reply, outbox

    def _unchanged(self, msg: CommandEnvelope, command: msgspec.Struct | None, ctx: Context,
                   version: int) -> Reply:
        """The answer to a message that decided nothing to record."""
        return Reply(command_id=msg.command_id, ok=True, version=version,
                     result=self._result(command, ctx))

    def _result(self, command: msgspec.Struct | None, ctx: Context) -> str | None:
        """The kind's result for a command just decided (None for reactions, timers and
        replies, which have no caller waiting)."""
        if self.kind.result is None or command is None:
            return None
        return self.kind.result(self.state, command, ctx)

    def _context(self, msg: CommandEnvelope, now: dt.datetime) -> Context:
        return Context(actor_id=self.actor_id, message_id=msg.command_id,
                       correlation_id=msg.correlation_id, now=now,
                       project_id=msg.project_id, user_id=msg.user_id)

    def _answer(self, msg: CommandEnvelope, now: dt.datetime) -> Reply:
        """A read-only query: answered from the state, nothing recorded."""
        assert self.codec.queries is not None and self.kind.answer is not None
        query = _decode(self.codec.queries, msg.body, msg.type)
        try:
            result = self.kind.answer(self.state, query, self._context(msg, now))
        except Rejected as exc:
            return Reply(command_id=msg.command_id, ok=False, error=exc.message,
                         error_type=exc.code, version=self.version)
        return Reply(command_id=msg.command_id, ok=True, version=self.version, result=result)

    def _decide(
        self, msg: CommandEnvelope, now: dt.datetime
    ) -> tuple[Sequence[msgspec.Struct], str, dict[str, str | None], Context,
               msgspec.Struct | None]:
        """(events, cause, metadata, context, the command when the message is one)."""
        meta: dict[str, str | None] = {
            "correlation_id": msg.correlation_id,
            "causation_id": msg.command_id,
            "project_id": msg.project_id,
            "user_id": msg.user_id,
        }
        ctx = self._context(msg, now)
        if msg.type in self.codec.command_tags:
            command = _decode(self.codec.commands, msg.body, msg.type)
            return (self.kind.decide(self.state, command, ctx), msg.command_id, meta, ctx,
                    command)
        if msg.type == REACT:
            return (*self._decide_reaction(msg, ctx, meta), ctx, None)
        if msg.type == TIMER_FIRE:
            fired = _decode(_FIRED, msg.body, msg.type)
            if fired.timer_id not in self.timers or self.kind.on_timer is None:
                return [], f"timer:{fired.timer_id}", meta, ctx, None
            events = [*self.kind.on_timer(self.state, fired, ctx), fired]
            return events, f"timer:{fired.timer_id}", meta, ctx, None
        if msg.type == REPLY_TYPE and self.kind.on_reply is not None:
            reply = _decode(REPLY_DECODER, msg.body, msg.type)
            return self.kind.on_reply(self.state, reply, ctx), msg.command_id, meta, ctx, None
        raise BadMessage(f"{self.kind.name} has no command {msg.type!r}")

    def _decide_reaction(
        self, msg: CommandEnvelope, ctx: Context, meta: dict[str, str | None]
    ) -> tuple[Sequence[msgspec.Struct], str, dict[str, str | None]]:
        event: EventEnvelope = _decode(EVENT_DECODER, msg.body, REACT)
        if self.codec.reactions is None or self.kind.react is None:
            raise BadMessage(f"{self.kind.name} reacts to nothing")
        payload = _decode(self.codec.reactions, event.data, event.type)
        meta["causation_id"] = str(event.event_id)
        meta["correlation_id"] = event.correlation_id or msg.correlation_id
        return self.kind.react(self.state, payload, ctx), str(event.event_id), meta


def _refused(msg: CommandEnvelope, exc: Rejected, version: int) -> Reply:
    return Reply(command_id=msg.command_id, ok=False, error=exc.message, error_type=exc.code,
                 version=version)


class _Decided(NamedTuple):
    """A message of a batch, decided: its events, cause, result and effects."""

    slot: int
    events: list[NewEvent]
    cause: str
    result: str | None
    effects: list[object]


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | msgspec.Raw, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"{what}: {exc}") from exc
