"""The Bus contract: every behaviour, run against MemoryBus and AmqpBus alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from prometheus_client import REGISTRY

from bus import BadMessage, Bus, CallTimeout, Names, shard_of
from bus.protocol import Delivery
from schemas import COMMAND_DECODER, ENCODER, EVENT_DECODER, Reply
from tests.contract.bus_fixtures import (
    BusKit,
    Inbox,
    amqp_kit,
    command,
    dead_letters_eventually,
    event,
    memory_kit,
    wait_total,
)


@pytest.fixture(params=["memory", "amqp"])
def bus_backend(request: pytest.FixtureRequest) -> str | None:
    """None for the in-memory bus; the broker URL for AMQP (queues deleted afterwards)."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("amqp_url")
    request.getfixturevalue("amqp_cleanup")
    return url


@pytest.fixture
async def bus_kit(bus_backend: str | None, bus_names: Names) -> AsyncIterator[BusKit]:
    kit = amqp_kit(bus_backend, bus_names) if bus_backend else memory_kit(bus_names)
    try:
        yield kit
    finally:
        for bus in kit.buses:
            await bus.close()


@pytest.fixture
async def bus(bus_kit: BusKit) -> Bus:
    """The first bus of the kit."""
    return await bus_kit.make()


MARKER = event(stream="marker:1", event_type="done")  # routing key "marker.done"


def actors_by_shard(shards: int, per_shard: int = 3) -> dict[int, list[str]]:
    """Actor ids that cover every shard, ``per_shard`` of each."""
    found: dict[int, list[str]] = {i: [] for i in range(shards)}
    n = 0
    while any(len(ids) < per_shard for ids in found.values()):
        actor = f"actor-{n}"
        n += 1
        if len(found[shard_of(actor, shards)]) < per_shard:
            found[shard_of(actor, shards)].append(actor)
    return found


async def test_topic_patterns_route_to_matching_queues_only(bus: Bus) -> None:
    """'*' is one word, '#' any number, exact keys only themselves; no other queue gets it."""
    patterns = {"star": "counter.*", "hash": "#", "exact": "counter.renamed",
                "other": "other.#"}
    inboxes = {name: Inbox() for name in patterns}
    for name, pattern in patterns.items():
        await bus.subscribe_events(name, [pattern, "marker.#"], inboxes[name].handler)
    await bus.publish_events([
        event(event_type="counter.incremented"),
        event(event_type="counter.renamed"),
        event(stream="other:1", event_type="thing.done"),
        MARKER,
    ])
    got = {}
    for name, inbox in inboxes.items():
        await inbox.wait_for(1)
        while inbox.items[-1].routing_key != "marker.done":
            await inbox.wait_for(len(inbox.items) + 1)
        got[name] = [d.routing_key for d in inbox.items[:-1]]
    assert got == {
        "star": ["counter.incremented", "counter.renamed"],
        "hash": ["counter.incremented", "counter.renamed", "other.thing.done"],
        "exact": ["counter.renamed"],
        "other": ["other.thing.done"],
    }


async def test_events_published_before_the_queue_existed_are_not_delivered(bus: Bus) -> None:
    """A subscription sees only what is published after its queue is bound."""
    await bus.publish_event(event(version=1))
    inbox = Inbox()
    await bus.subscribe_events("late", ["counter.#"], inbox.handler)
    await bus.publish_event(event(version=2))
    [only] = await inbox.wait_for(1)
    assert EVENT_DECODER.decode(only.body).version == 2


async def test_competing_subscribers_split_a_queue(bus_kit: BusKit) -> None:
    """Two consumers of one queue name (two processes) each get a share, none twice."""
    first, second = await bus_kit.make(), await bus_kit.make()
    changed = asyncio.Event()
    a, b = Inbox(changed), Inbox(changed)
    await first.subscribe_events("shared", ["counter.#"], a.handler, prefetch=5)
    await second.subscribe_events("shared", ["counter.#"], b.handler, prefetch=5)
    sent = [event(version=v) for v in range(1, 41)]
    await first.publish_events(sent)
    await wait_total([a, b], len(sent))
    assert a.items and b.items
    assert sorted(a.bodies() + b.bodies()) == sorted(ENCODER.encode(e) for e in sent)


