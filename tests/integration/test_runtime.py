"""The actor runtime on both sets of backends: embedded (SQLite + memory) and real
(PostgreSQL + RabbitMQ), with the test-only counter kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from actors.client import ActorClient, command_envelope
from actors.metrics import ACTIVATIONS
from actors.runtime import ActorRuntime
from actors.timers import TimerService
from bus.protocol import Bus
from bus.routing import Names
from schemas import stream_name
from store.registry import EventTypes
from store.relay import Relay
from tests.support.backends import eventually, open_backends
from tests.support.counter import (
    COUNTER,
    CancelTimer,
    CounterState,
    Explode,
    Increment,
    Open,
    Refuse,
    StartTimer,
)
from tests.support.events import Incremented, new_event


class Harness(msgspec.Struct, kw_only=True):
    store: Any
    bus: Bus
    runtime: ActorRuntime
    client: ActorClient

    async def stream(self, actor_id: str) -> list[Any]:
        return list(await self.store.read_stream(stream_name("counter", actor_id)))

    async def types_of(self, actor_id: str) -> list[str]:
        return [e.type for e in await self.stream(actor_id)]


@pytest.fixture
async def harness(
    backends: tuple[str, dict[str, Any]], event_types: EventTypes, bus_names: Names,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    which, extra = backends
    async with open_backends(which, types=event_types, names=bus_names,
                             tmp_path=tmp_path, **extra) as (store, bus):
        runtime = ActorRuntime(store, bus, [COUNTER], passivate_after=60)
        async with runtime:
            tasks = [asyncio.create_task(Relay(store, bus).run()),
                     asyncio.create_task(TimerService(store, bus, resend_after=120).run())]
            try:
                yield Harness(store=store, bus=bus, runtime=runtime,
                              client=ActorClient(bus, timeout=15))
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass


async def test_command_appends_its_events_and_replies_with_the_new_version(h: Harness) -> None:
    """A call is decided, appended at the next version, and answered with that version."""
    first = await h.client.call("counter", "a", Increment(amount=2))
    second = await h.client.call("counter", "a", Increment(amount=3))
    assert (first.ok, first.version, second.version) == (True, 1, 2)
    assert second.position > first.position
    events = await h.stream("a")
    assert [msgspec.json.decode(e.data)["amount"] for e in events] == [2, 3]


async def test_rejected_command_appends_nothing_and_says_why(h: Harness) -> None:
    """A rejection is an answer with a code; the stream is untouched."""
    reply = await h.client.call("counter", "r", Refuse())
    assert not reply.ok and reply.error_type == "conflict"
    assert "refuses" in (reply.error or "")
    assert await h.stream("r") == []


async def test_log_lines_carry_the_correlation_id_of_the_message(h: Harness) -> None:
    """What an actor logs while handling a message names the request that caused it."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        reply = await h.client.call("counter", "log", Refuse(), correlation_id="req-abc")
    assert not reply.ok
    (line,) = [x for x in logs if x["event"] == "command_rejected"]
    assert line["correlation_id"] == "req-abc"
    assert line["actor"] == "counter:log" and line["code"] == "conflict"


async def test_redelivered_command_takes_effect_once(h: Harness) -> None:
    """The same command id delivered twice (at-least-once) is recorded once."""
    env = command_envelope("counter", "dup", Increment(amount=5), command_id="cmd-dup-1")
    await h.bus.send(env)
    await h.bus.send(env)
    await h.client.call("counter", "dup", Increment(amount=1))
    await eventually(lambda: _has_n(h, "dup", 2), what="two increments")
    await asyncio.sleep(0.2)
    events = await h.stream("dup")
    assert [msgspec.json.decode(e.data)["amount"] for e in events] == [5, 1]


def _activations() -> float:
    """How often a counter actor was activated by reading its stream."""
    return float(ACTIVATIONS.labels("counter")._value.get())


