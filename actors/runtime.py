"""The actor runtime: routes messages to actors, one at a time each, and passivates idle ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from actors import metrics
from actors.cell import REACT, ActorCell
from actors.codec import KindCodec
from actors.kind import ActorKind, Tell, TellHost
from actors.shards import ShardBalancer
from bus.envelopes import command_envelope
from bus.errors import BadMessage
from bus.protocol import Bus, Delivery, Subscription
from bus.replies import actor_address, answer
from bus.routing import HOST_KIND
from schemas import COMMAND_DECODER, EVENT_DECODER, CommandEnvelope, Reply
from store.protocol import EventStore

log = structlog.get_logger(__name__)

#: how long a reaction message may wait in a shard queue before it is stale
REACTION_DEADLINE = dt.timedelta(days=7)
#: messages waiting for one actor that are handled together, with one append
MAX_TOGETHER = 64


@dataclass(frozen=True, slots=True)
class Origin:
    """The actor that asked for an effect, and the message that made it ask."""

    kind: str
    actor_id: str
    message: CommandEnvelope


#: carries out one kind-specific effect (e.g. the scheduler's placement) for ``origin``
EffectHandler = Callable[[Origin, Any], Awaitable[None]]


class ActorRuntime:
    """Hosts every actor of the given kinds that this process's shards own.

    ``start()`` begins consuming; ``shutdown()`` (idempotent) stops consuming and drops
    the cells. Use ``async with`` to own it.
    """

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        kinds: Sequence[ActorKind[Any]],
        *,
        passivate_after: float = 60.0,
        prefetch: int = 200,
        worker_id: str = "",
        effect_handlers: Mapping[type, EffectHandler] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.codecs = {k.name: KindCodec(k) for k in kinds}
        self._metrics = {k.name: metrics.KindMetrics(k.name) for k in kinds}
        self.passivate_after = passivate_after
        self.prefetch = prefetch
        self.cells: dict[tuple[str, str], ActorCell] = {}
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.balancers: dict[str, ShardBalancer] = {}
        self.effect_handlers: dict[type, EffectHandler] = {
            Tell: self._tell, TellHost: self._tell_host, **(effect_handlers or {}),
        }
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []

    def event_types(self) -> list[type[msgspec.Struct]]:
        """Every event Struct these kinds record (for the store's registry)."""
        return [t for c in self.codecs.values() for t in c.event_types()]

    async def __aenter__(self) -> ActorRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        for name, codec in self.codecs.items():
            balancer = ShardBalancer(
                self.store, self.bus, name, self._on_command, shards=self.bus.names.shards,
                prefetch=self.prefetch, prefix=self.bus.names.prefix, worker_id=self.worker_id,
            )
            self._tasks.append(asyncio.create_task(balancer.run(), name=f"shards-{name}"))
            self.balancers[name] = balancer
            if codec.kind.reactions:
                self._subs.append(
                    await self.bus.subscribe_events(
                        f"react.{name}", sorted(codec.kind.reactions), _Router(self.bus, codec),
                        prefetch=self.prefetch,
                    )
                )
        self._tasks.append(asyncio.create_task(self._passivate_loop(), name="passivate"))
        async with asyncio.timeout(30):  # every kind consumes its first shards
            for balancer in self.balancers.values():
                await balancer.settled.wait()
        log.info("runtime_started", kinds=sorted(self.codecs), worker=self.worker_id)

    async def shutdown(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.cancel()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for kind, _ in self.cells:
            self._metrics[kind].active.dec()
        self.cells.clear()

    # -- delivery ------------------------------------------------------------------------

    async def _on_command(self, delivery: Delivery) -> None:
        try:
            msg = COMMAND_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable command: {exc}") from exc
        codec = self.codecs.get(msg.kind)
        if codec is None:
            raise BadMessage(f"no actor kind {msg.kind!r} in this runtime")
        structlog.contextvars.bind_contextvars(
            correlation_id=msg.correlation_id, actor=f"{msg.kind}:{msg.actor_id}"
        )
        try:
            reply = await self.handle(codec, msg)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id", "actor")
        await answer(self.bus, msg, reply)

    async def handle(self, codec: KindCodec, msg: CommandEnvelope) -> Reply:
        """Process one message for one actor, after any earlier message for it."""
        kind = codec.kind.name
        counts = self._metrics[kind]
        now = dt.datetime.now(dt.UTC)
        if now > msg.deadline:
            counts.expired.inc()
            log.warning("command_expired", type=msg.type, deadline=msg.deadline.isoformat())
            return Reply(command_id=msg.command_id, ok=False, error_type="deadline_exceeded",
                         error=f"command {msg.command_id} arrived after its deadline")
        key = (kind, msg.actor_id)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = ActorCell(codec, msg.actor_id, self.store)
            counts.active.inc()
        mine: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        cell.mailbox.append((msg, now, mine))
        cell.waiting += 1
        counts.mailbox.inc()
        try:
            await cell.lock.acquire()
        finally:
            cell.waiting -= 1
            counts.mailbox.dec()
        try:
            if not mine.done():  # not handled yet along with a message before it
                await self._handle_waiting(cell, counts)
        finally:
            cell.last_used = time.monotonic()
            cell.lock.release()
        return await mine

    async def _handle_waiting(self, cell: ActorCell, counts: Any) -> None:
        """Handle the messages waiting for ``cell`` (this one first), together: one trip
        to the log for all of them (``ActorCell.handle_many``); effects after, in order."""
        # the lock and the mailbox are both first come, first served: the head is ours
        waiting = [cell.mailbox.popleft()
                   for _ in range(min(len(cell.mailbox), MAX_TOGETHER))]
        started = time.perf_counter()
        try:
            handled = await cell.handle_many([m for m, _, _ in waiting],
                                             max(now for _, now, _ in waiting))
        except Exception as exc:  # the store failed them all: each delivery sees it
            cell.invalidate()
            counts.failed.inc(len(waiting))
            for _, _, future in waiting:
                future.set_exception(exc)
            return
        except BaseException:
            cell.invalidate()
            for _, _, future in waiting:
                future.cancel()
            raise
        each = (time.perf_counter() - started) / len(waiting)
        for (msg, _, future), outcome in zip(waiting, handled, strict=True):
            counts.handle_seconds.observe(each)
            if isinstance(outcome, Exception):
                counts.failed.inc()
                future.set_exception(outcome)
                continue
            reply, effects = outcome
            for effect in effects:
                await self._carry_out(Origin(cell.kind.name, msg.actor_id, msg), effect)
            if reply.ok:
                counts.ok.inc()
            else:
                counts.rejected.inc()
                log.info("command_rejected", type=msg.type, code=reply.error_type,
                         reason=reply.error)
            future.set_result(reply)

    # -- effects -------------------------------------------------------------------------

    async def _carry_out(self, origin: Origin, effect: object) -> None:
        """One effect, after its events were recorded. A failure is logged, not raised:
        the event is in the log, and the actor's deadline covers an effect that was lost."""
        handler = self.effect_handlers.get(type(effect))
        if handler is None:
            log.error("effect_unhandled", effect=type(effect).__name__)
            return
        try:
            await handler(origin, effect)
        except Exception as exc:
            log.warning("effect_failed", effect=type(effect).__name__, error=repr(exc))

    async def _tell(self, origin: Origin, effect: Tell) -> None:
        await self.bus.send(request_envelope(
            origin, effect.kind, effect.actor_id, effect.command, effect.request_id,
            effect.timeout))

    async def _tell_host(self, origin: Origin, effect: TellHost) -> None:
        await self.bus.send(request_envelope(
            origin, HOST_KIND, effect.host, effect.command, effect.request_id, effect.timeout))

    # -- passivation ---------------------------------------------------------------------

    async def _passivate_loop(self) -> None:
        period = max(self.passivate_after / 2, 0.05)
        while True:
            await asyncio.sleep(period)
            self.passivate_idle()

    def passivate_idle(self) -> int:
        """Drop every actor idle for longer than ``passivate_after``; returns how many."""
        cutoff = time.monotonic() - self.passivate_after
        idle = [
            key for key, cell in self.cells.items()
            if cell.last_used < cutoff and cell.waiting == 0 and not cell.lock.locked()
            and not cell.mailbox
        ]
        for key in idle:
            del self.cells[key]
            self._metrics[key[0]].active.dec()
            metrics.PASSIVATIONS.labels(key[0]).inc()
        return len(idle)


def request_envelope(
    origin: Origin, kind: str, actor_id: str, command: Any, request_id: str, timeout: float
) -> CommandEnvelope:
    """A request from ``origin``'s actor whose answer comes back to that actor."""
    msg = origin.message
    return command_envelope(
        kind, actor_id, command, command_id=request_id, timeout=timeout,
        correlation_id=msg.correlation_id, causation_id=msg.command_id,
        reply_to=actor_address(origin.kind, origin.actor_id),
        project_id=msg.project_id, user_id=msg.user_id)


class _Router:
    """Turns another actor's event into a reaction message on the reacting actor's shard,
    so that reactions, like commands, reach each actor through its single writer."""

    def __init__(self, bus: Bus, codec: KindCodec) -> None:
        self.bus = bus
        self.codec = codec

    async def __call__(self, delivery: Delivery) -> None:
        try:
            event = EVENT_DECODER.decode(delivery.body)
            find = self.codec.kind.reactions.get(event.type)
            if find is None or self.codec.reactions is None:
                return
            target = find(self.codec.reactions.decode(event.data))
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable event: {exc}") from exc
        if target is None:
            return
        await self.bus.send(
            CommandEnvelope(
                command_id=str(event.event_id),
                kind=self.codec.kind.name,
                actor_id=target,
                type=REACT,
                body=msgspec.Raw(delivery.body),
                correlation_id=event.correlation_id or str(event.event_id),
                causation_id=str(event.event_id),
                deadline=dt.datetime.now(dt.UTC) + REACTION_DEADLINE,
                project_id=event.project_id,
                user_id=event.user_id,
            )
        )
