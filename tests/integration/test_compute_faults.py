"""Compute under faults: a worker SIGKILLed in the middle of 50 boots, hostd SIGKILLed and
restarted, the control plane SIGKILLed under running servers (real processes on PostgreSQL
and RabbitMQ), and a domain destroyed behind Orrery's back (in-process, both backends).

What survives a hostd crash here: nothing on the host side. libvirt's test driver and the
fake hypervisor keep their domains in hostd's own memory, so a SIGKILLed hostd takes its
domains with it (on qemu:///system they would keep running). The hostd test therefore
asserts what the control plane must do: while hostd is dead its servers stay ACTIVE and
listed, the host goes down and comes back up, nothing is deleted, and on restart the
reconcile reports what it finds (here: the domains are gone, so those servers go to ERROR
with a readable fault, and the other host's servers stay ACTIVE). "Running domains are
untouched" is asserted where it can be: SIGKILL the relay, the workers and the API while
both hostd keep running, restart them, and every server is still ACTIVE and stops and
starts (which needs its domain on the host).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.instance import Deadlines
from bus.routing import Names
from tests.support.backends import eventually
from tests.support.cloud import Cloud, running_cloud
from tests.support.deployment import SERVERS, Api, deployment, hostd_options

DEADLINES = {"scheduling": 10.0, "spawning": 20.0}
#: fake hosts roomy enough for 50 m1.tiny on each
ROOMY = "64,65536,2000"


def _hypervisor() -> str:
    """libvirt test:///default once ``orrery hostd`` can fetch images (an image path is
    needed to define a libvirt domain), else the fake."""
    return "libvirt" if "--images-from" in hostd_options() else "fake"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def _usage_matches(api: Api, flavor: dict[str, Any]) -> bool:
    """Each host's usage is exactly the claims of its ACTIVE (or SHUTOFF) servers."""
    servers, hosts = await api.servers(), await api.hosts()
    for name, host in hosts.items():
        mine = [s for s in servers.values() if s["status"] in ("ACTIVE", "SHUTOFF")
                and s.get("OS-EXT-SRV-ATTR:host") == name]
        want = (len(mine), len(mine) * flavor["vcpus"], len(mine) * flavor["ram"],
                len(mine) * flavor["disk"])
        got = (host["running_vms"], host["vcpus_used"], host["memory_mb_used"],
               host["local_gb_used"])
        if got != want:
            return False
    return True


async def test_fifty_boots_with_a_worker_killed_end_active_or_error_within_deadline(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """Two workers; 50 boots submitted through the API; one worker SIGKILLed after 15 and a
    new one started after 35. Every server ends ACTIVE or ERROR within its deadline (none
    left in BUILD), and each host's usage is the claims of its ACTIVE servers. On fake
    hosts with room for all 50 (libvirt's test node has 8 GiB)."""
    env = {"ORRERY_INSTANCE_DEADLINES": ",".join(f"{k}={v}" for k, v in DEADLINES.items()),
           "ORRERY_FAKE_HOST_CAPACITY": ROOMY}
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path, workers=2, hypervisor="fake", extra_env=env) as dep:
        api = Api(dep, http)
        image = await api.image()
        flavor = (await api.call("GET", "/compute/v2.1/flavors/1"))["flavor"]
        victim = dep.workers()[0]
        ids: list[str] = []
        submitted = time.monotonic()
        for batch in range(5):
            ids += await asyncio.gather(*(api.boot(f"vm-{batch}-{i}", image)
                                          for i in range(10)))
            if batch == 1:
                dep.kill(victim)
            if batch == 3:
                dep.start("worker")
        within = sum(DEADLINES.values()) + 10.0  # the saga's deadlines, plus the timers' lag
        remaining = within - (time.monotonic() - submitted)
        servers = await api.wait_settled(ids, timeout=max(remaining, 5.0))
        statuses = [servers[i]["status"] for i in ids]
        print("fifty boots:", {s: statuses.count(s) for s in set(statuses)},
              [servers[i]["fault"]["message"] for i in ids if servers[i]["status"] == "ERROR"])
        assert len(set(ids)) == 50 and set(statuses) <= {"ACTIVE", "ERROR"}, statuses
        assert statuses.count("ACTIVE") >= 25, f"most boots should succeed: {statuses}"
        for sid in ids:
            if servers[sid]["status"] == "ERROR":
                assert servers[sid]["fault"]["message"], servers[sid]
        await eventually(lambda: _usage_matches(api, flavor), timeout=15,
                         what="host usage equal to the ACTIVE servers' claims")


async def test_hostd_killed_and_restarted_keeps_servers_and_reconciles(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """hostd h1 SIGKILLed under running servers: they stay ACTIVE and listed while h1 goes
    down; restarted, h1 comes back up and its reconcile reports what it found (its domains
    died with the process: those servers go to ERROR with a fault); h2's stay ACTIVE,
    nothing is deleted, and deleting everything afterwards frees every claim."""
    env = {"ORRERY_HOST_DOWN_AFTER": "3", "ORRERY_FAKE_HOST_CAPACITY": ROOMY}
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path, hypervisor=_hypervisor(), extra_env=env,
                    heartbeat_every=0.5) as dep:
        api = Api(dep, http)
        image = await api.image()
        ids = [await api.boot(f"vm-{i}", image) for i in range(4)]
        servers = await api.wait_settled(ids, timeout=30)
        assert {s["status"] for s in servers.values()} == {"ACTIVE"}
        on = {h: [i for i in ids if servers[i]["OS-EXT-SRV-ATTR:host"] == h]
              for h in ("h1", "h2")}
        assert on["h1"] and on["h2"], f"spread over both hosts: {on}"

        dep.kill(dep.hostds["h1"])
        dep.wait_hosts({"h1": "down", "h2": "up"}, timeout=15)
        servers = await api.servers()
        assert {i: servers[i]["status"] for i in ids} == dict.fromkeys(ids, "ACTIVE")

        dep.start_hostd("h1")
        dep.wait_hosts({"h1": "up", "h2": "up"}, timeout=15)
        for sid in on["h1"]:  # the reconcile at start: the domain went with the process
            await api.wait_status(sid, "ERROR", timeout=20)
            shown = (await api.call("GET", f"{SERVERS}/{sid}"))["server"]
            assert "missing" in shown["fault"]["message"], shown["fault"]
        servers = await api.servers()
        assert set(servers) == set(ids)
        assert all(servers[i]["status"] == "ACTIVE" for i in on["h2"])

        for sid in ids:
            await api.call("DELETE", f"{SERVERS}/{sid}", expect=(204,))

        async def all_gone() -> bool:
            return not await api.servers()

        await eventually(all_gone, timeout=20, what="every server deleted")
        flavor = (await api.call("GET", "/compute/v2.1/flavors/1"))["flavor"]
        await eventually(lambda: _usage_matches(api, flavor), timeout=15, what="claims freed")


