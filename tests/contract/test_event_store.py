"""The EventStore contract: every backend (SQLite, PostgreSQL) must pass each of these."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from schemas import EventEnvelope, NewEvent
from store.errors import ConcurrencyError, InvalidEvent
from store.projections import ProjectionHost
from store.protocol import ANY_VERSION, NO_STREAM, Snapshot
from store.registry import EventTypes
from store.sqlite import SqliteEventStore
from tests.support.events import Incremented, Noted, Renamed, new_event

WAIT = 10.0  # seconds a test waits for something that should happen at once


def inc(amount: int) -> NewEvent:
    return new_event(Incremented(amount=amount))


def amounts(events: list[EventEnvelope]) -> list[int]:
    return [msgspec.json.decode(bytes(e.data), type=Incremented).amount for e in events]


async def take(batches: AsyncIterator[list[EventEnvelope]], count: int) -> list[EventEnvelope]:
    """Collect at least ``count`` events from a subscription, failing if they do not come."""
    got: list[EventEnvelope] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got.extend(await anext(batches))
    return got


async def test_append_then_read_back_round_trips_every_envelope_field(
    store: ProjectionHost,
) -> None:
    """What is appended reads back identically, with version 1 and a position > 0."""
    sent = NewEvent(
        type="counter.noted",
        data=msgspec.json.encode(Noted(text="héllo", tags={"a": "b"})),
        event_id=uuid.uuid4(),
        occurred_at=dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC),
        correlation_id="req-1", causation_id="cmd-1", project_id="p-1", user_id="u-1",
    )
    result = await store.append("counter:a", [sent], NO_STREAM)
    [got] = await store.read_stream("counter:a")
    assert (result.stream, result.version, result.duplicate) == ("counter:a", 1, False)
    assert (got.stream, got.version, got.position) == ("counter:a", 1, result.position)
    assert got.position > 0
    assert (got.event_id, got.type, bytes(got.data)) == (sent.event_id, sent.type, sent.data)
    assert got.occurred_at == sent.occurred_at
    assert (got.correlation_id, got.causation_id, got.project_id, got.user_id) == (
        "req-1", "cmd-1", "p-1", "u-1",
    )
    assert (await store.read_all())[0] == got


async def test_absent_metadata_reads_back_as_none(store: ProjectionHost) -> None:
    """Optional ids left out are None on the envelope, not empty strings."""
    await store.append("counter:a", [inc(1)], NO_STREAM)
    [got] = await store.read_stream("counter:a")
    assert (got.correlation_id, got.causation_id, got.project_id, got.user_id) == (
        None, None, None, None,
    )


async def test_versions_are_contiguous_from_one_across_appends(store: ProjectionHost) -> None:
    """Each append continues the stream's versions with no gap; the result names the last."""
    first = await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    second = await store.append("counter:a", [inc(3)], 2)
    third = await store.append("counter:a", [inc(4), inc(5), inc(6)], 3)
    events = await store.read_stream("counter:a")
    assert [e.version for e in events] == [1, 2, 3, 4, 5, 6]
    assert amounts(events) == [1, 2, 3, 4, 5, 6]
    assert (first.version, second.version, third.version) == (2, 3, 6)
    assert third.position == events[-1].position
    assert await store.stream_version("counter:a") == 6


async def test_unknown_stream_has_version_zero_and_no_events(store: ProjectionHost) -> None:
    """A stream never written is at version 0 and reads back empty."""
    assert await store.stream_version("counter:nobody") == 0
    assert await store.read_stream("counter:nobody") == []


async def test_no_stream_on_existing_stream_conflicts_with_current_version(
    store: ProjectionHost,
) -> None:
    """NO_STREAM against a stream that exists raises ConcurrencyError carrying its version."""
    await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("counter:a", [inc(3)], NO_STREAM)
    assert (caught.value.stream, caught.value.expected, caught.value.current) == (
        "counter:a", NO_STREAM, 2,
    )


async def test_stale_expected_version_conflicts_and_appends_nothing(
    store: ProjectionHost,
) -> None:
    """A stale (or ahead) expected version is refused with the current one; nothing lands."""
    await store.append("counter:a", [inc(1), inc(2), inc(3)], NO_STREAM)
    head = await store.head()
    for expected in (1, 5):
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("counter:a", [inc(99), inc(98)], expected)
        assert (caught.value.expected, caught.value.current) == (expected, 3)
    assert amounts(await store.read_stream("counter:a")) == [1, 2, 3]
    assert await store.head() == head


