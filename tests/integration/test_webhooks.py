"""Webhook subscriptions end to end on a whole in-process cloud, on embedded and on
PostgreSQL + RabbitMQ: a real receiver gets exactly the matching events its project may
see, signed as Standard Webhooks (checked with the reference library), in per-resource
order, through failures, 410 Gone, replays; bad destinations are refused with nothing
appended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.routing import Names, topic_matches
from schemas import EventEnvelope
from tests.support.backends import eventually
from tests.support.cloud import Cloud, running_cloud
from tests.support.receiver import Receiver, per_stream, receiving
from webhooks.destinations import DestinationPolicy
from webhooks.dispatcher import DispatcherSettings

EV = "/events/v1"
IMG = "/image/v2/images"
NOVA = "/compute/v2.1"
BOOTS = 200


class Hooks:
    """A cloud, tokens (admin; alice, a member of demo; rita, a reader of demo; bob, a
    member of other) and the calls the tests make."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.admin = self.alice = self.rita = self.bob = ""

    async def setup(self) -> Hooks:
        self.admin = await self.cloud.admin_token()
        self.alice = await self.cloud.user("alice", "demo")
        self.rita = await self.cloud.user("rita", "demo", role="reader")
        self.bob = await self.cloud.user("bob", "other")
        return self

    async def req(self, method: str, path: str, token: str, *, status: int | None = None,
                  **kw: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": token, **kw.pop("headers", {})}
        async with self.cloud.http.request(method, self.cloud.url + path, headers=headers,
                                           **kw) as resp:
            text = await resp.text()
            if status is not None:
                assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            return resp.status, (await resp.json(content_type=None) if text else None)

    async def subscribe(self, token: str, url: str, types: list[str] | None = None,
                        **extra: Any) -> dict[str, Any]:
        body = {"url": url, "event_types": types or ["#"], **extra}
        return (await self.req("POST", f"{EV}/subscriptions", token, status=201,
                               json=body))[1]  # type: ignore[no-any-return]

    async def image(self, token: str, name: str = "img") -> str:
        _, made = await self.req("POST", IMG, token, status=201, json={
            "name": name, "disk_format": "raw", "container_format": "bare"})
        return str(made["id"])

    async def delete_image(self, token: str, image_id: str) -> None:
        await self.req("DELETE", f"{IMG}/{image_id}", token, status=204)

    async def logged(self, wanted: Callable[[EventEnvelope], bool]) -> list[EventEnvelope]:
        """Every event of the log ``wanted`` keeps, in order."""
        found: list[EventEnvelope] = []
        after = 0
        while batch := await self.cloud.store.read_all(after, 1000):
            found += [e for e in batch if wanted(e)]
            after = batch[-1].position
        return found


@pytest.fixture
async def hooks(backends: tuple[str, dict[str, Any]], bus_names: Names,
                tmp_path: Path) -> AsyncIterator[Hooks]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=2, **extra) as cloud:
        yield await Hooks(cloud).setup()


def project_events(project: str, pattern: str) -> Callable[[EventEnvelope], bool]:
    return lambda e: e.project_id == project and topic_matches(pattern, e.routing_key)


async def project_of(hooks: Hooks, token: str) -> str:
    _, body = await hooks.req("GET", "/identity/v3/auth/tokens", hooks.admin, status=200,
                              headers={"X-Subject-Token": token})
    return str(body["token"]["project"]["id"])