async def test_a_new_actor_decides_its_create_without_reading_its_stream(h: Harness) -> None:
    """A create (ActorKind.creates) for an actor not yet active is decided on its initial
    state, with no read of its stream. The stream decides when it is not new: the same
    create for an actor that exists (not active any more) is refused as its real state
    says, a refusal is likewise the real state's, and neither records anything; the same
    command redelivered is answered as recorded."""
    before = _activations()
    opened = await h.client.call("counter", "n1", Open(start=5), command_id="open-n1")
    assert (opened.ok, opened.version) == (True, 1)
    assert _activations() == before

    h.runtime.passivate_after = 0
    h.runtime.passivate_idle()
    assert ("counter", "n1") not in h.runtime.cells
    again = await h.client.call("counter", "n1", Open(start=7))
    assert (again.ok, again.error_type, again.error) == (False, "conflict",
                                                         "counter already open")
    bad = await h.client.call("counter", "n1", Open(start=0))
    assert (bad.ok, bad.error_type) == (False, "conflict")  # not bad_request: it exists
    h.runtime.passivate_idle()
    repeated = await h.client.call("counter", "n1", Open(start=5), command_id="open-n1")
    assert (repeated.ok, repeated.version, repeated.position) == (
        True, 1, opened.position)
    assert [msgspec.json.decode(e.data)["amount"] for e in await h.stream("n1")] == [5]


async def test_messages_waiting_for_one_actor_are_appended_together(h: Harness) -> None:
    """Messages that wait for a busy actor are decided in turn and appended together: each
    answered with its own event's version and position, each command's id recorded (sent
    again, none takes effect twice), versions contiguous."""
    codec = h.runtime.codecs["counter"]
    envs = [command_envelope("counter", "many", Increment(amount=i), command_id=f"many-{i}")
            for i in range(1, 21)]
    replies = await asyncio.gather(*(h.runtime.handle(codec, e) for e in envs))
    assert all(r.ok for r in replies)
    events = {e.version: e for e in await h.stream("many")}
    assert sorted(events) == list(range(1, 21))
    for env, reply in zip(envs, replies, strict=True):
        event = events[reply.version]
        assert event.position == reply.position and event.causation_id == env.command_id
        assert msgspec.json.decode(event.data)["amount"] == int(env.command_id[5:])
    if h.store.__class__.__name__ == "PostgresEventStore":  # one transaction: one xid
        assert len({e.position >> 20 for e in events.values()}) < 10
    again = await asyncio.gather(*(h.runtime.handle(codec, e) for e in envs[:6]))
    assert [r.version for r in again] == [r.version for r in replies[:6]]
    assert len(await h.stream("many")) == 20
    cell = h.runtime.cells[("counter", "many")]
    assert isinstance(cell.state, CounterState) and cell.state.total == 210


async def test_conflict_is_retried_from_fresh_state(h: Harness) -> None:
    """When another writer appended behind the actor's back, it reloads and decides again:
    versions stay contiguous and nothing is overwritten."""
    await h.client.call("counter", "c", Increment(amount=1))
    await h.store.append(stream_name("counter", "c"), [new_event(Incremented(amount=10))], 1)
    reply = await h.client.call("counter", "c", Increment(amount=100))
    assert reply.ok and reply.version == 3
    events = await h.stream("c")
    assert [e.version for e in events] == [1, 2, 3]
    cell = h.runtime.cells[("counter", "c")]
    assert isinstance(cell.state, CounterState) and cell.state.total == 111


async def test_failing_handler_is_dead_lettered_and_siblings_go_on(h: Harness) -> None:
    """A handler that raises is retried a bounded number of times, then dead-lettered with
    the reason, while the same actor and others keep working."""
    await h.client.cast("counter", "boom", Explode())
    ok = await h.client.call("counter", "sibling", Increment(amount=1))
    assert ok.ok

    async def dead() -> bool:
        dead.letters += await h.bus.dead_letters()  # type: ignore[attr-defined]
        return bool(dead.letters)  # type: ignore[attr-defined]

    dead.letters = []  # type: ignore[attr-defined]
    await eventually(dead, what="a dead letter")
    letter = dead.letters[0]  # type: ignore[attr-defined]
    assert "exploded" in letter.reason and letter.attempts == 3
    again = await h.client.call("counter", "boom", Increment(amount=1))
    assert again.ok and again.version == 1