async def test_per_publisher_order_is_kept_on_one_queue(bus: Bus) -> None:
    """One publisher's events reach one queue in the order they were published."""
    inbox = Inbox()
    await bus.subscribe_events("ordered", ["counter.#"], inbox.handler)
    batch = [event(version=v) for v in range(1, 301)]
    await bus.publish_events(batch)
    for v in range(301, 311):
        await bus.publish_event(event(version=v))
    await inbox.wait_for(310)
    assert [EVENT_DECODER.decode(d.body).version for d in inbox.items] == list(range(1, 311))


async def test_commands_reach_the_shard_chosen_by_shard_of(bus: Bus, bus_kit: BusKit) -> None:
    """Each command lands on shard_of(actor_id); the same actor always on the same shard."""
    names = bus_kit.names
    inbox = Inbox()
    await bus.consume_commands("counter", inbox.handler)
    actors = [a for ids in actors_by_shard(names.shards, 2).values() for a in ids]
    for actor in actors * 2:
        await bus.send(command(actor))
    await inbox.wait_for(len(actors) * 2)
    for delivery in inbox.items:
        actor = COMMAND_DECODER.decode(delivery.body).actor_id
        assert delivery.queue == names.shard_queue("counter", shard_of(actor, names.shards))


async def test_command_sent_before_any_consumer_is_kept(bus: Bus) -> None:
    """send declares the shard queue, so a worker that starts later still gets it."""
    sent = command("early-actor")
    await bus.send(sent)
    inbox = Inbox()
    await bus.consume_commands("counter", inbox.handler)
    [got] = await inbox.wait_for(1)
    assert COMMAND_DECODER.decode(got.body).command_id == sent.command_id


async def test_host_commands_reach_the_host_queue(bus: Bus, bus_kit: BusKit) -> None:
    """A compute command goes to its host's queue and not to another host's."""
    h1, h2 = Inbox(), Inbox()
    await bus.consume_host("h1", h1.handler)
    await bus.consume_host("h2", h2.handler)
    await bus.send(command("h1", kind="compute", command_type="compute.spawn"))
    await bus.send(command("h2", kind="compute", command_type="compute.spawn"))
    await bus.send(command("h1", kind="compute", command_type="compute.stop"))
    await h1.wait_for(2)
    await h2.wait_for(1)
    assert [COMMAND_DECODER.decode(d.body).type for d in h1.items] == [
        "compute.spawn", "compute.stop"]
    assert {d.queue for d in h1.items} == {bus_kit.names.host_queue("h1")}
    assert len(h2.items) == 1


async def test_call_reply_round_trip(bus_kit: BusKit) -> None:
    """call() sends with reply_to and returns the responder's Reply for that command."""
    caller, worker = await bus_kit.make(), await bus_kit.make()

    async def respond(delivery: Delivery) -> None:
        cmd = COMMAND_DECODER.decode(delivery.body)
        assert cmd.reply_to is not None
        await worker.reply(cmd.reply_to, Reply(command_id=cmd.command_id, ok=True, version=7))

    await worker.consume_commands("counter", respond)
    sent = command("callee")
    reply = await caller.call(sent, timeout=10)
    assert reply == Reply(command_id=sent.command_id, ok=True, version=7)


async def test_call_timeout_raises_call_timeout(bus: Bus) -> None:
    """With nobody answering, call() gives up with CallTimeout after its timeout."""
    inbox = Inbox()
    await bus.consume_commands("counter", inbox.handler)  # receives, never replies
    with pytest.raises(CallTimeout):
        await bus.call(command("silent"), timeout=0.3)
    await inbox.wait_for(1)


async def test_handler_exception_redelivers_then_dead_letters(bus: Bus, bus_kit: BusKit) -> None:
    """A failing handler sees attempts 1..max_attempts, then the message is dead-lettered
    with the reason, its queue and its original routing key; reading removes it."""
    attempts: list[Delivery] = []

    async def boom(delivery: Delivery) -> None:
        attempts.append(delivery)
        raise RuntimeError("boom")

    await bus.subscribe_events("failing", ["counter.#"], boom)
    sent = event()
    await bus.publish_event(sent)
    [letter] = await dead_letters_eventually(bus, 1)
    assert [d.attempt for d in attempts] == [1, 2, 3, 4, 5]
    assert {d.routing_key for d in attempts} == {"counter.incremented"}
    assert letter.attempts == 5 and "RuntimeError: boom" in letter.reason
    assert letter.queue == bus_kit.names.event_queue("failing")
    assert letter.routing_key == "counter.incremented"
    assert EVENT_DECODER.decode(letter.body).event_id == sent.event_id
    assert await bus.dead_letters() == []