async def test_a_subscription_gets_exactly_its_projects_matching_events_signed(
    hooks: Hooks,
) -> None:
    """alice's ``image.*`` subscription receives each of demo's image events once, each
    image's in order, as the feed shows them and verified by the reference library;
    nothing of bob's project, and nothing that happened before it was created."""
    early = await hooks.image(hooks.alice, "before")
    async with receiving() as rx:
        sub = await hooks.subscribe(hooks.alice, rx.url + "/alice", ["image.*"])
        assert sub["secret"].startswith("whsec_") and sub["enabled"] is True
        mine = [await hooks.image(hooks.alice, f"a{i}") for i in range(3)]
        await hooks.delete_image(hooks.alice, mine[0])
        await hooks.delete_image(hooks.alice, early)
        for i in range(2):
            await hooks.image(hooks.bob, f"b{i}")
        demo = await project_of(hooks, hooks.alice)
        [created] = await hooks.logged(lambda e: e.stream == f"subscription:{sub['id']}")
        expected = [e for e in await hooks.logged(project_events(demo, "image.*"))
                    if e.position > created.position]
        await rx.wait_for("/alice", len(expected))
        await asyncio.sleep(0.3)  # anything extra would have come by now
        docs = rx.documents("/alice", sub["secret"])
    assert sorted(d["id"] for d in docs) == sorted(str(e.event_id) for e in expected)
    assert len(docs) == len(expected)
    assert all(v == sorted(v) for v in per_stream(docs).values())
    assert {d["project_id"] for d in docs} == {demo}
    assert {d["resource_id"] for d in docs} == {*mine, early}
    feed = (await hooks.req("GET", f"{EV}/events?type=image.*&limit=1000", hooks.alice,
                            status=200))[1]["events"]
    assert all(d in feed for d in docs)
    headers = rx.accepted("/alice")[0].headers
    assert headers["webhook-id"] == docs[0]["id"]
    assert headers["webhook-signature"].startswith("v1,")


async def test_two_hundred_boots_and_deletes_arrive_exactly_in_per_resource_order(
    hooks: Hooks,
) -> None:
    """Every instance event of 200 boots and deletes reaches the receiver exactly once,
    each server's in stream order."""
    image = await hooks.image(hooks.admin, "cirros")
    await upload(hooks, image)
    async with receiving() as rx:
        sub = await hooks.subscribe(hooks.alice, rx.url + "/servers", ["instance.*"])
        await boot_and_delete(hooks, image, BOOTS)
        demo = await project_of(hooks, hooks.alice)
        expected: list[EventEnvelope] = []

        async def all_deleted() -> bool:  # a delete's 204 comes before instance.deleted
            nonlocal expected
            expected = await hooks.logged(project_events(demo, "instance.*"))
            return sum(e.type == "instance.deleted" for e in expected) == BOOTS
        await eventually(all_deleted, timeout=60, what="every server deleted in the log")
        await rx.wait_for("/servers", len(expected), timeout=120)
        await asyncio.sleep(0.3)
        docs = rx.documents("/servers", sub["secret"])
    assert sorted(d["id"] for d in docs) == sorted(str(e.event_id) for e in expected)
    assert len(docs) == len(expected)  # exactly once each
    orders = per_stream(docs)
    assert len(orders) == BOOTS
    assert all(versions == sorted(versions) for versions in orders.values())
    assert all("instance.deleted" in {d["type"] for d in docs if d["stream"] == s}
               for s in orders)


async def upload(hooks: Hooks, image: str) -> None:
    await hooks.req("PUT", f"{IMG}/{image}/file", hooks.admin, status=204, data=b"x" * 1024,
                    headers={"Content-Type": "application/octet-stream"})
    await hooks.req("PATCH", f"{IMG}/{image}", hooks.admin, status=200,
                    json=[{"op": "replace", "path": "/visibility", "value": "public"}],
                    headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})


async def boot_and_delete(hooks: Hooks, image: str, count: int, batch: int = 25) -> None:
    """Boot ``count`` servers as alice, ``batch`` at a time, each deleted once ACTIVE."""
    async def one(i: int) -> None:
        _, made = await hooks.req("POST", f"{NOVA}/servers", hooks.alice, status=202, json={
            "server": {"name": f"s{i}", "imageRef": image, "flavorRef": "1",
                       "networks": "none"}})
        sid = made["server"]["id"]

        async def active() -> bool:
            _, shown = await hooks.req("GET", f"{NOVA}/servers/{sid}", hooks.alice)
            return bool(shown["server"]["status"] == "ACTIVE")
        await eventually(active, timeout=60, what=f"server {i} ACTIVE")
        await hooks.req("DELETE", f"{NOVA}/servers/{sid}", hooks.alice, status=204)

    for start in range(0, count, batch):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + batch))))


