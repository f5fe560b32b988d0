"""Attaching volumes to servers through Nova's os-volume_attachments, on embedded and on
PostgreSQL + RabbitMQ: one saga owned by the instance records both sides, rolls both back
on failure or timeout, detaches (or deletes) a deleted server's volumes, and of 50
servers asking for one volume at once exactly one gets it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.instance import Deadlines
from actors.volume import VolumeDeadlines
from bus.routing import Names
from gateway.app import GatewaySettings
from hostd.fake import FakeHypervisor
from tests.integration.test_volumes_api import Api as VolumesApi
from tests.support.cloud import running_cloud

NOVA = "/compute/v2.1"
DEADLINES = Deadlines(scheduling=30, spawning=30, deleting=5, attaching=2, detaching=2)
VOLUME_DEADLINES = VolumeDeadlines(creating=10, extending=10, deleting=10, lease=4)


class Api(VolumesApi):
    """The volumes test API plus servers, attachments and the hosts' hypervisor."""

    image = ""

    async def setup(self) -> Api:
        await super().setup()
        self.image = await self.upload_image(b"x" * 4096)
        return self

    async def nova(self, method: str, path: str, token: str | None = None, *,
                   status: int | None = None, version: str = "2.1",
                   **kw: Any) -> tuple[int, Any]:
        headers = {"X-OpenStack-Nova-API-Version": version}
        return await self.req(method, NOVA + path, token or self.member, status=status,
                              raw=True, headers=headers, **kw)

    async def boot(self, name: str = "vm", token: str | None = None) -> str:
        _, body = await self.nova("POST", "/servers", token, status=202, json={"server": {
            "name": name, "imageRef": self.image, "flavorRef": "1", "networks": "none"}})
        return str(body["server"]["id"])

    async def server(self, sid: str) -> Any:
        return (await self.nova("GET", f"/servers/{sid}", self.admin, status=200))[1]["server"]

    async def wait_server(self, sid: str, want: str = "ACTIVE") -> Any:
        deadline = time.monotonic() + 30
        while (server := await self.server(sid))["status"] != want:
            assert server["status"] != "ERROR", server.get("fault")
            assert time.monotonic() < deadline, f"server {sid} is {server['status']}"
            await asyncio.sleep(0.05)
        return server

    async def volume(self, size: int = 1) -> str:
        vid = str((await self.create(size=size))["volume"]["id"])
        await self.wait_status(vid, "available")
        return vid

    async def attach(self, sid: str, vid: str, status: int = 200, **extra: Any) -> Any:
        version = extra.pop("version", "2.1")
        return (await self.nova("POST", f"/servers/{sid}/os-volume_attachments", status=status,
                                version=version,
                                json={"volumeAttachment": {"volumeId": vid, **extra}}))[1]

    @property
    def hypervisor(self) -> FakeHypervisor:
        hv = self.cloud.hypervisors[0]
        assert isinstance(hv, FakeHypervisor)
        return hv


async def _cloud(backends: tuple[str, dict[str, Any]], names: Names, tmp_path: Path,
                 **kw: Any) -> Any:
    which, extra = backends
    return running_cloud(which, tmp_path, names=names, storage_hosts=1, deadlines=DEADLINES,
                         volume_deadlines=VOLUME_DEADLINES, **extra, **kw)


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    settings = GatewaySettings(compute_max_version="2.79")  # delete_on_termination is 2.79
    async with await _cloud(backends, bus_names, tmp_path, settings=settings) as cloud:
        yield await Api(cloud).setup()