async def test_bad_message_is_dead_lettered_at_once(bus: Bus) -> None:
    """BadMessage skips retries: one attempt, then the dead-letter queue with its reason."""
    attempts: list[int] = []

    async def refuse(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise BadMessage("unknown counter")

    await bus.subscribe_events("refusing", ["counter.#"], refuse)
    await bus.publish_event(event())
    [letter] = await dead_letters_eventually(bus, 1)
    assert attempts == [1]
    assert letter.attempts == 1 and "unknown counter" in letter.reason


def handled_total(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "orrery_bus_handled_total", {"queue_kind": "event", "outcome": outcome})
    return value or 0.0


async def test_outcomes_are_counted_in_metrics(bus: Bus) -> None:
    """Every settled delivery counts once under its outcome: ack, retry, dead."""
    before = {o: handled_total(o) for o in ("ack", "retry", "dead")}
    dead_before = REGISTRY.get_sample_value("orrery_dead_letters_total") or 0.0

    async def flaky(delivery: Delivery) -> None:
        if EVENT_DECODER.decode(delivery.body).version == 2:
            raise BadMessage("no")
        if delivery.attempt == 1:
            raise RuntimeError("once")

    inbox = Inbox()
    await bus.subscribe_events("counted", ["counter.#"], flaky)
    await bus.subscribe_events("watch", ["counter.#"], inbox.handler)
    await bus.publish_events([event(version=1), event(version=2)])
    await dead_letters_eventually(bus, 1)
    await inbox.wait_for(2)
    expected = {"ack": 3, "retry": 1, "dead": 1}

    def counted() -> dict[str, float]:
        return {o: handled_total(o) - before[o] for o in expected}

    async with asyncio.timeout(10):
        while counted() != expected:  # noqa: ASYNC110  (polling a metric)
            await asyncio.sleep(0.01)
    assert (REGISTRY.get_sample_value("orrery_dead_letters_total") or 0.0) - dead_before == 1


async def test_undecodable_message_is_dead_lettered_and_consumer_keeps_going(
    bus: Bus, bus_kit: BusKit
) -> None:
    """Garbage bytes on a shard queue go to dead letters with a reason; the next good
    command on the same shard is still handled."""
    handled = Inbox()

    async def decode(delivery: Delivery) -> None:
        try:
            COMMAND_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable command: {exc}") from exc
        await handled.handler(delivery)

    await bus.consume_commands("counter", decode, prefetch=1)
    shard0 = bus_kit.names.shard_queue("counter", 0)
    await bus_kit.inject(shard0, b"\xff not json at all")
    good = command(actors_by_shard(bus_kit.names.shards, 1)[0][0])
    await bus.send(good)
    [letter] = await dead_letters_eventually(bus, 1)
    assert letter.queue == shard0 and "undecodable command" in letter.reason
    assert letter.body == b"\xff not json at all"
    [ok] = await handled.wait_for(1)
    assert COMMAND_DECODER.decode(ok.body).command_id == good.command_id


async def test_single_active_consumer_per_shard_with_failover(bus_kit: BusKit) -> None:
    """Two workers consume one kind: each shard's commands all go to one of them; once
    that worker's subscription is cancelled, the other gets the shard's next commands."""
    one, two = await bus_kit.make(), await bus_kit.make()
    changed = asyncio.Event()
    got_one, got_two = Inbox(changed), Inbox(changed)
    sub_one = await one.consume_commands("counter", got_one.handler)
    await two.consume_commands("counter", got_two.handler)
    actors = actors_by_shard(bus_kit.names.shards, 3)
    for ids in actors.values():
        for actor in ids:
            await one.send(command(actor))
    total = 3 * bus_kit.names.shards
    await wait_total([got_one, got_two], total)
    for queue in {d.queue for d in got_one.items + got_two.items}:
        owners = {id(i) for i in (got_one, got_two) for d in i.items if d.queue == queue}
        assert len(owners) == 1, f"{queue} was consumed by both workers"
    await sub_one.cancel()
    before = len(got_two.items)
    for ids in actors.values():
        await one.send(command(ids[0]))
    await got_two.wait_for(before + bus_kit.names.shards)
    assert len(got_one.items) + before == total
