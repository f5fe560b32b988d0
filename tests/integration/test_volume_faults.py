"""Volumes on the real things and under faults: a qemu-img volume attached to a domain of
libvirt's test:///default shows in the domain's XML and leaves it on detach (in-process,
both backends); hostd SIGKILLed in the middle of an attach (real processes on PostgreSQL
and RabbitMQ) leaves no volume attaching: the saga times out and rolls back, and once
hostd is back the attach completes."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt  # type: ignore[import-untyped]
import pytest

from bus.routing import Names
from hostd.storage_qemu import QemuImgBackend
from tests.integration.test_volume_attach import DEADLINES, VOLUME_DEADLINES, Api
from tests.support.cloud import running_cloud
from tests.support.deployment import Api as DeploymentApi, deployment

CINDER = "/volume/v3/volumes"
NOVA = "/compute/v2.1/servers"


def _disks(domain_xml: str) -> dict[str, str]:
    """target dev -> source file of every file disk but the boot disk."""
    found = {}
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and target.get("dev") != "vda":
            found[str(target.get("dev"))] = str(source.get("file"))
    return found


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, storage_hosts=1,
                             hypervisor="libvirt", host_images=True, deadlines=DEADLINES,
                             volume_deadlines=VOLUME_DEADLINES,
                             storage=lambda _: QemuImgBackend(tmp_path / "volumes",
                                                              capacity_gb=10),
                             **extra) as cloud:
        yield await Api(cloud).setup()


async def test_the_domain_xml_has_the_disk_while_attached(api: Api) -> None:
    """On libvirt test:///default: after the attach the domain's definition holds a
    virtio disk vdb on the volume's qemu-img file (serial the volume id); after the
    detach it does not."""
    sid = await api.boot()
    vid = await api.volume()
    await api.wait_server(sid)
    await api.attach(sid, vid)
    await api.wait_status(vid, "in-use")
    path = str(api.cloud.storage[0].root / f"volume-{vid}")  # type: ignore[attr-defined]
    conn = libvirt.open("test:///default")  # one node per process: hostd's domains
    try:
        dom = conn.lookupByUUIDString(sid)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert _disks(xml) == {"vdb": path}
        disk = next(d for d in ET.fromstring(xml).iterfind("./devices/disk")
                    if d.find("target").get("dev") == "vdb")  # type: ignore[union-attr]
        assert disk.find("serial").text == vid  # type: ignore[union-attr]
        assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
        await api.nova("DELETE", f"/servers/{sid}/os-volume_attachments/{vid}", status=202)
        await api.wait_status(vid, "available")
        assert _disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == {}
    finally:
        conn.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def _volume_status(api: DeploymentApi, vid: str) -> str:
    return str((await api.call("GET", f"{CINDER}/{vid}"))["volume"]["status"])


async def test_hostd_killed_in_the_middle_of_an_attach_never_leaves_it_attaching(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """hostd h1 is SIGKILLed just before an attach reaches it: the API still answers 200
    (the volume was reserved), the saga's 5 s deadline passes, the volume is available
    again and the server has no attachment (never attaching for good). hostd restarts
    (its stale attach command past its deadline is refused); the volume then attaches to
    a server on the restarted host."""
    env = {"ORRERY_INSTANCE_DEADLINES": "attaching=5,detaching=5"}
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path, hosts=("h1",), storage_hosts=("s1",),
                    extra_env=env) as dep:
        api = DeploymentApi(dep, http)
        image = await api.image()
        sid = await api.boot("vm1", image)
        await api.wait_status(sid, "ACTIVE")
        made = await api.call("POST", CINDER, {"volume": {"size": 1}}, expect=(202,))
        vid = made["volume"]["id"]
        deadline = time.monotonic() + 30
        while await _volume_status(api, vid) != "available":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

        dep.kill(dep.hostds["h1"])
        await api.call("POST", f"{NOVA}/{sid}/os-volume_attachments",
                       {"volumeAttachment": {"volumeId": vid}})
        seen, deadline = set(), time.monotonic() + 30
        while (status := await _volume_status(api, vid)) != "available":
            seen.add(status)
            assert time.monotonic() < deadline, f"volume stuck {status}"
            await asyncio.sleep(0.2)
        assert seen <= {"attaching"}, seen
        listed = await api.call("GET", f"{NOVA}/{sid}/os-volume_attachments")
        assert listed["volumeAttachments"] == []

        dep.start_hostd("h1")
        dep.wait_hosts({"h1": "up"})
        # the test driver's domains died with the old hostd (its reconcile sends vm1 to
        # ERROR), so the attach completes on a server booted on the restarted host
        sid2 = await api.boot("vm2", image)
        await api.wait_status(sid2, "ACTIVE")
        await api.call("POST", f"{NOVA}/{sid2}/os-volume_attachments",
                       {"volumeAttachment": {"volumeId": vid}})
        deadline = time.monotonic() + 30
        while (status := await _volume_status(api, vid)) != "in-use":
            assert status == "attaching", status
            assert time.monotonic() < deadline, f"volume stuck {status}"
            await asyncio.sleep(0.2)
        listed = await api.call("GET", f"{NOVA}/{sid2}/os-volume_attachments")
        assert [a["volumeId"] for a in listed["volumeAttachments"]] == [vid]
