"""The event feed over HTTP on a whole in-process cloud, on embedded and on PostgreSQL +
RabbitMQ: filters, paging, who sees what, resource histories, and the live SSE stream
(heartbeats, resuming from Last-Event-ID, a slow reader that does not grow the server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from actors.flavor import FlavorCreated
from bus.routing import Names
from schemas import NewEvent
from schemas.envelope import ENCODER
from store.protocol import ANY_VERSION
from tests.integration.test_webhooks import EV, Hooks, project_of
from tests.support.backends import eventually
from tests.support.cloud import running_cloud

HEARTBEAT = 0.2


@pytest.fixture
async def hooks(backends: tuple[str, dict[str, Any]], bus_names: Names,
                tmp_path: Path) -> AsyncIterator[Hooks]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=1,
                             sse_heartbeat=HEARTBEAT, **extra) as cloud:
        yield await Hooks(cloud).setup()


async def feed(hooks: Hooks, token: str, query: str = "", status: int = 200) -> Any:
    return (await hooks.req("GET", f"{EV}/events?limit=1000&{query}", token,
                            status=status))[1]


async def test_members_see_their_projects_events_and_admins_see_all(hooks: Hooks) -> None:
    """alice sees demo's image events and not bob's; neither sees host events nor events
    without a project; the admin sees all of them. Every event carries its envelope."""
    mine = await hooks.image(hooks.alice, "mine")
    theirs = await hooks.image(hooks.bob, "theirs")
    demo = await project_of(hooks, hooks.alice)
    alice = (await feed(hooks, hooks.alice))["events"]
    assert {e["project_id"] for e in alice} == {demo}
    assert mine in {e["resource_id"] for e in alice}
    assert theirs not in {e["resource_id"] for e in alice}
    assert not {e["resource_kind"] for e in alice} & {"host", "user", "token", "project"}
    admin = (await feed(hooks, hooks.admin))["events"]
    kinds = {e["resource_kind"] for e in admin}
    assert {"host", "image", "user"} <= kinds
    assert {mine, theirs} <= {e["resource_id"] for e in admin}
    assert any(e["project_id"] is None for e in admin)
    assert [e["position"] for e in admin] == sorted(e["position"] for e in admin)
    created = next(e for e in alice if e["resource_id"] == mine)
    assert set(created) == {"id", "stream", "resource_kind", "resource_id", "version",
                            "position", "type", "time", "correlation_id", "causation_id",
                            "project_id", "user_id", "data"}
    assert created["type"] == "image.created" and created["version"] == 1
    assert created["stream"] == f"image:{mine}" and created["data"]["image_id"] == mine
    assert created["correlation_id"].startswith("req-") and created["causation_id"]
    assert not any(e["type"].startswith("timer.") for e in admin)


async def test_filters_by_type_pattern_resource_and_request(hooks: Hooks) -> None:
    """type (AMQP patterns), resource_kind + resource_id and correlation_id (the request
    id the API answered with) each keep exactly their events."""
    one = await hooks.image(hooks.alice, "one")
    async with hooks.cloud.http.delete(f"{hooks.cloud.url}/image/v2/images/{one}",
                                       headers={"X-Auth-Token": hooks.alice}) as resp:
        assert resp.status == 204
        request_id = resp.headers["X-OpenStack-Request-Id"]
    await hooks.image(hooks.alice, "two")
    types = [e["type"] for e in (await feed(hooks, hooks.alice, "type=image.deleted"))["events"]]
    assert types == ["image.deleted"]
    both = (await feed(hooks, hooks.alice, "type=image.deleted,image.created"))["events"]
    assert [e["type"] for e in both] == ["image.created", "image.deleted", "image.created"]
    assert (await feed(hooks, hooks.alice, "type=%23.deleted"))["events"][0]["type"] == \
        "image.deleted"
    history = (await feed(hooks, hooks.alice, f"resource_kind=image&resource_id={one}"))
    assert [e["version"] for e in history["events"]] == [1, 2]
    assert {e["resource_id"] for e in history["events"]} == {one}
    traced = (await feed(hooks, hooks.alice, f"correlation_id={request_id}"))["events"]
    assert [e["type"] for e in traced] == ["image.deleted"]
    assert (await feed(hooks, hooks.alice, "resource_kind=flavor"))["events"] == []


async def test_pages_follow_on_from_next_after_without_overlap(hooks: Hooks) -> None:
    """limit caps a page; next_after continues exactly where it stopped."""
    for i in range(5):
        await hooks.image(hooks.alice, f"p{i}")
    everything = (await feed(hooks, hooks.alice, "type=image.*"))["events"]
    seen: list[Any] = []
    after = 0
    while True:
        _, page = await hooks.req("GET", f"{EV}/events?type=image.*&limit=2&after={after}",
                                  hooks.alice, status=200)
        if not page["events"]:
            break
        assert len(page["events"]) <= 2
        seen += page["events"]
        after = page["next_after"]
    assert seen == everything and len(seen) == 5


BAD_QUERIES = ("limit=0", "limit=1001", "limit=x", "after=-1", "type=a..b", "type=x%20y",
               "resource_id=abc")


async def test_bad_queries_are_refused_with_keystones_error_body(hooks: Hooks) -> None:
    """Malformed filters are each a 400 {"error": {code, title, message}}; no token is a
    401."""
    for query in BAD_QUERIES:
        _, body = await hooks.req("GET", f"{EV}/events?{query}", hooks.alice, status=400)
        assert body["error"]["code"] == 400 and body["error"]["message"], query
    status, _ = await hooks.req("GET", f"{EV}/events", "")
    assert status == 401


async def test_a_resources_history_is_shown_to_those_who_may_see_it(hooks: Hooks) -> None:
    """GET /resources/image/{id}: its events in version order for its project and the
    admin; another project (and an unknown id) get a 404."""
    image = await hooks.image(hooks.alice, "h")
    await hooks.delete_image(hooks.alice, image)
    path = f"{EV}/resources/image/{image}"
    _, mine = await hooks.req("GET", path, hooks.alice, status=200)
    assert [(e["version"], e["type"]) for e in mine["events"]] == [
        (1, "image.created"), (2, "image.deleted")]
    _, admin = await hooks.req("GET", path, hooks.admin, status=200)
    assert admin["events"] == mine["events"]
    await hooks.req("GET", path, hooks.bob, status=404)
    await hooks.req("GET", f"{EV}/resources/image/nope", hooks.admin, status=404)
    _, tail = await hooks.req("GET", f"{path}?from_version=2", hooks.alice, status=200)
    assert [e["version"] for e in tail["events"]] == [2]


class SseClient:
    """An SSE reader over aiohttp: messages (id, data) and heartbeat comments."""

    def __init__(self, hooks: Hooks, token: str, query: str = "",
                 last_id: int | None = None) -> None:
        self.hooks, self.token, self.query, self.last_id = hooks, token, query, last_id
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.heartbeats = 0

    async def run(self) -> None:
        headers = {"X-Auth-Token": self.token}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        url = f"{self.hooks.cloud.url}{EV}/stream?{self.query}"
        async with self.hooks.cloud.http.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.heartbeats += 1
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                elif "data" in fields:
                    self.messages.append((int(fields["id"]), json.loads(fields["data"])))
                    fields = {}


async def test_the_stream_follows_live_beats_and_resumes_from_last_event_id(
    hooks: Hooks,
) -> None:
    """The stream starts at the head, sends each new visible event with its position as
    id, beats while idle; a reconnect with Last-Event-ID gets exactly what it missed."""
    client = SseClient(hooks, hooks.alice, "type=image.*")
    task = asyncio.create_task(client.run())
    try:
        await eventually(lambda: _true(client.heartbeats >= 2), timeout=10, what="heartbeats")
        first = [await hooks.image(hooks.alice, f"s{i}") for i in range(2)]
        await hooks.image(hooks.bob, "not-for-alice")
        await eventually(lambda: _true(len(client.messages) >= 2), timeout=10,
                         what="live messages")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [m[1]["resource_id"] for m in client.messages] == first
    assert all(pos == doc["position"] for pos, doc in client.messages)
    last = client.messages[-1][0]
    missed = [await hooks.image(hooks.alice, f"m{i}") for i in range(3)]
    again = SseClient(hooks, hooks.alice, "type=image.*", last_id=last)
    task = asyncio.create_task(again.run())
    try:
        await eventually(lambda: _true(len(again.messages) >= 3), timeout=10,
                         what="resumed messages")
        await asyncio.sleep(HEARTBEAT * 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [m[1]["resource_id"] for m in again.messages] == missed


async def _true(value: bool) -> bool:
    return value


async def test_a_reader_that_does_not_read_holds_the_stream_back_not_the_memory(
    hooks: Hooks,
) -> None:
    """A client that stops reading leaves the stream's reading of the log stalled far
    short of the events waiting; once it reads, it gets every one of them, in order."""
    total, pad = 12_000, "x" * 2000
    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                   int(hooks.cloud.url.rsplit(":", 1)[1]))
    head = await hooks.cloud.head()
    writer.write(f"GET {EV}/stream?after={head}&resource_kind=flavor HTTP/1.1\r\n"
                 f"Host: x\r\nX-Auth-Token: {hooks.admin}\r\n\r\n".encode())
    await writer.drain()
    read_before = stream_read()
    for start in range(0, total, 200):
        await hooks.cloud.store.append(f"flavor:bulk-{start}", [NewEvent(
            type="flavor.created", data=ENCODER.encode(FlavorCreated(
                flavor_id=f"bulk-{start}-{i}", name="n", ram=1, vcpus=1, disk=1, ephemeral=0,
                swap=0, rxtx_factor=1.0, is_public=True, description=pad)))
            for i in range(200)], ANY_VERSION)
    await stalled()
    held_back = stream_read() - read_before
    assert held_back < total / 2, f"read {held_back} of {total} with nobody reading"
    ids = await read_ids(reader, total)
    writer.close()
    assert len(ids) == total and ids == sorted(ids)


def stream_read() -> float:
    """Events every SSE stream of this process has read from the log so far."""
    return REGISTRY.get_sample_value("orrery_event_stream_read_total") or 0.0


async def stalled(quiet: float = 0.5) -> None:
    """Until the stream has read nothing more for ``quiet`` seconds."""
    last = -1.0
    while (now := stream_read()) != last:
        last = now
        await asyncio.sleep(quiet)


async def read_ids(reader: asyncio.StreamReader, count: int) -> list[int]:
    ids: list[int] = []
    async with asyncio.timeout(60):
        while len(ids) < count:
            line = await reader.readline()
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
    return ids