async def test_any_version_appends_whatever_the_current_version(store: ProjectionHost) -> None:
    """ANY_VERSION skips the check, on a new stream and on an existing one."""
    first = await store.append("counter:a", [inc(1)], ANY_VERSION)
    second = await store.append("counter:a", [inc(2), inc(3)], ANY_VERSION)
    assert (first.version, second.version) == (1, 3)
    assert amounts(await store.read_stream("counter:a")) == [1, 2, 3]


@pytest.mark.parametrize(
    "bad",
    [
        NewEvent(type="counter.exploded", data=b'{"amount": 1}'),
        NewEvent(type="counter.incremented", data=b'{"amount": "one"}'),
        NewEvent(type="counter.incremented", data=b"not json"),
    ],
    ids=["unknown-type", "wrong-field-type", "not-json"],
)
async def test_invalid_event_mid_list_is_refused_and_nothing_written(
    store: ProjectionHost, bad: NewEvent
) -> None:
    """One undecodable event in the middle refuses the whole append: version and head stay."""
    await store.append("counter:a", [inc(1)], NO_STREAM)
    head = await store.head()
    with pytest.raises(InvalidEvent) as caught:
        await store.append("counter:a", [inc(2), bad, inc(3)], 1)
    assert caught.value.event_type == bad.type
    assert await store.stream_version("counter:a") == 1
    assert await store.head() == head
    with pytest.raises(InvalidEvent):
        await store.append("counter:new", [bad], NO_STREAM)
    assert await store.stream_version("counter:new") == 0
    assert await store.read_all() == await store.read_stream("counter:a")


async def test_repeated_cause_returns_first_result_as_duplicate_and_writes_nothing(
    store: ProjectionHost,
) -> None:
    """A redelivered reaction (same stream, same cause) is a no-op returning the first result."""
    first = await store.append("counter:a", [inc(1), inc(2)], NO_STREAM, cause="evt-1")
    head = await store.head()
    again = await store.append("counter:a", [inc(1), inc(2)], 2, cause="evt-1")
    assert not first.duplicate
    assert again.duplicate
    assert (again.stream, again.version, again.position) == (
        first.stream, first.version, first.position,
    )
    assert await store.stream_version("counter:a") == 2
    assert await store.head() == head


async def test_repeated_cause_is_duplicate_even_with_a_stale_expected_version(
    store: ProjectionHost,
) -> None:
    """Dedup by cause comes before the version check: a late redelivery is not a conflict."""
    first = await store.append("counter:a", [inc(1)], NO_STREAM, cause="evt-1")
    await store.append("counter:a", [inc(2)], 1)
    again = await store.append("counter:a", [inc(1)], NO_STREAM, cause="evt-1")
    assert again.duplicate
    assert (again.version, again.position) == (first.version, first.position)
    assert await store.stream_version("counter:a") == 2


async def test_different_cause_or_different_stream_still_appends(store: ProjectionHost) -> None:
    """A cause only dedups on its own stream; a new cause on the same stream appends."""
    await store.append("counter:a", [inc(1)], NO_STREAM, cause="evt-1")
    other_cause = await store.append("counter:a", [inc(2)], 1, cause="evt-2")
    other_stream = await store.append("counter:b", [inc(3)], NO_STREAM, cause="evt-1")
    assert not other_cause.duplicate and other_cause.version == 2
    assert not other_stream.duplicate and other_stream.version == 1
    assert amounts(await store.read_all()) == [1, 2, 3]


