"""The pending-timer projection on every backend: a set timer is a row until it fires or is
cancelled, one set and ended within a batch writes nothing, and the fire loop is told of
the earliest timer a batch left pending."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from actors.timers import TimerProjection
from schemas import EventEnvelope, TimerCancelled, TimerFired, TimerSet
from store.projections import ProjectionHost

T0 = dt.datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=dt.UTC)


def micros(at: dt.datetime) -> int:
    return int(at.timestamp() * 1_000_000)


class Log:
    """Envelopes of the events a batch folds, positioned one after another."""

    def __init__(self) -> None:
        self.position = 0

    def __call__(self, stream: str, event: msgspec.Struct) -> EventEnvelope:
        self.position += 1
        tag = event.__struct_config__.tag
        assert isinstance(tag, str)
        return EventEnvelope(uuid.uuid4(), stream, self.position, self.position, tag,
                             msgspec.Raw(msgspec.json.encode(event)), T0)


async def pending(store: ProjectionHost) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await store.query(
        "SELECT timer_id, kind, actor_id, name, fire_at FROM orrery_timers ORDER BY timer_id")]


async def test_timers_pending_across_batches_and_the_earliest_told(
    store: ProjectionHost,
) -> None:
    told: list[tuple[int, int]] = []
    projection = TimerProjection(lambda position, at: told.append((position, at)))
    await store.run_ddl(projection.ddl)
    ev = Log()
    later, sooner = T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(seconds=30)

    first = [ev("instance:a", TimerSet(timer_id="ta", name="deadline", fire_at=later)),
             ev("volume:b", TimerSet(timer_id="tb", name="attach", fire_at=sooner)),
             ev("volume:b", TimerCancelled(timer_id="tb"))]
    async with store.projection_tx(projection.name, 0, ev.position) as tx:
        await projection.apply(tx, first)
    assert await pending(store) == [("ta", "instance", "a", "deadline", micros(later))]
    # the cancelled timer was sooner, but it is not pending: only the one left is told
    assert told == [(3, micros(later))]

    second = [ev("instance:a", TimerFired(timer_id="ta", name="deadline")),
              ev("instance:c", TimerSet(timer_id="tc", name="deadline", fire_at=sooner))]
    async with store.projection_tx(projection.name, 3, ev.position) as tx:
        await projection.apply(tx, second)
    assert await pending(store) == [("tc", "instance", "c", "deadline", micros(sooner))]
    assert told[1:] == [(5, micros(sooner))]

    third = [ev("instance:d", TimerSet(timer_id="td", name="deadline", fire_at=sooner)),
             ev("instance:d", TimerFired(timer_id="td", name="deadline")),
             ev("instance:c", TimerCancelled(timer_id="tc"))]
    async with store.projection_tx(projection.name, 5, ev.position) as tx:
        await projection.apply(tx, third)
    assert await pending(store) == []
    assert len(told) == 2  # nothing left pending: nothing to wake the fire loop for
    assert await store.projection_checkpoint(projection.name) == 8
