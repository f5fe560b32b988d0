"""Compute flavors and os-hypervisors over HTTP with the real runtime, on embedded and on
PostgreSQL + RabbitMQ: seeded defaults, admin writes, member reads, Nova's errors."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.client import ActorClient
from actors.flavor import FLAVOR
from actors.flavor_views import FlavorProjection
from actors.host import HOST, ReportCapacity
from actors.host_views import HostsProjection
from actors.identity import IDENTITY_KINDS
from actors.runtime import ActorRuntime
from bus.routing import Names
from gateway.app import GatewaySettings
from gateway.compute import ComputeApi, hypervisor_id
from gateway.discovery import APIVersion
from orrery.bootstrap import bootstrap, identity_runner, make_cloud_app
from orrery.wiring import event_types
from schemas.hostd import Capacity
from store.projections import ProjectionRunner
from tests.support.backends import open_backends

NOVA = "/compute/v2.1"
KINDS = [*IDENTITY_KINDS, FLAVOR, HOST]
TINY_LINKS = "/compute/v2.1/flavors/1"


class Cloud(msgspec.Struct, kw_only=True):
    http: Any  # TestClient
    store: Any
    client: ActorClient
    admin: str
    member: str

    def h(self, token: str | None = None, version: str | None = None) -> dict[str, str]:
        headers = {"X-Auth-Token": token or self.admin}
        if version:
            headers["OpenStack-API-Version"] = f"compute {version}"
        return headers

    async def get(self, path: str, token: str | None = None, status: int = 200,
                  version: str | None = None) -> Any:
        resp = await self.http.get(NOVA + path, headers=self.h(token, version))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def create(self, flavor: dict[str, Any], token: str | None = None,
                     status: int = 200, version: str | None = None) -> Any:
        resp = await self.http.post(f"{NOVA}/flavors", json={"flavor": flavor},
                                    headers=self.h(token, version))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def flavor_events(self) -> int:
        rows = await self.store.read_all(0, 10000)
        return sum(1 for e in rows if e.type.startswith("flavor."))


async def login(http: Any, user: str, password: str, project: str) -> str:
    auth = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}
    resp = await http.post("/identity/v3/auth/tokens", json={"auth": auth})
    assert resp.status == 201, await resp.text()
    return str(resp.headers["X-Subject-Token"])


async def make_member(http: Any, admin: str) -> str:
    """A project ``demo`` and a user ``alice`` with the member role on it; her token."""
    h = {"X-Auth-Token": admin}
    resp = await http.post("/identity/v3/projects", json={"project": {"name": "demo"}},
                           headers=h)
    project = (await resp.json())["project"]["id"]
    resp = await http.post("/identity/v3/users", headers=h, json={"user": {
        "name": "alice", "password": "pw", "default_project_id": project}})
    user = (await resp.json())["user"]["id"]
    member = "/identity/v3/roles?name=member"
    role = (await (await http.get(member, headers=h)).json())["roles"][0]["id"]
    resp = await http.put(f"/identity/v3/projects/{project}/users/{user}/roles/{role}",
                          headers=h)
    assert resp.status == 204
    return await login(http, "alice", "pw", "demo")


@pytest.fixture
async def cloud(backends: tuple[str, dict[str, Any]], bus_names: Names,
                tmp_path: Path) -> AsyncIterator[Cloud]:
    which, extra = backends
    async with open_backends(which, types=event_types(KINDS), names=bus_names,
                             tmp_path=tmp_path, **extra) as (store, bus):
        await store.run_ddl(FlavorProjection.ddl)  # as orrery's API process does
        async with ActorRuntime(store, bus, KINDS), identity_runner(store), \
                ProjectionRunner(store, FlavorProjection()), \
                ProjectionRunner(store, HostsProjection()):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="secret")
            app = make_cloud_app(store, client, apis=[ComputeApi(store, client)],
                                 settings=GatewaySettings(compute_max_version="2.88"))
            async with TestClient(TestServer(app)) as http:
                admin = await login(http, "admin", "secret", "admin")
                yield Cloud(http=http, store=store, client=client, admin=admin,
                            member=await make_member(http, admin))


async def test_bootstrap_seeds_devstacks_flavors_in_novas_2_1_shape(cloud: Cloud) -> None:
    """flavors/detail lists m1.tiny..m1.large with ids 1..4, each field as Nova 2.1 shows
    it (swap "" for none, rxtx_factor 1.0, links self and bookmark); a second bootstrap
    adds no event."""
    flavors = (await cloud.get("/flavors/detail"))["flavors"]
    assert [(f["id"], f["name"], f["vcpus"], f["ram"], f["disk"]) for f in flavors] == [
        ("1", "m1.tiny", 1, 512, 1), ("2", "m1.small", 1, 2048, 20),
        ("3", "m1.medium", 2, 4096, 40), ("4", "m1.large", 4, 8192, 80)]
    tiny = flavors[0]
    links = tiny.pop("links")
    assert tiny == {"id": "1", "name": "m1.tiny", "ram": 512, "disk": 1, "vcpus": 1,
                    "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "rxtx_factor": 1.0,
                    "os-flavor-access:is_public": True, "OS-FLV-DISABLED:disabled": False}
    assert [link["rel"] for link in links] == ["self", "bookmark"]
    assert links[0]["href"].endswith(TINY_LINKS) and links[1]["href"].endswith(
        "/compute/flavors/1")
    brief = (await cloud.get("/flavors", cloud.member))["flavors"]
    assert [set(f) for f in brief] == [{"id", "name", "links"}] * 4
    before = await cloud.flavor_events()
    await bootstrap(cloud.store, cloud.client, password="secret")
    assert await cloud.flavor_events() == before == 4


async def test_admin_creates_shows_and_deletes_a_flavor(cloud: Cloud) -> None:
    """POST with id null: 200 and a generated UUID, shown at once (read-your-writes), with
    no extra specs; DELETE: 202, then 404 itemNotFound, and the name is free for a new flavor."""
    created = (await cloud.create({"name": "f1", "ram": 256, "vcpus": 2, "disk": 3,
                                   "id": None, "swap": 0, "OS-FLV-EXT-DATA:ephemeral": 1,
                                   "os-flavor-access:is_public": True}))["flavor"]
    flavor_id = created["id"]
    assert len(flavor_id) == 36 and created["name"] == "f1"
    shown = (await cloud.get(f"/flavors/{flavor_id}", cloud.member))["flavor"]
    assert shown == created and shown["OS-FLV-EXT-DATA:ephemeral"] == 1
    specs = await cloud.get(f"/flavors/{flavor_id}/os-extra_specs", cloud.member)
    assert specs == {"extra_specs": {}}
    await cloud.get(f"/flavors/{flavor_id}/os-extra_specs/hw:cpu_policy", status=404)
    resp = await cloud.http.delete(f"{NOVA}/flavors/{flavor_id}", headers=cloud.h())
    assert resp.status == 202 and await resp.read() == b""
    missing = await cloud.get(f"/flavors/{flavor_id}", status=404)
    assert missing == {"itemNotFound": {"code": 404,
                                        "message": f"Flavor {flavor_id} could not be found."}}
    again = (await cloud.create({"name": "f1", "ram": 1, "vcpus": 1, "disk": 0,
                                 "id": "custom"}))["flavor"]
    assert again["id"] == "custom"


async def test_duplicate_names_and_ids_are_409_and_record_nothing(cloud: Cloud) -> None:
    """A taken name or a live id is Nova's conflictingRequest, and no flavor event follows."""
    before = await cloud.flavor_events()
    by_name = await cloud.create({"name": "m1.tiny", "ram": 1, "vcpus": 1, "disk": 0},
                                 status=409)
    assert by_name["conflictingRequest"]["message"] == "Flavor with name m1.tiny already exists."
    by_id = await cloud.create({"name": "fresh", "ram": 1, "vcpus": 1, "disk": 0, "id": "1"},
                               status=409)
    assert by_id["conflictingRequest"]["message"] == "Flavor with ID 1 already exists."
    assert await cloud.flavor_events() == before
    ok = await cloud.create({"name": "fresh", "ram": 1, "vcpus": 1, "disk": 0})
    assert ok["flavor"]["name"] == "fresh"  # the refused create left the name free


async def test_members_read_but_cannot_write_flavors(cloud: Cloud) -> None:
    """A member gets 403 forbidden on create and delete, sees public flavors only (a private
    one is 404 to it); an admin filters with is_public true/false/None."""
    body = {"name": "nope", "ram": 1, "vcpus": 1, "disk": 0}
    refused = await cloud.create(body, cloud.member, status=403)
    assert "os-flavor-manage:create" in refused["forbidden"]["message"]
    resp = await cloud.http.delete(f"{NOVA}/flavors/1", headers=cloud.h(cloud.member))
    assert resp.status == 403
    private = (await cloud.create({**body, "name": "secret", "id": "p1",
                                   "os-flavor-access:is_public": False}))["flavor"]
    assert private["os-flavor-access:is_public"] is False

    async def names(query: str, token: str | None = None) -> list[str]:
        found = (await cloud.get(f"/flavors/detail{query}", token))["flavors"]
        return [f["name"] for f in found]

    assert "secret" not in await names("?is_public=None", cloud.member)
    await cloud.get("/flavors/p1", cloud.member, status=404)
    assert "secret" not in await names("")
    assert await names("?is_public=false") == ["secret"]
    assert "secret" in await names("?is_public=None")
    await cloud.get("/flavors/detail?is_public=maybe", status=400)


async def test_min_filters_limit_and_marker_page_through_flavors(cloud: Cloud) -> None:
    """minRam/minDisk keep the big ones; limit and marker page by id; a bad marker or
    filter is a 400 badRequest."""
    found = (await cloud.get("/flavors?minRam=2048&minDisk=40"))["flavors"]
    assert [f["name"] for f in found] == ["m1.medium", "m1.large"]
    page = (await cloud.get("/flavors/detail?limit=2"))["flavors"]
    assert [f["id"] for f in page] == ["1", "2"]
    rest = (await cloud.get("/flavors/detail?limit=2&marker=2"))["flavors"]
    assert [f["id"] for f in rest] == ["3", "4"]
    bad = await cloud.get("/flavors?marker=nope", status=400)
    assert bad["badRequest"]["message"] == "marker [nope] not found"
    await cloud.get("/flavors?minRam=big", status=400)
    await cloud.get("/flavors?limit=-1", status=400)


async def test_bad_create_bodies_are_400_and_record_nothing(cloud: Cloud) -> None:
    """Malformed JSON, an unknown field, ram 0, a bad id, description at 2.1: each a 400
    badRequest with no event; at 2.61 a description is accepted and shown (with
    extra_specs), while a 2.1 read leaves both out."""
    before = await cloud.flavor_events()
    resp = await cloud.http.post(f"{NOVA}/flavors", data=b"{nope", headers=cloud.h())
    assert resp.status == 400 and "badRequest" in await resp.json()
    for flavor in ({"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "colour": "red"},
                   {"name": "x", "ram": 0, "vcpus": 1, "disk": 0},
                   {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "id": "a/b"},
                   {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "description": "d"}):
        assert "badRequest" in await cloud.create(flavor, status=400)
    assert await cloud.flavor_events() == before
    described = {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "description": "d"}
    shown = (await cloud.create(described, version="2.61"))["flavor"]
    assert (shown["description"], shown["extra_specs"]) == ("d", {})
    at_2_1 = (await cloud.get(f"/flavors/{shown['id']}"))["flavor"]
    assert "description" not in at_2_1 and "extra_specs" not in at_2_1


async def test_hypervisors_show_reporting_hosts_to_admins_only(cloud: Cloud) -> None:
    """After a host reports its capacity, os-hypervisors lists it up and enabled; detail has
    Nova 2.1's counters; show finds it by its integer id; members get 403; unknown 404;
    at 2.88 the id is a UUID and the counters are gone."""
    now = dt.datetime.now(dt.UTC)
    reply = await cloud.client.call("host", "compute-1", ReportCapacity(
        capacity=Capacity(vcpus=8, ram_mb=16384, disk_gb=200), at=now))
    assert reply.ok
    assert await cloud.store.wait_for_projection("hosts", reply.position, 10)
    hid = hypervisor_id("compute-1")
    listed = (await cloud.get("/os-hypervisors"))["hypervisors"]
    assert listed == [{"id": hid, "hypervisor_hostname": "compute-1", "state": "up",
                       "status": "enabled"}]
    (detail,) = (await cloud.get("/os-hypervisors/detail"))["hypervisors"]
    assert {k: detail[k] for k in ("vcpus", "memory_mb", "local_gb", "vcpus_used",
                                   "memory_mb_used", "running_vms", "free_ram_mb")} == {
        "vcpus": 8, "memory_mb": 16384, "local_gb": 200, "vcpus_used": 0,
        "memory_mb_used": 0, "running_vms": 0, "free_ram_mb": 16384}
    assert detail["service"]["host"] == "compute-1" and isinstance(detail["cpu_info"], str)
    shown = (await cloud.get(f"/os-hypervisors/{hid}"))["hypervisor"]
    assert shown == detail
    await cloud.get("/os-hypervisors/12345", status=404)
    refused = await cloud.get("/os-hypervisors/detail", cloud.member, status=403)
    assert "os-hypervisors:list-detail" in refused["forbidden"]["message"]
    (at_2_88,) = (await cloud.get("/os-hypervisors/detail", version="2.88"))["hypervisors"]
    assert at_2_88["id"] == hypervisor_id("compute-1", APIVersion(2, 53))
    assert "vcpus" not in at_2_88 and "running_vms" not in at_2_88