async def test_conflicting_append_with_cause_records_no_cause(store: ProjectionHost) -> None:
    """A reaction refused for a stale version can be retried with the same cause and lands."""
    await store.append("counter:a", [inc(1)], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        await store.append("counter:a", [inc(2)], NO_STREAM, cause="evt-1")
    retried = await store.append("counter:a", [inc(2)], 1, cause="evt-1")
    assert not retried.duplicate and retried.version == 2


async def test_an_append_of_several_causes_records_each_at_its_own_last_event(
    store: ProjectionHost,
) -> None:
    """Several commands' events in one append: each cause, sent again alone, is a duplicate
    answering the version and position of its own last event."""
    await store.append("counter:a", [inc(1)], NO_STREAM)
    result = await store.append("counter:a", [inc(2), inc(3), inc(4)], 1,
                                causes=[("cmd-1", 1), ("cmd-2", 3)])
    assert not result.duplicate and result.version == 4
    events = await store.read_stream("counter:a")
    one = await store.append("counter:a", [inc(2)], 1, cause="cmd-1")
    two = await store.append("counter:a", [inc(3), inc(4)], 1, cause="cmd-2")
    assert one.duplicate and (one.version, one.position) == (2, events[1].position)
    assert two.duplicate and (two.version, two.position) == (4, events[3].position)
    assert amounts(await store.read_all()) == [1, 2, 3, 4]


async def test_an_append_of_several_causes_with_one_recorded_writes_nothing(
    store: ProjectionHost,
) -> None:
    """If any of an append's causes was recorded on the stream before, none of its events
    are written and none of its other causes: the caller takes the commands one by one."""
    await store.append("counter:a", [inc(1)], NO_STREAM, cause="cmd-1")
    head = await store.head()
    result = await store.append("counter:a", [inc(2), inc(3)], 1,
                                causes=[("cmd-2", 1), ("cmd-1", 2)])
    assert result.duplicate and result.version == 1
    assert await store.head() == head
    alone = await store.append("counter:a", [inc(2)], 1, cause="cmd-2")
    assert not alone.duplicate and alone.version == 2


async def test_causes_must_cover_the_append_in_order(store: ProjectionHost) -> None:
    for causes, kw in (([("a", 2), ("b", 1)], {}), ([("a", 1)], {}), ([("a", 1), ("a", 2)], {}),
                       ([("a", 1), ("b", 2)], {"cause": "c"})):
        with pytest.raises(ValueError):
            await store.append("counter:a", [inc(1), inc(2)], NO_STREAM, causes=causes,
                               **kw)
    assert await store.stream_version("counter:a") == 0


async def test_read_stream_from_a_version_and_with_a_limit(store: ProjectionHost) -> None:
    """read_stream starts at from_version and returns at most limit events, in order."""
    await store.append("counter:a", [inc(i) for i in range(1, 8)], NO_STREAM)
    assert [e.version for e in await store.read_stream("counter:a", 4)] == [4, 5, 6, 7]
    assert [e.version for e in await store.read_stream("counter:a", 2, limit=3)] == [2, 3, 4]
    assert await store.read_stream("counter:a", 8) == []


async def test_read_all_after_a_position_is_strictly_increasing_across_streams(
    store: ProjectionHost,
) -> None:
    """read_all interleaves streams in commit order with strictly increasing positions."""
    await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    await store.append("counter:b", [inc(3)], NO_STREAM)
    await store.append("counter:a", [inc(4)], 2)
    events = await store.read_all()
    positions = [e.position for e in events]
    assert amounts(events) == [1, 2, 3, 4]
    assert [e.stream for e in events] == ["counter:a", "counter:a", "counter:b", "counter:a"]
    assert all(a < b for a, b in itertools.pairwise(positions))
    assert amounts(await store.read_all(after=positions[1])) == [3, 4]
    assert amounts(await store.read_all(after=positions[0], limit=2)) == [2, 3]
    assert await store.read_all(after=positions[-1]) == []


async def test_scan_log_gives_the_checked_columns_between_two_positions(
    store: ProjectionHost,
) -> None:
    """scan_log returns bare rows (position, stream, version, type, data, occurred_at,
    causation_id) of after < position <= until, in order, at most limit of them."""
    await store.append("counter:a", [inc(1), inc(2)], NO_STREAM, cause="cmd-1")
    await store.append("counter:b", [inc(3)], NO_STREAM)
    await store.append("counter:a", [inc(4)], 2)
    events = await store.read_all()
    head = await store.head()
    rows = await store.scan_log(0, head, 10)
    assert [tuple(r) for r in rows] == [
        (e.position, e.stream, e.version, e.type, bytes(e.data), e.occurred_at, e.causation_id)
        for e in events]
    first, second, third, fourth = (e.position for e in events)
    assert [r[0] for r in await store.scan_log(first, third, 10)] == [second, third]
    assert [r[0] for r in await store.scan_log(0, head, 2)] == [first, second]
    assert await store.scan_log(fourth, head, 10) == []


async def test_head_is_zero_when_empty_then_the_last_position(store: ProjectionHost) -> None:
    """head() is 0 on an empty log and the last committed position afterwards."""
    assert await store.head() == 0
    result = await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    assert await store.head() == result.position
    assert (await store.read_all())[-1].position == result.position


async def test_subscribe_catches_up_then_follows_live_appends(store: ProjectionHost) -> None:
    """A subscriber first gets what is already there, then appends made after it started."""
    await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    async with aclosing(store.subscribe(0, batch=1)) as batches:
        assert amounts(await take(batches, 2)) == [1, 2]
        await store.append("counter:b", [inc(3)], NO_STREAM)
        await store.append("counter:a", [inc(4), inc(5)], 2)
        assert amounts(await take(batches, 3)) == [3, 4, 5]


async def test_subscribe_after_a_position_skips_what_came_before(store: ProjectionHost) -> None:
    """subscribe(after) starts strictly after that position."""
    first = await store.append("counter:a", [inc(1), inc(2)], NO_STREAM)
    await store.append("counter:a", [inc(3)], 2)
    async with aclosing(store.subscribe(first.position)) as batches:
        assert amounts(await take(batches, 1)) == [3]


async def test_two_subscribers_see_the_same_sequence(store: ProjectionHost) -> None:
    """Two live subscribers receive the same events in the same order."""
    await store.append("counter:a", [inc(1)], NO_STREAM)
    async with (
        aclosing(store.subscribe(0, batch=2)) as one,
        aclosing(store.subscribe(0, batch=3)) as two,
    ):
        await take(one, 1)
        await take(two, 1)
        for i in range(2, 8):
            await store.append(f"counter:s{i % 2}", [inc(i)], ANY_VERSION)
        seen_one, seen_two = await take(one, 6), await take(two, 6)
    assert amounts(seen_one) == amounts(seen_two) == [2, 3, 4, 5, 6, 7]
    assert [e.position for e in seen_one] == [e.position for e in seen_two]


async def test_snapshot_saved_then_loaded(store: ProjectionHost) -> None:
    """A saved snapshot loads back as saved; a stream without one loads None."""
    snap = Snapshot(stream="counter:a", version=3, type="counter.state", data=b'{"total":6}')
    await store.save_snapshot(snap)
    assert await store.load_snapshot("counter:a") == snap
    assert await store.load_snapshot("counter:b") is None


async def test_newer_snapshot_replaces_and_older_never_does(store: ProjectionHost) -> None:
    """Snapshots only move forward: a newer version replaces, an older one is ignored."""
    newer = Snapshot(stream="counter:a", version=5, type="counter.state", data=b'{"total":5}')
    await store.save_snapshot(
        Snapshot(stream="counter:a", version=2, type="counter.state", data=b'{"total":2}')
    )
    await store.save_snapshot(newer)
    await store.save_snapshot(
        Snapshot(stream="counter:a", version=4, type="counter.state", data=b'{"total":4}')
    )
    assert await store.load_snapshot("counter:a") == newer


async def test_concurrent_appends_same_stream_same_expected_exactly_one_wins(
    store: ProjectionHost,
) -> None:
    """Writers racing on one stream with the same expectation: one lands, the rest conflict."""
    await store.append("counter:a", [inc(0)], NO_STREAM)
    results = await asyncio.gather(
        *(store.append("counter:a", [inc(i), inc(i)], 1) for i in range(1, 9)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1 and wins[0].version == 3
    assert all(isinstance(e, ConcurrencyError) and e.current >= 1 for e in losses)
    events = await store.read_stream("counter:a")
    assert [e.version for e in events] == [1, 2, 3]
    assert len(set(amounts(events)[1:])) == 1


async def test_concurrent_appends_to_different_streams_all_succeed_contiguously(
    store: ProjectionHost,
) -> None:
    """Many writers, each on its own stream, all succeed; every stream is 1..n, none lost."""
    streams, rounds = 8, 5

    async def writer(s: int) -> None:
        for version in range(rounds):
            await store.append(f"counter:w{s}", [inc(s * 100 + version)], version)

    await asyncio.gather(*(writer(s) for s in range(streams)))
    for s in range(streams):
        events = await store.read_stream(f"counter:w{s}")
        assert [e.version for e in events] == list(range(1, rounds + 1))
        assert amounts(events) == [s * 100 + v for v in range(rounds)]
    everything = await store.read_all(limit=10_000)
    assert len(everything) == streams * rounds
    assert len({e.position for e in everything}) == streams * rounds


async def test_other_event_types_round_trip_their_data(store: ProjectionHost) -> None:
    """Events of every registered type are stored with their data bytes untouched."""
    sent = [new_event(Renamed(name="x")), new_event(Noted(text="y" * 500))]
    await store.append("counter:a", sent, NO_STREAM)
    got = await store.read_stream("counter:a")
    assert [(e.type, bytes(e.data)) for e in got] == [(e.type, e.data) for e in sent]


async def test_reopened_log_keeps_every_event_and_snapshot(
    store: ProjectionHost, open_another: Callable[[], Awaitable[ProjectionHost]]
) -> None:
    """A second store opened on the same log (a restart) sees all of it and appends on."""
    await store.append("counter:a", [inc(1), inc(2)], NO_STREAM, cause="evt-1")
    snap = Snapshot(stream="counter:a", version=2, type="counter.state", data=b"{}")
    await store.save_snapshot(snap)
    written = await store.read_all()
    again = await open_another()
    assert await again.read_all() == written
    assert await again.head() == written[-1].position
    assert await again.load_snapshot("counter:a") == snap
    assert (await again.append("counter:a", [inc(9)], NO_STREAM, cause="evt-1")).duplicate
    result = await again.append("counter:a", [inc(3)], 2)
    assert result.version == 3 and result.position > written[-1].position


async def test_sqlite_in_memory_log_appends_reads_and_follows(event_types: EventTypes) -> None:
    """SQLite's ":memory:" log (one connection) appends, reads, follows live and closes."""
    memory = await SqliteEventStore.open(":memory:", event_types)
    try:
        await memory.append("counter:a", [inc(1)], NO_STREAM)
        async with aclosing(memory.subscribe()) as batches:
            assert amounts(await take(batches, 1)) == [1]
            await memory.append("counter:a", [inc(2)], 1)
            assert amounts(await take(batches, 1)) == [2]
        assert amounts(await memory.read_stream("counter:a")) == [1, 2]
    finally:
        await memory.close()


async def test_sqlite_subscription_ends_when_the_store_closes(event_types: EventTypes) -> None:
    """Closing the SQLite log ends a waiting subscriber instead of leaving it hanging."""
    log = await SqliteEventStore.open(":memory:", event_types)
    batches = log.subscribe()
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(0.05)
    await log.close()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(WAIT):
            await waiting


EXPECTATIONS = ["right", "stale", "ahead", "any", "no_stream"]
APPENDS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(1, 3), st.sampled_from(EXPECTATIONS)),
    min_size=1, max_size=12,
)


def _expected(how: str, current: int) -> int:
    return {
        "right": current,
        "stale": current - 1 if current > 0 else 1,
        "ahead": current + 1,
        "any": ANY_VERSION,
        "no_stream": NO_STREAM,
    }[how]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(appends=APPENDS)
async def test_random_appends_leave_streams_equal_to_a_simple_model(
    store: ProjectionHost, appends: list[tuple[int, int, str]]
) -> None:
    """Appends with right or wrong expectations: each stream reads back as a list model says."""
    run = uuid.uuid4().hex[:8]
    model: dict[str, list[int]] = {f"counter:{run}-{i}": [] for i in range(3)}
    serial = 0
    for index, count, how in appends:
        stream = f"counter:{run}-{index}"
        expected = _expected(how, len(model[stream]))
        batch = list(range(serial, serial + count))
        serial += count
        if expected in (ANY_VERSION, len(model[stream])):
            result = await store.append(stream, [inc(a) for a in batch], expected)
            model[stream].extend(batch)
            assert result.version == len(model[stream])
        else:
            with pytest.raises(ConcurrencyError):
                await store.append(stream, [inc(a) for a in batch], expected)
    for stream, expected_amounts in model.items():
        events = await store.read_stream(stream)
        assert amounts(events) == expected_amounts
        assert [e.version for e in events] == list(range(1, len(expected_amounts) + 1))
        assert await store.stream_version(stream) == len(expected_amounts)


async def test_load_returns_latest_snapshot_and_only_the_events_after_it(
    store: ProjectionHost,
) -> None:
    """Activation reads the newest snapshot and the tail after its version; with no
    snapshot, the whole stream; an unknown stream gives nothing."""
    stream = "counter:load"
    for v in range(5):
        await store.append(stream, [new_event(Incremented(amount=v))], v)
    assert await store.load("counter:none") == (None, [])
    snap, tail = await store.load(stream)
    assert snap is None and [e.version for e in tail] == [1, 2, 3, 4, 5]
    await store.save_snapshot(Snapshot(stream=stream, version=3, type="t", data=b"s3"))
    snap, tail = await store.load(stream)
    assert snap is not None and (snap.version, snap.data) == (3, b"s3")
    assert [e.version for e in tail] == [4, 5]
    await store.save_snapshot(Snapshot(stream=stream, version=5, type="t", data=b"s5"))
    snap, tail = await store.load(stream)
    assert snap is not None and snap.version == 5 and tail == []