async def test_attach_and_detach_agree_on_both_sides(api: Api) -> None:
    """POST os-volume_attachments 200 with /dev/vdb; the volume turns in-use with its
    attachment (server, host-1, device), and by then the server lists it and the domain
    has the disk; DELETE volume is 400 while in use; DELETE the attachment 202; once the
    server lists nothing the volume is available and the domain has no disk."""
    sid = await api.boot()
    vid = await api.volume()
    await api.wait_server(sid)
    body = await api.attach(sid, vid)
    assert body == {"volumeAttachment": {"id": vid, "serverId": sid, "volumeId": vid,
                                         "device": "/dev/vdb"}}
    volume = await api.wait_status(vid, "in-use")  # Cinder done: Nova agrees at once
    _, listed = await api.nova("GET", f"/servers/{sid}/os-volume_attachments", status=200)
    assert [a["volumeId"] for a in listed["volumeAttachments"]] == [vid]
    (att,) = volume["attachments"]
    assert (att["server_id"], att["host_name"], att["device"], att["volume_id"]) == (
        sid, "host-1", "/dev/vdb", vid)
    assert att["attachment_id"] and att["attached_at"]
    _, listed = await api.nova("GET", f"/servers/{sid}/os-volume_attachments", status=200)
    assert listed["volumeAttachments"] == [body["volumeAttachment"]]
    await api.nova("GET", f"/servers/{sid}/os-volume_attachments/{vid}", status=200)
    server = await api.server(sid)
    assert server["os-extended-volumes:volumes_attached"] == [{"id": vid}]
    path = (await api.backend.get(vid)).path  # type: ignore[union-attr]
    assert await api.hypervisor.disks(sid) == {"vdb": path}
    _, refused = await api.req("DELETE", f"/volumes/{vid}", api.member, status=400)
    assert "attached" in refused["badRequest"]["message"]

    await api.nova("DELETE", f"/servers/{sid}/os-volume_attachments/{vid}", status=202)
    await _until_no_attachments(api, sid)  # Nova done: Cinder agrees at once
    volume = await api.show(vid)
    assert (volume["status"], volume["attachments"]) == ("available", [])
    assert await api.hypervisor.disks(sid) == {}
    await api.req("DELETE", f"/volumes/{vid}", api.member, status=202)


async def test_devices_are_chosen_or_taken_as_asked(api: Api) -> None:
    """Two volumes without a device get vdb and vdc; one asked on /dev/vde gets it; a
    taken device is 400; the server shows all three."""
    sid = await api.boot()
    vids = [await api.volume() for _ in range(4)]
    await api.wait_server(sid)
    devices = [(await api.attach(sid, v))["volumeAttachment"]["device"] for v in vids[:2]]
    assert devices == ["/dev/vdb", "/dev/vdc"]
    asked = await api.attach(sid, vids[2], device="/dev/vde")
    assert asked["volumeAttachment"]["device"] == "/dev/vde"
    await api.attach(sid, vids[3], device="/dev/vdb", status=400)
    for vid in vids[:3]:
        await api.wait_status(vid, "in-use")
    assert (await api.show(vids[3]))["status"] == "available"
    attached = (await api.server(sid))["os-extended-volumes:volumes_attached"]
    assert sorted(v["id"] for v in attached) == sorted(vids[:3])


async def test_deleting_a_server_detaches_or_deletes_its_volumes(api: Api) -> None:
    """A server deleted with two volumes: the one attached plainly is available again,
    the one attached with delete_on_termination (2.79) is deleted with it."""
    sid = await api.boot()
    keep, drop = await api.volume(), await api.volume()
    await api.wait_server(sid)
    await api.attach(sid, keep)
    body = await api.attach(sid, drop, version="2.79", delete_on_termination=True)
    assert body["volumeAttachment"]["delete_on_termination"] is True
    for vid in (keep, drop):
        await api.wait_status(vid, "in-use")
    await api.nova("DELETE", f"/servers/{sid}", status=204)
    await api.wait_status(keep, "available")

    async def dropped() -> bool:
        return (await api.req("GET", f"/volumes/{drop}", api.member))[0] == 404
    deadline = time.monotonic() + 20
    while not await dropped():
        assert time.monotonic() < deadline, "the delete_on_termination volume stayed"
        await asyncio.sleep(0.05)
    assert await api.backend.get(drop) is None


async def test_a_failed_attach_rolls_both_sides_back(api: Api) -> None:
    """The host cannot attach the file: the POST has its 200 (the volume was reserved),
    then the volume is available again and the server has no attachment."""
    sid = await api.boot()
    vid = await api.volume()
    await api.wait_server(sid)
    api.hypervisor.fail_attach.add((await api.backend.get(vid)).path)  # type: ignore[union-attr]
    await api.attach(sid, vid)
    await api.wait_status(vid, "available")
    await _until_no_attachments(api, sid)
    assert await api.hypervisor.disks(sid) == {}