async def test_expired_command_has_no_effect(h: Harness) -> None:
    """A command that arrives after its deadline is answered as expired, with no event."""
    env = command_envelope("counter", "late", Increment(amount=1), timeout=-1)
    await h.bus.send(env)
    await h.client.call("counter", "late-marker", Increment(amount=1))
    await asyncio.sleep(0.3)
    assert await h.stream("late") == []


async def test_reaction_reaches_the_other_actor_through_the_relay(h: Harness) -> None:
    """command -> event -> relay -> reacting actor -> event, caused by the first event."""
    reply = await h.client.call("counter", "src", Increment(amount=7, forward_to="dst"))
    assert reply.ok
    await eventually(lambda: _has_n(h, "dst", 1), what="the reaction")
    (src,) = await h.stream("src")
    (dst,) = await h.stream("dst")
    assert dst.causation_id == str(src.event_id)
    assert dst.correlation_id == src.correlation_id
    assert msgspec.json.decode(dst.data)["amount"] == 7


async def test_passivated_actor_comes_back_with_the_same_state(h: Harness) -> None:
    """An idle actor leaves memory; its next message folds snapshot + tail to the same state."""
    for _ in range(60):  # past snapshot_every=50
        await h.client.call("counter", "p", Increment(amount=1))
    assert await h.store.load_snapshot(stream_name("counter", "p")) is not None
    h.runtime.passivate_after = 0
    assert h.runtime.passivate_idle() >= 1
    assert ("counter", "p") not in h.runtime.cells
    reply = await h.client.call("counter", "p", Increment(amount=1))
    assert reply.version == 61
    assert h.runtime.cells[("counter", "p")].state.total == 61


async def test_timer_fires_once_and_a_cancelled_one_never(h: Harness) -> None:
    """A timer set by decide fires once, recorded as timer.fired; a cancelled one does not.

    Regression: the service once woke inside the projection's transaction, saw no row,
    and slept until its resend interval (120 s here), so the timer fired far too late."""
    await h.client.call("counter", "t", StartTimer(name="ring", delay=0.3))
    await h.client.call("counter", "t", StartTimer(name="mute", delay=0.6))
    await h.client.call("counter", "t", CancelTimer(name="mute"))
    await eventually(lambda: _has_type(h, "t", "timer.fired"), what="the timer")
    await asyncio.sleep(1.0)
    types = await h.types_of("t")
    assert types.count("timer.fired") == 1
    assert types.count("counter.noted") == 1
    assert h.runtime.cells[("counter", "t")].state.fired == ["ring"]


async def test_a_sooner_timer_set_while_waiting_for_a_later_one_fires_on_time(
    h: Harness,
) -> None:
    """The timer service sleeps until the earliest deadline it knows of; a timer set
    meanwhile that is due sooner shortens that sleep (it fires within seconds, not when
    the later one is due, 60 s on)."""
    await h.client.call("counter", "late", StartTimer(name="late", delay=60))
    await asyncio.sleep(0.5)  # the service now waits for the 60 s timer
    await h.client.call("counter", "soon", StartTimer(name="soon", delay=0.2))
    await eventually(lambda: _has_type(h, "soon", "timer.fired"), what="the sooner timer")
    assert "timer.fired" not in await h.types_of("late")


async def _has_n(h: Harness, actor_id: str, n: int) -> bool:
    return len(await h.stream(actor_id)) >= n


async def _has_type(h: Harness, actor_id: str, t: str) -> bool:
    return t in await h.types_of(actor_id)


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness

