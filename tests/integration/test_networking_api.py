"""Neutron v2.0 over HTTP on a whole in-process cloud, on embedded and on PostgreSQL +
RabbitMQ: networks, subnets, ports, IPAM refusals, visibility, provider attributes, the
DHCP port, and bad input that leaves the log untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.network import dhcp_port_id
from bus.routing import Names
from tests.support.cloud import Cloud, running_cloud

NET = "/networking/v2.0"


class Api:
    """A cloud plus tokens: admin, a member and a reader of ``demo``, a member of
    ``other``."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.admin = self.member = self.other = self.reader = ""

    async def setup(self) -> Api:
        self.admin = await self.cloud.admin_token()
        self.member = await self.cloud.user("alice", "demo")
        self.reader = await self.cloud.user("rita", "demo", role="reader")
        self.other = await self.cloud.user("bob", "other")
        return self

    async def req(self, method: str, path: str, token: str, *, status: int | None = None,
                  **kw: Any) -> tuple[int, Any]:
        async with self.cloud.http.request(method, self.cloud.url + NET + path,
                                           headers={"X-Auth-Token": token}, **kw) as resp:
            text = await resp.text()
            if status is not None:
                assert resp.status == status, f"{resp.status} {text}"
            return resp.status, (await resp.json(content_type=None) if text else None)

    async def network(self, token: str, **body: Any) -> dict[str, Any]:
        _, doc = await self.req("POST", "/networks", token, status=201,
                                json={"network": {"name": "net1", **body}})
        return dict(doc["network"])

    async def subnet(self, token: str, network_id: str, cidr: str = "10.0.0.0/24",
                     **body: Any) -> dict[str, Any]:
        _, doc = await self.req("POST", "/subnets", token, status=201, json={"subnet": {
            "network_id": network_id, "cidr": cidr, "ip_version": 4, **body}})
        return dict(doc["subnet"])

    async def port(self, token: str, network_id: str, **body: Any) -> dict[str, Any]:
        _, doc = await self.req("POST", "/ports", token, status=201, json={"port": {
            "network_id": network_id, **body}})
        return dict(doc["port"])

    async def error(self, method: str, path: str, token: str, status: int,
                    **kw: Any) -> dict[str, Any]:
        """The NeutronError body of a refused request, which must append no event."""
        head = await self.cloud.head()
        _, body = await self.req(method, path, token, status=status, **kw)
        assert set(body) == {"NeutronError"}, body
        assert set(body["NeutronError"]) == {"type", "message", "detail"}
        await asyncio.sleep(0.05)
        assert await self.cloud.head() == head, "a refused request appended events"
        return dict(body["NeutronError"])


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, **extra) as cloud:
        yield await Api(cloud).setup()


async def test_network_subnet_port_lifecycle(api: Api) -> None:
    """A member creates a network (vxlan, mtu 1450, not shared, not external), a subnet
    (gateway .1, pool .2-.254, the DHCP port takes .2), a port (DOWN, .3, fa:16:3e MAC);
    lists and shows see them at once; deletes in order end with nothing left."""
    net = await api.network(api.member)
    assert net["status"] == "ACTIVE" and net["mtu"] == 1450 and net["shared"] is False
    assert net["router:external"] is False and net["subnets"] == []
    assert "provider:network_type" not in net
    sub = await api.subnet(api.member, net["id"])
    assert sub["gateway_ip"] == "10.0.0.1"
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    assert sub["enable_dhcp"] is True and sub["ip_version"] == 4
    port = await api.port(api.member, net["id"], name="p1")
    assert port["status"] == "DOWN" and port["mac_address"].startswith("fa:16:3e:")
    assert port["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.0.0.3"}]
    _, shown = await api.req("GET", f"/networks/{net['id']}", api.member, status=200)
    assert shown["network"]["subnets"] == [sub["id"]]
    _, ports = await api.req("GET", f"/ports?network_id={net['id']}", api.admin, status=200)
    owners = {p["device_owner"]: p for p in ports["ports"]}
    assert owners["network:dhcp"]["id"] == dhcp_port_id(net["id"])
    assert owners["network:dhcp"]["fixed_ips"][0]["ip_address"] == "10.0.0.2"
    _, mine = await api.req("GET", "/ports?fixed_ips=ip_address=10.0.0.3", api.member,
                            status=200)
    assert [p["id"] for p in mine["ports"]] == [port["id"]]
    await api.req("DELETE", f"/ports/{port['id']}", api.member, status=204)
    await api.req("DELETE", f"/subnets/{sub['id']}", api.member, status=204)
    await api.req("DELETE", f"/networks/{net['id']}", api.member, status=204)
    for collection in ("networks", "subnets", "ports"):
        _, body = await api.req("GET", f"/{collection}", api.admin, status=200)
        assert body[collection] == [], collection