async def test_an_attach_that_times_out_rolls_back_and_cleans_up(api: Api) -> None:
    """The host takes longer than the attach deadline (2 s): the saga gives up, the volume
    is available again, and the host is told to detach what it attached late."""
    sid = await api.boot()
    vid = await api.volume()
    await api.wait_server(sid)
    api.hypervisor.attach_delay = 3.0
    await api.attach(sid, vid)
    await api.wait_status(vid, "available", timeout=15)
    await _until_no_attachments(api, sid)
    api.hypervisor.attach_delay = 0.0
    deadline = time.monotonic() + 15
    while await api.hypervisor.disks(sid):
        assert time.monotonic() < deadline, "the late disk was never detached"
        await asyncio.sleep(0.1)


async def test_attach_bad_input_is_refused_and_appends_nothing(api: Api) -> None:
    """Attach to a missing server 404, of a missing volume 404, of another project's
    volume 404, a volumeId that is no UUID 400, an unknown field 400, a reader 403, an
    in-use volume 400; detaching a volume that is not attached 404: no event."""
    sid = await api.boot()
    vid, used = await api.volume(), await api.volume()
    theirs = str((await api.create(api.other))["volume"]["id"])
    await api.wait_status(theirs, "available")
    await api.wait_server(sid)
    await api.attach(sid, used)
    await api.wait_status(used, "in-use")
    head = await api.cloud.head()
    _, body = await api.nova("POST", "/servers/nope/os-volume_attachments", status=404,
                             json={"volumeAttachment": {"volumeId": vid}})
    assert body["itemNotFound"]["message"] == "Instance nope could not be found."
    missing = "00000000-0000-4000-8000-000000000000"
    await api.attach(sid, missing, status=404)
    await api.attach(sid, theirs, status=404)
    await api.attach(sid, "not-a-uuid", status=400)
    await api.attach(sid, vid, status=400, tag="t")  # tag is 2.49
    await api.nova("POST", f"/servers/{sid}/os-volume_attachments", api.reader, status=403,
                   json={"volumeAttachment": {"volumeId": vid}})
    await api.attach(sid, used, status=400)
    await api.nova("DELETE", f"/servers/{sid}/os-volume_attachments/{vid}", status=404)
    assert await api.cloud.head() == head


async def test_fifty_concurrent_attaches_of_one_volume_give_it_to_exactly_one(
        api: Api) -> None:
    """50 servers ask for one volume at once: exactly one 200, 49 400 "Invalid volume";
    the volume ends in-use with that one attachment and no server holds a half attach."""
    sids = [await api.boot(f"vm{i}") for i in range(50)]
    vid = await api.volume()
    for sid in sids:
        await api.wait_server(sid)

    async def ask(sid: str) -> tuple[int, Any]:
        return await api.nova("POST", f"/servers/{sid}/os-volume_attachments",
                              json={"volumeAttachment": {"volumeId": vid}})
    answers = await asyncio.gather(*(ask(s) for s in sids))
    codes = sorted(status for status, _ in answers)
    assert codes == [200] + [400] * 49, codes
    assert all("Invalid volume" in body["badRequest"]["message"]
               for status, body in answers if status == 400)
    winner = next(s for s, (status, _) in zip(sids, answers, strict=True) if status == 200)
    volume = await api.wait_status(vid, "in-use")
    assert [a["server_id"] for a in volume["attachments"]] == [winner]
    for sid in sids:
        _, listed = await api.nova("GET", f"/servers/{sid}/os-volume_attachments", status=200)
        assert [a["volumeId"] for a in listed["volumeAttachments"]] == (
            [vid] if sid == winner else []), sid
    rows = await api.cloud.store.query(
        "SELECT state, COUNT(*) FROM server_volumes GROUP BY state ORDER BY state")
    assert dict(rows) == {"attached": 1, "refused": 49}


async def _until_no_attachments(api: Api, sid: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        _, listed = await api.nova("GET", f"/servers/{sid}/os-volume_attachments", status=200)
        if listed["volumeAttachments"] == []:
            return
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.05)



