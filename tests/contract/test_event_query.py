"""The filtered read contract (``read_filtered``): SQLite and PostgreSQL answer alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from schemas import EventEnvelope
from store.projections import ProjectionHost
from store.protocol import ANY_VERSION, EventQuery
from tests.support.events import Incremented, Renamed, new_event


def amounts(events: list[EventEnvelope]) -> list[int]:
    return [msgspec.json.decode(bytes(e.data), type=Incremented).amount for e in events]


async def seed(store: ProjectionHost) -> None:
    """Twelve events: amounts 1..12 over three streams of two kinds, two projects, two
    requests; amount n is on stream n % 3."""
    streams = ["counter:a", "counter:b", "gadget:c"]
    for n in range(1, 13):
        event = new_event(Incremented(amount=n), project_id="p1" if n % 2 else "p2",
                          correlation_id="req-odd" if n % 4 == 1 else "req-x")
        await store.append(streams[n % 3], [event], ANY_VERSION)


async def test_each_filter_returns_exactly_its_events_in_log_order(
    store: ProjectionHost,
) -> None:
    """stream, kinds, exclude_kinds, correlation_id and project_id each keep exactly the
    events that match them, and together they all must hold."""
    await seed(store)
    cases = {
        EventQuery(stream="counter:a"): [3, 6, 9, 12],
        EventQuery(kinds=("gadget",)): [2, 5, 8, 11],
        EventQuery(kinds=("gadget", "counter")): list(range(1, 13)),
        EventQuery(exclude_kinds=("counter",)): [2, 5, 8, 11],
        EventQuery(correlation_id="req-odd"): [1, 5, 9],
        EventQuery(project_id="p2"): [2, 4, 6, 8, 10, 12],
        EventQuery(project_id="p1", exclude_kinds=("gadget",)): [1, 3, 7, 9],
        EventQuery(): list(range(1, 13)),
    }
    for query, want in cases.items():
        page = await store.read_filtered(query, limit=100)
        assert amounts(page.events) == want, query
        assert all(query.matches(e) for e in page.events)


async def test_a_types_filter_keeps_exactly_those_types(store: ProjectionHost) -> None:
    """``types`` names event types exactly, alone or with the other filters; a window
    with nothing of them still tells how far it looked."""
    await seed(store)
    renamed = [await store.append(s, [new_event(Renamed(name=s))], ANY_VERSION)
               for s in ("counter:a", "gadget:c")]
    cases = {
        EventQuery(types=("counter.renamed",)): ["counter:a", "gadget:c"],
        EventQuery(types=("counter.renamed",), kinds=("gadget",)): ["gadget:c"],
        EventQuery(types=("counter.renamed", "counter.incremented"), stream="gadget:c"):
            ["gadget:c"] * 5,
        EventQuery(types=("counter.noted",)): [],
    }
    for query, want in cases.items():
        page = await store.read_filtered(query, limit=100)
        assert [e.stream for e in page.events] == want, query
        assert all(query.matches(e) for e in page.events)
    page = await store.read_filtered(EventQuery(types=("counter.renamed",)), limit=100,
                                     scan=12)
    assert page.events == [] and page.scanned > 0  # the twelve increments, looked at
    page = await store.read_filtered(EventQuery(types=("counter.renamed",)),
                                     after=page.scanned, limit=100, scan=12)
    assert [e.position for e in page.events] == [r.position for r in renamed]


async def test_a_full_page_resumes_after_its_last_event_without_overlap(
    store: ProjectionHost,
) -> None:
    """With ``limit`` reached, ``scanned`` is the last event's position, and reading on
    from there returns the rest exactly once."""
    await seed(store)
    query = EventQuery(project_id="p2")
    first = await store.read_filtered(query, limit=4)
    assert amounts(first.events) == [2, 4, 6, 8]
    assert first.scanned == first.events[-1].position
    rest = await store.read_filtered(query, after=first.scanned, limit=4)
    assert amounts(rest.events) == [10, 12]


async def test_the_scan_window_bounds_how_far_one_read_looks(store: ProjectionHost) -> None:
    """A read looks at no more than ``scan`` events: with no match among them it returns
    nothing but moves ``scanned`` to the last one it looked at; reading on finds the rest."""
    await seed(store)
    everything = await store.read_all()
    query = EventQuery(stream="counter:a")
    page = await store.read_filtered(query, limit=10, scan=2)
    assert page.events == [] and page.scanned == everything[1].position
    found: list[EventEnvelope] = []
    after = page.scanned
    while after < everything[-1].position:
        page = await store.read_filtered(query, after=after, limit=10, scan=2)
        found += page.events
        assert page.scanned > after
        after = page.scanned
    assert amounts(found) == [3, 6, 9, 12]


async def test_nothing_new_leaves_scanned_where_it_was(store: ProjectionHost) -> None:
    """Past the head (or on an empty log) a read returns nothing and ``scanned == after``."""
    empty = await store.read_filtered(EventQuery(), after=0)
    assert empty.events == [] and empty.scanned == 0
    await seed(store)
    head = await store.head()
    page = await store.read_filtered(EventQuery(), after=head)
    assert page.events == [] and page.scanned == head


async def test_a_reopened_store_reading_from_disk_answers_the_same(
    store: ProjectionHost, open_another: Callable[[], Awaitable[ProjectionHost]],
) -> None:
    """Another store on the same log (which has none of it in memory) filters the same."""
    await seed(store)
    other = await open_another()
    for query in (EventQuery(kinds=("counter",), project_id="p1"),
                  EventQuery(correlation_id="req-x", exclude_kinds=("gadget",))):
        mine = await store.read_filtered(query, limit=3, scan=7)
        theirs = await other.read_filtered(query, limit=3, scan=7)
        assert mine == theirs


async def test_an_unbounded_read_of_one_stream_reaches_the_end_of_the_log(
    store: ProjectionHost,
) -> None:
    """``scan=None`` looks as far as the log goes: one read finds a stream's whole history."""
    await seed(store)
    page = await store.read_filtered(EventQuery(stream="gadget:c"), limit=100, scan=None)
    assert amounts(page.events) == [2, 5, 8, 11]
    assert page.scanned == await store.head()