async def test_control_plane_killed_leaves_running_domains_untouched(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """SIGKILL the relay, the worker and the API while both hostd run, start them again:
    every server is still ACTIVE, both hosts stayed up, and each server stops (SHUTOFF) and
    starts (ACTIVE) again, which needs its domain to still be defined on its host."""
    env = {"ORRERY_FAKE_HOST_CAPACITY": ROOMY}
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path, hypervisor=_hypervisor(), extra_env=env) as dep:
        api = Api(dep, http)
        image = await api.image()
        ids = [await api.boot(f"vm-{i}", image) for i in range(4)]
        servers = await api.wait_settled(ids, timeout=30)
        assert {servers[i]["status"] for i in ids} == {"ACTIVE"}

        for name, proc in list(dep.running):
            if name.split("-")[0] in ("relay", "worker", "api") and proc.poll() is None:
                dep.kill(proc)
        dep.start("relay")
        dep.start("worker")
        dep.start("api")
        await _wait_api(api)
        dep.wait_hosts({"h1": "up", "h2": "up"}, timeout=20)
        servers = await api.servers()
        assert {servers[i]["status"] for i in ids} == {"ACTIVE"}
        for sid in ids:
            await api.call("POST", f"{SERVERS}/{sid}/action", {"os-stop": None},
                           expect=(202,))
            await api.wait_status(sid, "SHUTOFF")
            await api.call("POST", f"{SERVERS}/{sid}/action", {"os-start": None},
                           expect=(202,))
            await api.wait_status(sid, "ACTIVE")


async def _wait_api(api: Api) -> None:
    async def answers() -> bool:
        try:
            await api.servers()
        except (aiohttp.ClientError, AssertionError):
            return False
        return True
    await eventually(answers, timeout=30, what="the restarted API")


# -- in-process: a domain destroyed behind Orrery's back -------------------------------------


async def _boot_in(cloud: Cloud) -> tuple[dict[str, str], str]:
    headers = {"X-Auth-Token": await cloud.admin_token()}
    async with cloud.http.post(f"{cloud.url}/image/v2/images", headers=headers, json={
            "name": "img", "disk_format": "raw", "container_format": "bare"}) as resp:
        assert resp.status == 201, await resp.text()
        image = (await resp.json())["id"]
    async with cloud.http.put(f"{cloud.url}/image/v2/images/{image}/file", data=b"x" * 2048,
                              headers={**headers,
                                       "Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 204, await resp.text()
    async with cloud.http.post(f"{cloud.url}{SERVERS}", headers=headers, json={"server": {
            "name": "vm", "imageRef": image, "flavorRef": "1"}}) as resp:
        assert resp.status == 202, await resp.text()
        sid = str((await resp.json())["server"]["id"])
    return headers, sid


async def _status(cloud: Cloud, headers: dict[str, str], sid: str) -> dict[str, Any]:
    async with cloud.http.get(f"{cloud.url}{SERVERS}/{sid}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        server: dict[str, Any] = (await resp.json())["server"]
        return server


@pytest.mark.parametrize("how", ["destroy", "shutdown"])
async def test_domain_stopped_behind_orrerys_back_shows_shutoff(
    backends: tuple[str, dict[str, str]], bus_names: Names, tmp_path: Path, how: str,
) -> None:
    """A running server's domain destroyed (or shut down) on the hypervisor directly, not
    through Orrery: the instance shows SHUTOFF (power state 4), and starts again."""
    which, kw = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=1,
                             pg_dsn=kw.get("pg_dsn"), amqp_url=kw.get("amqp_url"),
                             deadlines=Deadlines(scheduling=10, spawning=20)) as cloud:
        headers, sid = await _boot_in(cloud)

        async def is_(status: str) -> bool:
            return bool((await _status(cloud, headers, sid))["status"] == status)

        await eventually(lambda: is_("ACTIVE"), timeout=20, what="ACTIVE")
        hv = cloud.hypervisors[0]
        if how == "destroy":
            await hv.destroy(sid)
        else:
            await hv.shutdown(sid, timeout=5)
        await eventually(lambda: is_("SHUTOFF"), timeout=20, what="SHUTOFF")
        shown = await _status(cloud, headers, sid)
        assert shown["OS-EXT-STS:power_state"] == 4 and shown["OS-EXT-STS:vm_state"] == "stopped"
        async with cloud.http.post(f"{cloud.url}{SERVERS}/{sid}/action", headers=headers,
                                   json={"os-start": None}) as resp:
            assert resp.status == 202, await resp.text()
        await eventually(lambda: is_("ACTIVE"), timeout=20, what="ACTIVE again")
