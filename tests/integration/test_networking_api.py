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
        self.last_request = ""  # the X-OpenStack-Request-Id of the last answer

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
            self.last_request = resp.headers["X-OpenStack-Request-Id"]
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
        head = await self.cloud.settled()
        _, body = await self.req(method, path, token, status=status, **kw)
        assert set(body) == {"NeutronError"}, body
        assert set(body["NeutronError"]) == {"type", "message", "detail"}
        written = await self.cloud.caused(head, [self.last_request])
        assert written == [], f"a refused request appended {written}"
        return dict(body["NeutronError"])


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=0, **extra) as cloud:
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


async def test_address_and_mac_refusals_change_nothing(api: Api) -> None:
    """Explicit address taken 409 IpAddressAlreadyAllocated, outside the subnet 400,
    duplicate MAC 409 MacAddressInUse, exhausted pool 409 IpAddressGenerationFailure;
    none appends an event, and a deleted port's address is handed out again."""
    net = await api.network(api.member)
    sub = await api.subnet(api.member, net["id"], cidr="10.1.0.0/29", enable_dhcp=False)
    first = await api.port(api.member, net["id"], mac_address="fa:16:3e:00:00:01",
                           fixed_ips=[{"ip_address": "10.1.0.2"}])
    err = await api.error("POST", "/ports", api.member, 409, json={"port": {
        "network_id": net["id"], "fixed_ips": [{"subnet_id": sub["id"],
                                                "ip_address": "10.1.0.2"}]}})
    assert err["type"] == "IpAddressAlreadyAllocated"
    err = await api.error("POST", "/ports", api.member, 400, json={"port": {
        "network_id": net["id"], "fixed_ips": [{"subnet_id": sub["id"],
                                                "ip_address": "10.9.0.2"}]}})
    assert err["type"] == "InvalidIpForSubnet"
    err = await api.error("POST", "/ports", api.member, 409, json={"port": {
        "network_id": net["id"], "mac_address": "FA:16:3E:00:00:01"}})
    assert err["type"] == "MacAddressInUse"
    taken = [await api.port(api.member, net["id"]) for _ in range(4)]  # .3 .. .6
    assert sorted(p["fixed_ips"][0]["ip_address"] for p in taken) == \
        ["10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    err = await api.error("POST", "/ports", api.member, 409,
                          json={"port": {"network_id": net["id"]}})
    assert err["type"] == "IpAddressGenerationFailure"
    await api.req("DELETE", f"/ports/{first['id']}", api.member, status=204)
    again = await api.port(api.member, net["id"])
    assert again["fixed_ips"][0]["ip_address"] == "10.1.0.2"


async def test_in_use_refusals(api: Api) -> None:
    """A network with a port (other than its DHCP port) is 409 NetworkInUse, a subnet
    with an allocated address 409 SubnetInUse; neither appends an event."""
    net = await api.network(api.member)
    sub = await api.subnet(api.member, net["id"])
    port = await api.port(api.member, net["id"])
    err = await api.error("DELETE", f"/networks/{net['id']}", api.member, 409)
    assert err["type"] == "NetworkInUse"
    err = await api.error("DELETE", f"/subnets/{sub['id']}", api.member, 409)
    assert err["type"] == "SubnetInUse"
    await api.req("DELETE", f"/ports/{port['id']}", api.member, status=204)
    await api.req("DELETE", f"/networks/{net['id']}", api.member, status=204)
    _, body = await api.req("GET", "/ports", api.admin, status=200)
    assert body["ports"] == []  # the DHCP port went with its network


@pytest.mark.parametrize("body, status", [
    ({"cidr": "10.0.0.1/24"}, 400),                                   # host bits set
    ({"cidr": "not-a-cidr"}, 400),
    ({"cidr": "10.0.0.0/24", "ip_version": 6}, 400),
    ({"cidr": "10.0.0.0/24", "allocation_pools": [{"start": "10.0.1.2",
                                                    "end": "10.0.1.9"}]}, 400),
    ({"cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.5",
      "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.9"}]}, 400),
    ({"cidr": "10.0.0.0/24", "bogus": 1}, 400),
])
async def test_bad_subnets_are_400_and_change_nothing(api: Api, body: dict[str, Any],
                                                      status: int) -> None:
    """Invalid CIDR, IPv6, a pool outside the CIDR, a gateway inside a pool and an unknown
    attribute are each 400 with no event."""
    net = await api.network(api.member)
    await api.error("POST", "/subnets", api.member, status,
                    json={"subnet": {"network_id": net["id"], **body}})


async def test_overlapping_subnet_is_400(api: Api) -> None:
    """A CIDR overlapping another subnet of the same network is 400 saying so; another
    network may reuse it."""
    net = await api.network(api.member)
    await api.subnet(api.member, net["id"], cidr="10.0.0.0/24")
    err = await api.error("POST", "/subnets", api.member, 400, json={"subnet": {
        "network_id": net["id"], "cidr": "10.0.0.128/25", "ip_version": 4}})
    assert "overlaps with another subnet" in err["message"]
    other = await api.network(api.member, name="net2")
    await api.subnet(api.member, other["id"], cidr="10.0.0.0/24")


async def test_visibility_and_roles(api: Api) -> None:
    """Another project's network is 404 to a member and invisible in lists; a shared one
    is visible; a reader cannot write (403); members cannot set provider attributes or
    shared (403); admin sees every network with its provider attributes."""
    mine = await api.network(api.member, name="mine")
    await api.error("GET", f"/networks/{mine['id']}", api.other, 404)
    err = await api.error("POST", "/networks", api.reader, 403,
                          json={"network": {"name": "x"}})
    assert err["type"] == "PolicyNotAuthorized"
    await api.error("POST", "/networks", api.member, 403, json={"network": {
        "name": "x", "provider:network_type": "vxlan"}})
    await api.error("POST", "/networks", api.member, 403,
                    json={"network": {"name": "x", "shared": True}})
    shared = await api.network(api.admin, name="public", shared=True)
    _, seen = await api.req("GET", "/networks", api.other, status=200)
    assert [n["id"] for n in seen["networks"]] == [shared["id"]]
    _, named = await api.req("GET", "/networks?name=mine&fields=id&fields=name",
                             api.member, status=200)
    assert named["networks"] == [{"id": mine["id"], "name": "mine"}]
    _, every = await api.req("GET", "/networks", api.admin, status=200)
    assert {n["id"] for n in every["networks"]} == {mine["id"], shared["id"]}
    assert all(n["provider:network_type"] == "vxlan" for n in every["networks"])


async def test_provider_attributes_and_segments(api: Api) -> None:
    """Admin: vxlan gets distinct VNIs from the range (or the one asked for; a taken one
    is 409), mtu 1450; flat on physnet1 mtu 1500, a second flat there is 409; vlan gets
    an id; a bulk create makes several networks at once."""
    a = await api.network(api.admin, **{"provider:network_type": "vxlan"})
    b = await api.network(api.admin, **{"provider:network_type": "vxlan"})
    assert a["provider:segmentation_id"] != b["provider:segmentation_id"]
    assert a["mtu"] == 1450 and a["provider:physical_network"] is None
    c = await api.network(api.admin, **{"provider:network_type": "vxlan",
                                        "provider:segmentation_id": 4000})
    assert c["provider:segmentation_id"] == 4000
    await api.error("POST", "/networks", api.admin, 409, json={"network": {
        "provider:network_type": "vxlan", "provider:segmentation_id": 4000}})
    flat = await api.network(api.admin, **{"provider:network_type": "flat",
                                           "provider:physical_network": "physnet1"})
    assert flat["mtu"] == 1500 and flat["provider:segmentation_id"] is None
    await api.error("POST", "/networks", api.admin, 409, json={"network": {
        "provider:network_type": "flat", "provider:physical_network": "physnet1"}})
    vlan = await api.network(api.admin, **{"provider:network_type": "vlan",
                                           "provider:physical_network": "physnet1"})
    assert vlan["provider:segmentation_id"] == 1
    _, bulk = await api.req("POST", "/networks", api.member, status=201, json={
        "networks": [{"name": "b1"}, {"name": "b2"}]})
    assert [n["name"] for n in bulk["networks"]] == ["b1", "b2"]
    await api.req("DELETE", f"/networks/{c['id']}", api.admin, status=204)
    again = await api.network(api.admin, **{"provider:network_type": "vxlan",
                                            "provider:segmentation_id": 4000})
    assert again["provider:segmentation_id"] == 4000


async def test_concurrent_port_creates_never_share_an_address(api: Api) -> None:
    """1,000 port creates on a /24, 50 at a time: at most 253 succeed (252 here: the
    DHCP port has one), no address twice, every other answer a clean 409."""
    net = await api.network(api.member)
    await api.subnet(api.member, net["id"])
    gate = asyncio.Semaphore(50)

    async def one() -> tuple[int, Any]:
        async with gate:
            return await api.req("POST", "/ports", api.member,
                                 json={"port": {"network_id": net["id"]}})

    results = await asyncio.gather(*(one() for _ in range(1000)))
    made = [b["port"] for s, b in results if s == 201]
    refused = [b for s, b in results if s != 201]
    assert len(made) == 252
    addresses = [p["fixed_ips"][0]["ip_address"] for p in made]
    assert len(set(addresses)) == len(addresses)
    assert len({p["mac_address"] for p in made}) == len(made)
    assert all(s in (201, 409) for s, _ in results)
    assert all(b["NeutronError"]["type"] == "IpAddressGenerationFailure" for b in refused)
