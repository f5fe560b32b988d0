"""Block Storage v3 over HTTP on a whole in-process cloud with a storage host, on embedded
and on PostgreSQL + RabbitMQ: create to available on the storage host, representations,
lists and filters, update, os-extend, delete, volumes from images, volume types,
isolation and roles, and bad input that leaves the log untouched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.host_views import read_host
from actors.volume import VolumeDeadlines
from bus.routing import Names
from hostd.storage_fake import FakeStorageBackend
from tests.support.cloud import Cloud, running_cloud

CINDER = "/volume/v3"
IMG = "/image/v2/images"
VOLUME_DEADLINES = VolumeDeadlines(creating=10, extending=10, deleting=10, lease=10)


class Api:
    """A cloud with one storage host (20 GiB, fake backend) and tokens for admin, a member,
    another project's member and a reader of the member's project."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.admin = self.member = self.other = self.reader = self.project = ""

    async def setup(self) -> Api:
        self.admin = await self.cloud.admin_token()
        self.member = await self.cloud.user("alice", "demo")
        self.reader = await self.cloud.user("rita", "demo", role="reader")
        self.other = await self.cloud.user("bob", "other")
        _, body = await self.req("GET", "/identity/v3/auth/tokens", self.member,
                                 headers={"X-Subject-Token": self.member}, raw=True)
        self.project = body["token"]["project"]["id"]
        return self

    async def req(self, method: str, path: str, token: str | None = None, *,
                  status: int | None = None, raw: bool = False, **kw: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": token} if token is not None else {}
        headers.update(kw.pop("headers", {}))
        url = self.cloud.url + (path if raw else CINDER + path)
        async with self.cloud.http.request(method, url, headers=headers, **kw) as resp:
            text = await resp.text()
            if status is not None:
                assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            return resp.status, (await resp.json(content_type=None) if text else None)

    async def create(self, token: str | None = None, status: int = 202, **volume: Any) -> Any:
        body = {"size": 1, **volume}
        _, made = await self.req("POST", "/volumes", token or self.member, status=status,
                                 json={"volume": body})
        return made

    async def show(self, volume_id: str, token: str | None = None) -> Any:
        return (await self.req("GET", f"/volumes/{volume_id}", token or self.member,
                               status=200))[1]["volume"]

    async def wait_status(self, volume_id: str, want: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            volume = await self.show(volume_id, self.admin)
            if volume["status"] == want:
                return volume
            assert volume["status"] != "error" or want == "error", volume
            assert time.monotonic() < deadline, f"still {volume['status']}, not {want}"
            await asyncio.sleep(0.05)

    async def upload_image(self, data: bytes) -> str:
        h = {"X-Auth-Token": self.admin}
        _, made = await self.req("POST", IMG, self.admin, raw=True, status=201, json={
            "name": "img", "disk_format": "raw", "container_format": "bare",
            "visibility": "public"})
        async with self.cloud.http.put(f"{self.cloud.url}{IMG}/{made['id']}/file", data=data,
                                       headers={**h, "Content-Type":
                                                "application/octet-stream"}) as resp:
            assert resp.status == 204, await resp.text()
        return str(made["id"])

    @property
    def backend(self) -> FakeStorageBackend:
        backend = self.cloud.storage[0]
        assert isinstance(backend, FakeStorageBackend)
        return backend


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, storage_hosts=1,
                             storage=lambda _: FakeStorageBackend(capacity_gb=20),
                             volume_deadlines=VOLUME_DEADLINES, **extra) as cloud:
        yield await Api(cloud).setup()


async def test_create_reaches_available_in_cinders_representation(api: Api) -> None:
    """POST 202 with the volume creating; the next GET sees it; it becomes available on
    storage-1 with Cinder's 3.0 fields; the admin alone sees the host and tenant; the
    storage host holds the volume and counts its claim."""
    made = (await api.create(name="v1", description="d", metadata={"k": "v"}))["volume"]
    assert made["status"] == "creating" and made["size"] == 1 and made["name"] == "v1"
    volume = await api.wait_status(made["id"], "available")
    mine = await api.show(made["id"])
    assert set(mine) == {
        "id", "name", "description", "size", "status", "attachments", "availability_zone",
        "bootable", "encrypted", "multiattach", "created_at", "updated_at", "volume_type",
        "snapshot_id", "source_volid", "metadata", "user_id", "replication_status",
        "consistencygroup_id", "links"}
    assert (mine["bootable"], mine["attachments"], mine["volume_type"]) == (
        "false", [], "__DEFAULT__")
    assert mine["metadata"] == {"k": "v"} and mine["availability_zone"] == "nova"
    assert volume["os-vol-host-attr:host"] == "storage-1"
    assert volume["os-vol-tenant-attr:tenant_id"] == api.project
    assert await api.backend.get(made["id"]) is not None
    host = await read_host(api.cloud.store, "storage-1")
    assert host is not None and host.used.volume_gb == 1 and host.volumes == 1


async def test_lists_filters_and_pages(api: Api) -> None:
    """volumes and volumes/detail list the project's volumes newest first, filter by
    name, status and metadata, page with limit/marker, with and without the project id
    in the path; other projects see none; the admin sees all with all_tenants."""
    a = (await api.create(name="a", metadata={"tier": "gold"}))["volume"]["id"]
    b = (await api.create(name="b"))["volume"]["id"]
    c = (await api.create(api.other, name="c"))["volume"]["id"]
    for vid in (a, b, c):
        await api.wait_status(vid, "available")
    _, body = await api.req("GET", "/volumes", api.member, status=200)
    assert [v["id"] for v in body["volumes"]] == [b, a]
    assert set(body["volumes"][0]) == {"id", "name", "links"}
    _, body = await api.req("GET", f"/{api.project}/volumes/detail?name=a", api.member,
                            status=200)
    assert [v["id"] for v in body["volumes"]] == [a]
    _, body = await api.req("GET", "/volumes/detail?metadata={'tier': 'gold'}", api.member,
                            status=200)
    assert [v["id"] for v in body["volumes"]] == [a]
    _, body = await api.req("GET", "/volumes/detail?status=in-use", api.member, status=200)
    assert body["volumes"] == []
    _, body = await api.req("GET", "/volumes?limit=1", api.member, status=200)
    assert [v["id"] for v in body["volumes"]] == [b] and "volumes_links" in body
    _, body = await api.req("GET", f"/volumes?marker={b}", api.member, status=200)
    assert [v["id"] for v in body["volumes"]] == [a]
    await api.req("GET", "/volumes?marker=nope", api.member, status=400)
    _, body = await api.req("GET", "/volumes", api.other, status=200)
    assert [v["id"] for v in body["volumes"]] == [c]
    _, body = await api.req("GET", "/volumes/detail?all_tenants=1", api.admin, status=200)
    assert {v["id"] for v in body["volumes"]} == {a, b, c}


async def test_update_extend_and_delete(api: Api) -> None:
    """PUT changes name, description and metadata; os-extend grows the volume (extending,
    then available at 3 GiB, its file and its claim grown); DELETE 202 removes it: 404,
    its file gone, its claim released."""
    vid = (await api.create(name="v"))["volume"]["id"]
    await api.wait_status(vid, "available")
    _, body = await api.req("PUT", f"/volumes/{vid}", api.member, status=200, json={
        "volume": {"name": "renamed", "description": "new", "metadata": {"a": "b"}}})
    assert (body["volume"]["name"], body["volume"]["description"],
            body["volume"]["metadata"]) == ("renamed", "new", {"a": "b"})
    await api.req("POST", f"/volumes/{vid}/action", api.member, status=202,
                  json={"os-extend": {"new_size": 3}})
    volume = await api.wait_status(vid, "available")
    assert volume["size"] == 3 and volume["name"] == "renamed"
    found = await api.backend.get(vid)
    assert found is not None and found.size_gb == 3
    host = await read_host(api.cloud.store, "storage-1")
    assert host is not None and host.used.volume_gb == 3
    await api.req("DELETE", f"/volumes/{vid}", api.member, status=202)

    async def gone() -> bool:
        status, _ = await api.req("GET", f"/volumes/{vid}", api.member)
        return status == 404
    await _eventually(gone)
    assert await api.backend.get(vid) is None

    async def released() -> bool:  # the host reacts to volume.deleted
        host = await read_host(api.cloud.store, "storage-1")
        return host is not None and host.used.volume_gb == 0 and host.volumes == 0
    await _eventually(released)


async def test_volume_from_an_image_holds_its_bytes(api: Api) -> None:
    """imageRef: the volume is bootable "true", shows volume_image_metadata, and reads
    back the image's bytes then zeros."""
    data = bytes(range(256)) * 40
    image = await api.upload_image(data)
    vid = (await api.create(imageRef=image, name="boot"))["volume"]["id"]
    volume = await api.wait_status(vid, "available")
    assert volume["bootable"] == "true"
    assert volume["volume_image_metadata"]["image_id"] == image
    assert await api.backend.read(vid, 0, len(data) + 100) == data + bytes(100)


async def test_too_big_for_every_storage_host_ends_in_error(api: Api) -> None:
    """30 GiB on a 20 GiB storage host: error, with Cinder's no-valid-backend reason; the
    volume can then be deleted."""
    vid = (await api.create(size=30))["volume"]["id"]
    await api.wait_status(vid, "error")
    rows = await api.cloud.store.query("SELECT error FROM volumes WHERE id = $1", vid)
    assert rows[0][0].startswith("No valid backend was found.")
    await api.req("DELETE", f"/volumes/{vid}", api.member, status=202)
    await api.req("GET", f"/volumes/{vid}", api.member, status=404)


async def test_storage_hosts_are_services_and_pools_to_the_admin(api: Api) -> None:
    """os-services lists storage-1 as an up cinder-volume; get_pools shows its 20 GiB and
    what a 2 GiB volume claims; both are 403 to a member; os-hypervisors lists no
    storage host."""
    vid = (await api.create(size=2))["volume"]["id"]
    await api.wait_status(vid, "available")
    _, body = await api.req("GET", "/os-services", api.admin, status=200)
    (service,) = body["services"]
    assert (service["binary"], service["host"], service["state"]) == (
        "cinder-volume", "storage-1@fake", "up")
    _, body = await api.req("GET", "/scheduler-stats/get_pools?detail=True", api.admin,
                            status=200)
    (pool,) = body["pools"]
    caps = pool["capabilities"]
    assert (caps["total_capacity_gb"], caps["allocated_capacity_gb"],
            caps["free_capacity_gb"]) == (20, 2, 18)
    await api.req("GET", "/os-services", api.member, status=403)
    _, body = await api.req("GET", "/compute/v2.1/os-hypervisors", api.admin, raw=True,
                            status=200)
    assert [h["hypervisor_hostname"] for h in body["hypervisors"]] == ["host-1"]


async def test_volume_types_list_the_default(api: Api) -> None:
    """The __DEFAULT__ type is listed and shown; a create naming it is accepted, naming
    another is 404."""
    _, body = await api.req("GET", "/types", api.member, status=200)
    (vtype,) = body["volume_types"]
    assert vtype["name"] == "__DEFAULT__" and vtype["is_public"] is True
    await api.req("GET", f"/types/{vtype['id']}", api.member, status=200)
    await api.req("GET", "/types/default", api.member, status=200)
    await api.create(volume_type="__DEFAULT__")
    await api.create(volume_type=vtype["id"])
    await api.create(volume_type="gold", status=404)


async def test_isolation_and_roles(api: Api) -> None:
    """Another project's member gets 404 for every verb; a reader reads but gets 403 on
    create, update, extend and delete; the state stays."""
    vid = (await api.create())["volume"]["id"]
    await api.wait_status(vid, "available")
    for method, path, body in (("GET", f"/volumes/{vid}", None),
                               ("PUT", f"/volumes/{vid}", {"volume": {"name": "x"}}),
                               ("DELETE", f"/volumes/{vid}", None),
                               ("POST", f"/volumes/{vid}/action",
                                {"os-extend": {"new_size": 2}})):
        await api.req(method, path, api.other, status=404, json=body)
    assert (await api.show(vid, api.reader))["id"] == vid
    await api.create(api.reader, status=403)
    await api.req("PUT", f"/volumes/{vid}", api.reader, status=403,
                  json={"volume": {"name": "x"}})
    await api.req("POST", f"/volumes/{vid}/action", api.reader, status=403,
                  json={"os-extend": {"new_size": 2}})
    await api.req("DELETE", f"/volumes/{vid}", api.reader, status=403)
    assert (await api.show(vid))["status"] == "available"


@pytest.mark.parametrize("size", [0, -1, "abc", "-1", None, True, 2**31])
async def test_bad_size_is_400_and_appends_nothing(api: Api, size: object) -> None:
    head = await api.cloud.head()
    _, body = await api.req("POST", "/volumes", api.member, status=400,
                            json={"volume": {"size": size}})
    assert "size" in body["badRequest"]["message"]
    assert await api.cloud.head() == head


async def test_other_bad_input_is_refused_and_appends_nothing(api: Api) -> None:
    """A missing volume 404 (Cinder's body); extend to a smaller or equal size 400;
    unknown actions, zones, images, snapshots, a malformed body and a project id not the
    token's are 400; none appends an event."""
    vid = (await api.create(size=2))["volume"]["id"]
    await api.wait_status(vid, "available")
    head = await api.cloud.head()
    _, body = await api.req("GET", "/volumes/nope", api.member, status=404)
    assert body == {"itemNotFound": {"code": 404,
                                     "message": "Volume nope could not be found."}}
    await api.req("DELETE", "/volumes/00000000-0000-0000-0000-000000000000", api.member,
                  status=404)
    for new_size in (1, 2):
        _, body = await api.req("POST", f"/volumes/{vid}/action", api.member, status=400,
                                json={"os-extend": {"new_size": new_size}})
        assert "New size for extend must be greater than current size" in \
            body["badRequest"]["message"]
    await api.req("POST", f"/volumes/{vid}/action", api.member, status=400,
                  json={"os-extend": {"new_size": "abc"}})
    await api.req("POST", f"/volumes/{vid}/action", api.member, status=400,
                  json={"os-migrate_volume": {}})
    for volume in ({"size": 1, "availability_zone": "mars"}, {"size": 1, "imageRef": "nope"},
                   {"size": 1, "snapshot_id": "s"}, {"size": 1, "multiattach": True}):
        await api.req("POST", "/volumes", api.member, status=400, json={"volume": volume})
    await api.req("POST", "/volumes", api.member, status=400, data=b"{not json")
    await api.req("GET", "/other-project/volumes", api.member, status=400)
    assert await api.cloud.head() == head


async def test_discovery_and_microversion_echo(api: Api) -> None:
    """GET /volume/ is 300 and /volume/v3/ 200 with version 3.0; a request's
    OpenStack-API-Version is echoed; one above the maximum is 406."""
    status, body = await api.req("GET", "/volume/", raw=True)
    assert status == 300 and body["versions"][0]["min_version"] == "3.0"
    status, body = await api.req("GET", "/volume/v3/", raw=True)
    assert status == 200 and body["versions"][0]["id"] == "v3.0"
    async with api.cloud.http.get(f"{api.cloud.url}{CINDER}/volumes", headers={
            "X-Auth-Token": api.member, "OpenStack-API-Version": "volume 3.0"}) as resp:
        assert resp.status == 200
        assert resp.headers["OpenStack-API-Version"] == "volume 3.0"
    await api.req("GET", "/volumes", api.member, status=406,
                  headers={"OpenStack-API-Version": "volume 3.99"})


async def _eventually(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)