async def test_a_failing_receiver_gets_everything_in_order_once_it_recovers(
    hooks: Hooks,
) -> None:
    """The receiver answers 500 to its first six requests, then 200: every event still
    arrives, each image's in order, and the deliveries list shows the failed attempts
    (code 500, a next retry) and the deliveries that followed."""
    failing = 6
    async with receiving(Receiver(answer=lambda _p, n: 500 if n < failing else 200)) as rx:
        sub = await hooks.subscribe(hooks.alice, rx.url + "/flaky", ["image.*"])
        images = [await hooks.image(hooks.alice, f"i{i}") for i in range(4)]
        for image in images[:2]:
            await hooks.delete_image(hooks.alice, image)
        demo = await project_of(hooks, hooks.alice)
        expected = [e for e in await hooks.logged(project_events(demo, "image.*"))]
        await rx.wait_for("/flaky", len(expected), timeout=30)
        docs = rx.documents("/flaky", sub["secret"])
    assert {d["id"] for d in docs} == {str(e.event_id) for e in expected}
    assert all(v == sorted(v) for v in per_stream(docs).values())
    assert sum(1 for r in rx.got if r.status == 500) == failing

    async def recorded() -> bool:
        _, body = await hooks.req("GET", f"{EV}/subscriptions/{sub['id']}/deliveries",
                                  hooks.rita, status=200)
        return sum(1 for a in body["deliveries"] if a["status"] == "delivered") == len(docs)
    await eventually(recorded, timeout=10, what="attempts recorded")
    _, body = await hooks.req("GET", f"{EV}/subscriptions/{sub['id']}/deliveries",
                              hooks.alice, status=200)
    failed = [a for a in body["deliveries"] if a["status"] == "failed"]
    assert len(failed) == failing
    assert all(a["response_code"] == 500 and a["next_retry_at"] > a["attempted_at"]
               and a["latency_ms"] >= 0 for a in failed)


async def test_410_gone_disables_the_subscription(hooks: Hooks) -> None:
    """A receiver answering 410 Gone gets no more deliveries: the subscription shows
    disabled, with the reason, and later events are not sent."""
    async with receiving(Receiver(answer=lambda _p, _n: 410)) as rx:
        sub = await hooks.subscribe(hooks.alice, rx.url + "/gone", ["image.*"])
        await hooks.image(hooks.alice, "one")

        async def disabled() -> bool:
            _, shown = await hooks.req("GET", f"{EV}/subscriptions/{sub['id']}", hooks.alice)
            return shown["enabled"] is False
        await eventually(disabled, timeout=15, what="subscription disabled")
        _, shown = await hooks.req("GET", f"{EV}/subscriptions/{sub['id']}", hooks.alice)
        assert "410" in shown["disabled_reason"]
        tried = len(rx.got)
        await hooks.image(hooks.alice, "two")
        await asyncio.sleep(0.5)
        assert len(rx.got) == tried


async def test_replay_redelivers_from_a_position_with_the_same_ids(hooks: Hooks) -> None:
    """POST replay {from_position} sends the matching events from there again, with the
    same webhook-ids, after what was already delivered."""
    async with receiving() as rx:
        sub = await hooks.subscribe(hooks.alice, rx.url + "/r", ["image.*"])
        for i in range(3):
            await hooks.image(hooks.alice, f"r{i}")
        await rx.wait_for("/r", 3)
        first = rx.documents("/r", sub["secret"])
        _, replay = await hooks.req("POST", f"{EV}/subscriptions/{sub['id']}/replay",
                                    hooks.alice, status=202,
                                    json={"from_position": first[1]["position"]})
        assert replay["replay"]["until_position"] > first[-1]["position"]

        async def again() -> bool:
            return len(rx.accepted("/r")) == 5
        await eventually(again, timeout=15, what="replayed deliveries")
        docs = rx.documents("/r", sub["secret"])
    assert [d["id"] for d in docs[3:]] == [d["id"] for d in first[1:]]


