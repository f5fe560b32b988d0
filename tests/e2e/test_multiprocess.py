"""The README's multi-process deployment (relay, two workers, the API, hostd h1 and h2) on
PostgreSQL and RabbitMQ: servers spread over both hosts, each host's usage is its servers'
flavors, and a second API process on the same log serves the same servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bus.routing import Names
from tests.support.backends import eventually
from tests.support.deployment import Api, deployment, hostd_options
from tests.support.serve import free_port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_multiprocess_deployment_spreads_servers_and_a_second_api_agrees(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """Six boots, one after the other, through the API all end ACTIVE, on both hosts
    (spread by free RAM);
    os-hypervisors counts each host's servers and their m1.tiny claims; a second `orrery
    api` started later reads the same servers and hosts from its own projections."""
    hypervisor = "libvirt" if "--images-from" in hostd_options() else "fake"
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path, workers=2, hypervisor=hypervisor) as dep:
        api = Api(dep, http)
        image = await api.image()
        # one after the other: concurrent placements all see the same free RAM and may
        # pick the same host (the claims still keep every host within its capacity)
        ids = [await api.boot(f"vm-{i}", image) for i in range(6)]
        servers = await api.wait_settled(ids, timeout=40)
        assert [servers[i]["status"] for i in ids] == ["ACTIVE"] * 6
        per_host = {h: sum(1 for i in ids if servers[i]["OS-EXT-SRV-ATTR:host"] == h)
                    for h in ("h1", "h2")}
        assert per_host["h1"] and per_host["h2"], per_host
        hosts = await api.hosts()
        for name, count in per_host.items():
            assert (hosts[name]["running_vms"], hosts[name]["vcpus_used"],
                    hosts[name]["memory_mb_used"], hosts[name]["state"]) == (
                count, count, 512 * count, "up")

        port = free_port()
        second = dep.start("api", env={"ORRERY_API_PORT": str(port)})
        other = Api(dep, http, url=f"http://127.0.0.1:{port}")

        async def caught_up() -> bool:
            try:
                seen = await other.servers()
            except (aiohttp.ClientError, AssertionError):
                assert second.poll() is None, dep.logs()
                return False
            return {i: s["status"] for i, s in seen.items()} == dict.fromkeys(ids, "ACTIVE")

        await eventually(caught_up, timeout=30, what="the second API serving the servers")
        usage = ("state", "running_vms", "vcpus_used", "memory_mb_used", "local_gb_used")
        assert {n: [h[k] for k in usage] for n, h in (await other.hosts()).items()} == \
            {n: [h[k] for k in usage] for n, h in (await api.hosts()).items()}
