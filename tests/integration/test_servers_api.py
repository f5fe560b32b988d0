"""Compute servers over HTTP on a whole in-process cloud (fake hosts), on embedded and on
PostgreSQL + RabbitMQ: boot to ACTIVE, list and filters, stop/start/reboot, delete,
instance actions, isolation, and bad input that leaves the log untouched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.host_views import read_hosts
from actors.instance import Deadlines
from bus.routing import Names
from tests.support.cloud import Cloud, running_cloud

NOVA = "/compute/v2.1"
IMG = "/image/v2/images"
DEADLINES = Deadlines(scheduling=5, spawning=10, powering_off=5, powering_on=5,
                      rebooting=5, deleting=5, stop_timeout=1)


class Api:
    """A cloud plus one image and tokens for admin, a member, another project's member
    and a reader of the member's project."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.admin = self.member = self.other = self.reader = self.image = ""
        self.last_request = ""  # the X-OpenStack-Request-Id of the last answer

    async def setup(self) -> Api:
        self.admin = await self.cloud.admin_token()
        self.member = await self.cloud.user("alice", "demo")
        self.reader = await self.cloud.user("rita", "demo", role="reader")
        self.other = await self.cloud.user("bob", "other")
        self.image = await self.upload_image()
        return self

    async def upload_image(self) -> str:
        h = {"X-Auth-Token": self.admin}
        async with self.cloud.http.post(self.url(IMG), headers=h, json={
                "name": "cirros", "disk_format": "raw", "container_format": "bare",
                "visibility": "public"}) as resp:
            assert resp.status == 201, await resp.text()
            image_id = str((await resp.json())["id"])
        async with self.cloud.http.put(self.url(f"{IMG}/{image_id}/file"), data=b"x" * 4096,
                                       headers={**h, "Content-Type":
                                                "application/octet-stream"}) as resp:
            assert resp.status == 204, await resp.text()
        return image_id

    def url(self, path: str) -> str:
        return self.cloud.url + path

    async def req(self, method: str, path: str, token: str | None = None, *,
                  status: int | None = None, **kw: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": token} if token is not None else {}
        headers.update(kw.pop("headers", {}))
        async with self.cloud.http.request(method, self.url(NOVA + path), headers=headers,
                                           **kw) as resp:
            self.last_request = resp.headers["X-OpenStack-Request-Id"]
            text = await resp.text()
            if status is not None:
                assert resp.status == status, f"{resp.status} {text}"
            body = await resp.json(content_type=None) if text else None
            return resp.status, body

    async def boot(self, token: str, name: str = "vm1", **extra: Any) -> str:
        server = {"name": name, "imageRef": self.image, "flavorRef": "1",
                  "networks": "none", **extra}
        _, body = await self.req("POST", "/servers", token, status=202,
                                 json={"server": server})
        return str(body["server"]["id"])

    async def show(self, server_id: str, token: str | None = None) -> Any:
        return (await self.req("GET", f"/servers/{server_id}", token or self.admin,
                               status=200))[1]["server"]

    async def wait_status(self, server_id: str, want: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            server = await self.show(server_id)
            if server["status"] == want:
                return server
            assert time.monotonic() < deadline, f"still {server['status']}, not {want}"
            await asyncio.sleep(0.05)

    async def action(self, server_id: str, body: Any, token: str | None = None,
                     status: int = 202) -> Any:
        return (await self.req("POST", f"/servers/{server_id}/action", token or self.member,
                               status=status, json=body))[1]


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, deadlines=DEADLINES,
                             **extra) as cloud:
        yield await Api(cloud).setup()


async def test_boot_reaches_active_in_novas_representation(api: Api) -> None:
    """POST 202 with id, links, diskConfig and security groups and no adminPass; the next
    GET sees the server (BUILD or later), which becomes ACTIVE on host-1 with the 2.1
    fields; the admin sees OS-EXT-SRV-ATTR, the member does not."""
    _, body = await api.req("POST", "/servers", api.member, status=202, json={"server": {
        "name": "vm1", "imageRef": api.image, "flavorRef": "1", "networks": "none",
        "metadata": {"k": "v"}}})
    created = body["server"]
    assert set(created) == {"id", "links", "OS-DCF:diskConfig", "security_groups"}
    sid = created["id"]
    first = await api.show(sid, api.member)
    assert first["status"] in ("BUILD", "ACTIVE")
    server = await api.wait_status(sid, "ACTIVE")
    assert server["OS-EXT-SRV-ATTR:host"] == "host-1"
    assert server["OS-EXT-SRV-ATTR:hypervisor_hostname"] == "host-1"
    assert server["OS-EXT-STS:vm_state"] == "active"
    assert server["OS-EXT-STS:task_state"] is None
    assert server["OS-EXT-STS:power_state"] == 1
    mine = await api.show(sid, api.member)
    assert not any(k.startswith("OS-EXT-SRV-ATTR") for k in mine)
    assert mine["flavor"]["id"] == "1" and mine["image"]["id"] == api.image
    assert mine["metadata"] == {"k": "v"} and mine["addresses"] == {}
    assert mine["tenant_id"] and mine["user_id"] and mine["hostId"]
    assert mine["OS-SRV-USG:launched_at"] and mine["OS-SRV-USG:terminated_at"] is None
    for key in ("created", "updated", "key_name", "accessIPv4", "accessIPv6", "progress",
                "config_drive", "OS-EXT-AZ:availability_zone", "links",
                "os-extended-volumes:volumes_attached", "OS-DCF:diskConfig"):
        assert key in mine, key
    assert "fault" not in mine


async def test_list_detail_and_filters(api: Api) -> None:
    """servers and servers/detail list the project's servers newest first; name is a
    regex, status filters, limit/marker page; other projects see none, admin sees all
    with all_tenants only."""
    a = await api.boot(api.member, "web-1")
    b = await api.boot(api.member, "web-2")
    c = await api.boot(api.other, "db-1")
    for sid in (a, b, c):
        await api.wait_status(sid, "ACTIVE")
    _, body = await api.req("GET", "/servers", api.member, status=200)
    assert [s["id"] for s in body["servers"]] == [b, a]
    assert set(body["servers"][0]) == {"id", "name", "links"}
    _, body = await api.req("GET", "/servers/detail?name=^web-[2]$", api.member, status=200)
    assert [s["id"] for s in body["servers"]] == [b]
    _, body = await api.req("GET", "/servers/detail?status=SHUTOFF", api.member, status=200)
    assert body["servers"] == []
    _, body = await api.req("GET", "/servers/detail?status=ACTIVE&limit=1", api.member,
                            status=200)
    assert [s["id"] for s in body["servers"]] == [b] and "servers_links" in body
    _, body = await api.req("GET", f"/servers?marker={b}", api.member, status=200)
    assert [s["id"] for s in body["servers"]] == [a]
    await api.req("GET", "/servers?marker=nope", api.member, status=400)
    _, body = await api.req("GET", "/servers", api.other, status=200)
    assert [s["id"] for s in body["servers"]] == [c]
    _, body = await api.req("GET", "/servers", api.admin, status=200)
    assert body["servers"] == []
    _, body = await api.req("GET", "/servers/detail?all_tenants=1", api.admin, status=200)
    assert {s["id"] for s in body["servers"]} == {a, b, c}
    await api.req("GET", "/servers/detail?all_tenants=1", api.member, status=403)


async def test_stop_start_reboot_and_wrong_state(api: Api) -> None:
    """os-stop -> SHUTOFF; a second os-stop and a soft reboot are 409 conflictingRequest;
    os-start -> ACTIVE; reboot SOFT and HARD -> ACTIVE; the actions are listed newest first
    with their request ids, and one shows its event to the admin."""
    sid = await api.boot(api.member)
    await api.wait_status(sid, "ACTIVE")
    await api.action(sid, {"os-stop": None})
    await api.wait_status(sid, "SHUTOFF")
    body = await api.action(sid, {"os-stop": None}, status=409)
    assert "conflictingRequest" in body and body["conflictingRequest"]["code"] == 409
    await api.action(sid, {"reboot": {"type": "SOFT"}}, status=409)
    await api.action(sid, {"os-start": None})
    await api.wait_status(sid, "ACTIVE")
    await api.action(sid, {"reboot": {"type": "SOFT"}})
    await api.wait_status(sid, "ACTIVE")
    await api.action(sid, {"reboot": {"type": "HARD"}})
    server = await api.wait_status(sid, "ACTIVE")
    assert server["OS-EXT-STS:power_state"] == 1
    await api.action(sid, {"reboot": {"type": "MEDIUM"}}, status=400)
    await api.action(sid, {"os-migrate": None}, status=400)
    _, body = await api.req("GET", f"/servers/{sid}/os-instance-actions", api.member,
                            status=200)
    actions = body["instanceActions"]
    assert [a["action"] for a in actions] == ["reboot", "reboot", "start", "stop", "create"]
    assert all(a["request_id"].startswith("req-") and a["instance_uuid"] == sid
               for a in actions)
    create = actions[-1]["request_id"]
    _, shown = await api.req("GET", f"/servers/{sid}/os-instance-actions/{create}",
                             api.admin, status=200)
    events = shown["instanceAction"]["events"]
    assert events[0]["event"] == "compute__do_build_and_run_instance"
    assert events[0]["result"] == "Success" and events[0]["finish_time"]
    _, shown = await api.req("GET", f"/servers/{sid}/os-instance-actions/{create}",
                             api.member, status=200)
    assert "events" not in shown["instanceAction"]
    await api.req("GET", f"/servers/{sid}/os-instance-actions/req-nope", api.member,
                  status=404)


async def test_delete_then_404(api: Api) -> None:
    """DELETE 204; the server then disappears (404 itemNotFound) and from the lists; the
    host's usage goes back to zero."""
    sid = await api.boot(api.member)
    await api.wait_status(sid, "ACTIVE")
    await api.req("DELETE", f"/servers/{sid}", api.member, status=204)
    deadline = time.monotonic() + 15
    while True:
        status, body = await api.req("GET", f"/servers/{sid}", api.member)
        if status == 404:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    assert body["itemNotFound"]["message"] == f"Instance {sid} could not be found."
    _, listed = await api.req("GET", "/servers", api.member, status=200)
    assert listed["servers"] == []
    await _usage_back_to_zero(api)


async def _usage_back_to_zero(api: Api) -> None:
    deadline = time.monotonic() + 15
    while True:
        hosts = await read_hosts(api.cloud.store)
        if all(h.used.vcpus == 0 and h.used.ram_mb == 0 for h in hosts):
            return
        assert time.monotonic() < deadline, hosts
        await asyncio.sleep(0.05)


async def test_isolation_between_projects_and_reader_403(api: Api) -> None:
    """Another project's member gets 404 on show, actions, delete and instance actions;
    a reader of the project sees the server but gets 403 on every write."""
    sid = await api.boot(api.member)
    await api.wait_status(sid, "ACTIVE")
    head = await api.cloud.head()
    for method, path, body in (("GET", f"/servers/{sid}", None),
                               ("POST", f"/servers/{sid}/action", {"os-stop": None}),
                               ("DELETE", f"/servers/{sid}", None),
                               ("GET", f"/servers/{sid}/os-instance-actions", None)):
        status, got = await api.req(method, path, api.other, json=body)
        assert status == 404 and "itemNotFound" in got, (method, path, got)
    await api.show(sid, api.reader)
    for method, path, body in (
            ("POST", "/servers", {"server": {"name": "r", "imageRef": api.image,
                                             "flavorRef": "1", "networks": "none"}}),
            ("POST", f"/servers/{sid}/action", {"os-stop": None}),
            ("DELETE", f"/servers/{sid}", None)):
        status, got = await api.req(method, path, api.reader, json=body)
        assert status == 403 and "forbidden" in got, (method, path, got)
    assert await api.cloud.head() == head


async def test_bad_input_leaves_no_event(api: Api) -> None:
    """Malformed JSON, an unknown server field, unknown flavor or image (400 in Nova's
    words), a missing server (404), no token (401), a body over the limit (413): each with
    Nova's error body, and the log head does not move."""
    head = await api.cloud.head()
    good = {"name": "x", "imageRef": api.image, "flavorRef": "1", "networks": "none"}
    status, body = await api.req("POST", "/servers", api.member, data=b"{nope",
                                 headers={"Content-Type": "application/json"})
    assert status == 400 and "badRequest" in body
    status, body = await api.req("POST", "/servers", api.member,
                                 json={"server": {**good, "colour": "red"}})
    assert status == 400 and "colour" in body["badRequest"]["message"]
    status, body = await api.req("POST", "/servers", api.member,
                                 json={"server": good, "extra": 1})
    assert status == 400
    status, body = await api.req("POST", "/servers", api.member,
                                 json={"server": {**good, "flavorRef": "nope"}})
    assert (status, body["badRequest"]["message"]) == (400, "Flavor nope could not be found.")
    status, body = await api.req("POST", "/servers", api.member,
                                 json={"server": {**good, "imageRef": "nope"}})
    assert (status, body["badRequest"]["message"]) == (400, "Image nope could not be found.")
    status, body = await api.req("POST", "/servers", api.member, json={
        "server": {**good, "flavorRef": "nope", "imageRef": "nope"}})  # the flavor's first
    assert (status, body["badRequest"]["message"]) == (400, "Flavor nope could not be found.")
    status, body = await api.req("GET", "/servers/nope", api.member)
    assert (status, body["itemNotFound"]["message"]) == (404,
                                                         "Instance nope could not be found.")
    await api.req("POST", "/servers/nope/action", api.member, status=404,
                  json={"os-stop": None})
    await api.req("DELETE", "/servers/nope", api.member, status=404)
    await api.req("POST", "/servers", None, status=401, json={"server": good})
    await api.req("POST", "/servers", api.member, status=413,
                  json={"server": {**good, "user_data": "x" * (2 << 20)}})
    assert await api.cloud.head() == head


async def test_a_flavor_too_big_for_any_host_ends_in_error_with_a_fault(api: Api) -> None:
    """A flavor no host can hold: the boot ends in ERROR with a fault that says no valid
    host, the create action is an Error, and the hosts' usage stays at zero."""
    await api.req("POST", "/flavors", api.admin, status=200, json={"flavor": {
        "name": "huge", "ram": 10_000_000, "vcpus": 1, "disk": 1, "id": "huge"}})
    sid = await api.boot(api.member, flavorRef="huge")
    server = await api.wait_status(sid, "ERROR")
    assert "No valid host" in server["fault"]["message"]
    assert server["fault"]["code"] == 500 and "details" in server["fault"]  # admin
    assert "details" not in (await api.show(sid, api.member))["fault"]
    _, actions = await api.req("GET", f"/servers/{sid}/os-instance-actions", api.member,
                               status=200)
    assert actions["instanceActions"][0]["message"] == "Error"
    await _usage_back_to_zero(api)
    await api.req("DELETE", f"/servers/{sid}", api.member, status=204)
    await api.req("GET", f"/servers/{sid}", api.member, status=404)


async def test_no_hosts_means_error_no_valid_host(backends: tuple[str, dict[str, Any]],
                                                  bus_names: Names, tmp_path: Path) -> None:
    """A cloud without hosts: the boot ends in ERROR (no valid host) within its deadline."""
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=0,
                             deadlines=DEADLINES, **extra) as cloud:
        api = await Api(cloud).setup()
        sid = await api.boot(api.member)
        server = await api.wait_status(sid, "ERROR")
        assert "No valid host" in server["fault"]["message"]