async def test_subscriptions_are_per_project_and_the_secret_is_shown_once(
    hooks: Hooks,
) -> None:
    """Create answers the secret; show, list, the feed's subscription events never do. Another
    project's member sees no such subscription; a reader may read but not write; update
    and delete work; all_projects is for admins."""
    sub = await hooks.subscribe(hooks.alice, "http://127.0.0.1:9/x", ["image.*"],
                                description="mine")
    path = f"{EV}/subscriptions/{sub['id']}"
    _, shown = await hooks.req("GET", path, hooks.rita, status=200)
    assert "secret" not in shown and shown["description"] == "mine"
    _, listed = await hooks.req("GET", f"{EV}/subscriptions", hooks.alice, status=200)
    assert [s["id"] for s in listed["subscriptions"]] == [sub["id"]]
    assert all("secret" not in s for s in listed["subscriptions"])
    await hooks.req("GET", path, hooks.bob, status=404)
    _, theirs = await hooks.req("GET", f"{EV}/subscriptions", hooks.bob, status=200)
    assert theirs["subscriptions"] == []
    await hooks.req("POST", f"{EV}/subscriptions", hooks.rita, status=403,
                    json={"url": "http://127.0.0.1:9/", "event_types": ["#"]})
    await hooks.req("POST", f"{EV}/subscriptions", hooks.alice, status=403,
                    json={"url": "http://127.0.0.1:9/", "event_types": ["#"],
                          "all_projects": True})
    _, changed = await hooks.req("PATCH", path, hooks.alice, status=200, json={
        "event_types": ["server.*", "image.created"], "enabled": False})
    assert changed["event_types"] == ["server.*", "image.created"]
    assert changed["enabled"] is False
    _, feed = await hooks.req("GET", f"{EV}/events?resource_kind=subscription", hooks.alice,
                              status=200)
    created = next(e for e in feed["events"] if e["type"] == "subscription.created")
    assert created["data"]["secret"] == "[redacted]"
    assert sub["secret"] not in str(feed)
    await hooks.req("DELETE", path, hooks.alice, status=204)
    await hooks.req("GET", path, hooks.alice, status=404)
    _, every = await hooks.req("GET", f"{EV}/subscriptions?all_projects=true", hooks.admin,
                               status=200)
    assert sub["id"] not in {s["id"] for s in every["subscriptions"]}


REFUSED = [
    ({"url": "http://127.0.0.1:8080/hook", "event_types": ["#"]}, "loopback"),
    ({"url": "http://localhost/hook", "event_types": ["#"]}, "loopback"),
    ({"url": "http://169.254.169.254/latest/meta-data/", "event_types": ["#"]}, "link-local"),
    ({"url": "http://10.1.2.3/hook", "event_types": ["#"]}, "not a public address"),
    ({"url": "http://[::1]:80/", "event_types": ["#"]}, "loopback"),
    ({"url": "ftp://example.org/hook", "event_types": ["#"]}, "http"),
    ({"url": "http://example.org/", "event_types": []}, "at least one"),
    ({"url": "http://example.org/", "event_types": ["a..b"]}, "pattern"),
    ({"url": "http://example.org/", "event_types": ["#"], "secret": "x"}, "Invalid input"),
    ({"event_types": ["#"]}, "Invalid input"),
]


async def test_bad_destinations_and_patterns_are_refused_and_append_nothing(
    backends: tuple[str, dict[str, Any]], bus_names: Names, tmp_path: Path,
) -> None:
    """With the default destination policy, SSRF attempts (loopback by address or by
    name, the metadata service, private ranges), other schemes and bad bodies are each a
    400 in Keystone's error shape, and the log does not move."""
    which, extra = backends
    strict = DispatcherSettings(destinations=DestinationPolicy())
    async with running_cloud(which, tmp_path, names=bus_names, hosts=0, webhooks=strict,
                             **extra) as cloud:
        hooks = await Hooks(cloud).setup()
        head = await cloud.head()
        for body, says in REFUSED:
            status, error = await hooks.req("POST", f"{EV}/subscriptions", hooks.alice,
                                            json=body)
            assert status == 400, (body, error)
            assert error["error"]["code"] == 400, body
            assert says in error["error"]["message"], (body, error)
        assert await cloud.head() == head


async def test_an_update_to_a_forbidden_destination_is_refused(hooks: Hooks) -> None:
    """PATCH with a link-local URL is a 400 and the subscription keeps its URL."""
    sub = await hooks.subscribe(hooks.alice, "http://127.0.0.1:9/ok", ["image.*"])
    path = f"{EV}/subscriptions/{sub['id']}"
    head = await hooks.cloud.head()
    status, _ = await hooks.req("PATCH", path, hooks.alice,
                                json={"url": "http://169.254.169.254/"})
    assert status == 400
    assert await hooks.cloud.head() == head
    assert (await hooks.req("GET", path, hooks.alice))[1]["url"] == "http://127.0.0.1:9/ok"

