"""The event feed under ``/events/v1``: the log by position, live as Server-Sent Events,
and one resource's history.

- ``GET /events`` — events after ``after`` (a global position, default 0) in log order,
  at most ``limit`` (default 100, at most 1000), filtered by ``type`` (AMQP topic
  patterns over ``<kind>.<type>``, repeatable or comma-separated), ``resource_kind``,
  ``resource_id`` (with ``resource_kind``) and ``correlation_id``. The answer carries
  ``next_after``: pass it as ``after`` to read on. The filters run in SQL over a bounded
  window of the log (`SCAN_WINDOW` events per read, `SCAN_BUDGET` per request), so a
  filter that matches little answers with fewer events, never slowly; ``next_after``
  still moves on.
- ``GET /stream`` — the same as a live Server-Sent Events stream: each event is a message
  whose ``id`` is its position and whose ``data`` is its document. It starts after the
  ``Last-Event-ID`` header (a reconnecting browser sends it), else ``after``, else at the
  log's head; a comment line goes out every ``heartbeat`` seconds. The log is read only
  as fast as the client takes the messages (one batch waits in memory at most).
- ``GET /resources/{kind}/{id}`` — one resource's history in version order
  (``from_version``, ``limit``), read by its stream's index.

Who sees what, and how an event looks, is `actors.event_feed`'s: members their project's
events, admins all. Readers (any role) may read the feed.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from aiohttp import web
from prometheus_client import Counter

from actors.event_feed import (
    check_patterns,
    document,
    encode,
    pattern_kinds,
    shown,
    visibility,
)
from gateway.app import ServiceRouter
from gateway.auth import authenticate
from gateway.errors import ApiError
from gateway.json import json_response
from schemas import EventEnvelope
from store.protocol import EventQuery, EventStore

log = structlog.get_logger("orrery.events")

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: events one filtered read looks at, and one request at most
SCAN_WINDOW, SCAN_BUDGET = 10_000, 50_000
#: events the stream reads from the log at a time (and at most holds for a slow client)
STREAM_BATCH = 100
HISTORY_LIMIT = 1000

STREAM_READ = Counter("orrery_event_stream_read_total",
                      "Events Server-Sent Event streams have read from the log")


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """A feed request's filters, checked."""

    patterns: tuple[str, ...] = ()
    query: EventQuery

    def wants(self, event: EventEnvelope) -> bool:
        return self.query.matches(event) and shown(event, self.patterns)


def _int(request: web.Request, name: str, default: int, low: int = 0,
         high: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bound = f" and at most {high}" if high is not None else ""
        raise ApiError("bad_request", f"{name} must be an integer of at least {low}{bound}.")
    return int(raw)


def _filters(request: web.Request, *, project_id: str | None, is_admin: bool) -> Filters:
    q = request.query
    patterns = tuple(p.strip() for raw in q.getall("type", []) for p in raw.split(",")
                     if p.strip())
    if patterns and (problem := check_patterns(list(patterns))):
        raise ApiError("bad_request", problem.replace("event_types", "type"))
    kind, resource_id = q.get("resource_kind") or None, q.get("resource_id") or None
    if resource_id is not None and kind is None:
        raise ApiError("bad_request", "resource_id needs resource_kind.")
    seen = visibility(project_id, is_admin=is_admin)
    query = msgspec.structs.replace(
        seen, kinds=(kind,) if kind else pattern_kinds(patterns),
        stream=f"{kind}:{resource_id}" if resource_id else None,
        correlation_id=q.get("correlation_id") or None)
    return Filters(patterns=patterns, query=query)


async def _context_filters(request: web.Request) -> Filters:
    context = await authenticate(request)
    return _filters(request, project_id=context.project_id, is_admin=context.is_admin)


class EventFeedApi:
    """The ``events`` `ServiceApi`: the feed, its live stream and resource histories."""

    service = "events"

    def __init__(self, store: EventStore, *, heartbeat: float = 15.0) -> None:
        self.store = store
        self.heartbeat = heartbeat

    def register(self, router: ServiceRouter) -> None:
        router.get("/events", self.list_events)
        router.get("/stream", self.stream)
        router.get("/resources/{kind}/{id}", self.history)

    async def list_events(self, request: web.Request) -> web.Response:
        filters = await _context_filters(request)
        after = _int(request, "after", 0)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        found, after = await self.read(filters, after, limit)
        return json_response({"events": [document(e) for e in found], "next_after": after})

    async def read(self, filters: Filters, after: int,
                    limit: int) -> tuple[list[EventEnvelope], int]:
        """Up to ``limit`` wanted events after ``after``, within the scan budget; and where
        to read on."""
        found: list[EventEnvelope] = []
        scan = None if filters.query.stream else SCAN_WINDOW
        budget = SCAN_BUDGET
        while len(found) < limit and budget > 0:
            page = await self.store.read_filtered(filters.query, after, limit - len(found),
                                                  scan)
            found += [e for e in page.events if shown(e, filters.patterns)]
            if page.scanned == after or scan is None:
                break
            after, budget = page.scanned, budget - SCAN_WINDOW
        return found, after

    async def history(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        kind, resource_id = request.match_info["kind"], request.match_info["id"]
        from_version = _int(request, "from_version", 1, 1)
        limit = _int(request, "limit", HISTORY_LIMIT, 1, HISTORY_LIMIT)
        seen = visibility(context.project_id, is_admin=context.is_admin)
        events = await self.store.read_stream(f"{kind}:{resource_id}", from_version, limit)
        visible = [e for e in events if seen.matches(e) and shown(e)]
        if not visible and from_version == 1:
            raise ApiError("not_found", f"No history of {kind} {resource_id} could be found.")
        more = events[-1].version + 1 if len(events) == limit else None
        return json_response({"events": [document(e) for e in visible],
                              "next_version": more})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        filters = await _context_filters(request)
        after = await self._start(request)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        try:
            await self._pump(response, filters, after)
        except* ConnectionError:  # the client went away: the stream ends here
            log.info("event_stream_client_gone", after=after)
        return response

    async def _start(self, request: web.Request) -> int:
        last = request.headers.get("Last-Event-ID", "").strip()
        if last:
            if not last.isdigit():
                raise ApiError("bad_request", "Last-Event-ID must be an event position.")
            return int(last)
        if request.query.get("after"):
            return _int(request, "after", 0)
        return await self.store.head()

    async def _pump(self, response: web.StreamResponse, filters: Filters, after: int) -> None:
        """Batches from the log through a one-slot queue to the client: the reader waits
        while the client has not taken the last batch (its memory is one batch)."""
        batches: asyncio.Queue[list[EventEnvelope]] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(self._follow(filters, after, batches), name="sse-read")
            try:
                await self._send(response, batches)
            finally:
                reader.cancel()

    async def _follow(self, filters: Filters, after: int,
                      batches: asyncio.Queue[list[EventEnvelope]]) -> None:
        async for events in self.store.subscribe(after, STREAM_BATCH):
            STREAM_READ.inc(len(events))
            wanted = [e for e in events if filters.wants(e)]
            if wanted:
                await batches.put(wanted)

    async def _send(self, response: web.StreamResponse,
                    batches: asyncio.Queue[list[EventEnvelope]]) -> None:
        while True:
            try:
                async with asyncio.timeout(self.heartbeat):
                    events = await batches.get()
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            await response.write(b"".join(_message(e) for e in events))


def _message(event: EventEnvelope) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.position, encode(event))