async def test_microversions_up_to_2_37(api: Api) -> None:
    """At 2.37 a create must say which networks; the server gains locked (2.9),
    description (2.19), tags (2.26), and for admins the 2.3 attributes and host_status
    (2.16); at 2.1 none of them appear."""
    v237 = {"OpenStack-API-Version": "compute 2.37"}
    server = {"name": "vm-mv", "imageRef": api.image, "flavorRef": "1"}
    head = await api.cloud.head()
    status, body = await api.req("POST", "/servers", api.member, json={"server": server},
                                 headers=v237)
    assert status == 400 and "networks" in body["badRequest"]["message"]
    assert await api.cloud.head() == head
    _, body = await api.req("POST", "/servers", api.member, status=202, headers=v237, json={
        "server": {**server, "networks": "none", "description": "a test"}})
    sid = body["server"]["id"]
    await api.wait_status(sid, "ACTIVE")
    _, body = await api.req("GET", f"/servers/{sid}", api.admin, status=200, headers=v237)
    new = body["server"]
    assert new["locked"] is False and new["tags"] == [] and new["description"] == "a test"
    assert new["host_status"] == "UP" and new["OS-EXT-SRV-ATTR:hostname"] == "vm-mv"
    assert new["OS-EXT-SRV-ATTR:launch_index"] == 0
    _, body = await api.req("GET", f"/servers/{sid}", api.member, status=200, headers=v237)
    assert "host_status" not in body["server"] and "locked" in body["server"]
    assert not any(k.startswith("OS-EXT-SRV-ATTR") for k in body["server"])
    old = await api.show(sid)
    for key in ("locked", "tags", "description", "host_status",
                "OS-EXT-SRV-ATTR:hostname"):
        assert key not in old, key
