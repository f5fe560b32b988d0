"""Servers on tenant networks, on a whole in-process cloud (fake hosts with the recording
network driver), on embedded and on PostgreSQL + RabbitMQ: the boot creates or binds the
ports, hostd plugs them, ``addresses`` shows them; deleting the server deletes the ports
it made and unbinds the ones it was given; a network that cannot serve the boot ends it in
ERROR with every claim released; bad networks are refused with nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.host_views import read_hosts
from actors.instance import Deadlines
from actors.port import CreatePort, ReservePort
from bus.routing import Names
from hostd.net_fake import FakeHostNetwork
from schemas.hostnet import port_device
from tests.integration.test_servers_api import Api
from tests.support.cloud import running_cloud

NET = "/networking/v2.0"
DEADLINES = Deadlines(scheduling=5, spawning=10, powering_off=5, powering_on=5,
                      rebooting=5, deleting=5, stop_timeout=1)


class NetApi(Api):
    """The servers test client plus the Neutron calls a boot needs."""

    async def neutron(self, method: str, path: str, token: str, status: int,
                      **kw: Any) -> Any:
        async with self.cloud.http.request(method, self.url(NET + path), json=kw.get("json"),
                                           headers={"X-Auth-Token": token}) as resp:
            text = await resp.text()
            assert resp.status == status, f"{resp.status} {text}"
            return await resp.json(content_type=None) if text else None

    async def network(self, token: str, cidr: str | None = "10.0.0.0/24") -> str:
        net = (await self.neutron("POST", "/networks", token, 201,
                                  json={"network": {"name": "private"}}))["network"]
        if cidr is not None:
            await self.neutron("POST", "/subnets", token, 201, json={"subnet": {
                "network_id": net["id"], "cidr": cidr, "ip_version": 4}})
        return str(net["id"])

    async def ports(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return list((await self.neutron("GET", f"/ports?{query}", self.admin, 200))["ports"])

    async def settle(self, server_id: str, token: str) -> dict[str, Any]:
        for _ in range(200):
            server = await self.show(server_id, token)
            if server["status"] != "BUILD":
                return dict(server)
            await asyncio.sleep(0.05)
        raise AssertionError(f"server {server_id} still in BUILD")

    def plugged(self, device: str) -> list[str]:
        """The hosts whose recording network driver has ``device`` on a bridge."""
        found = []
        for daemon in self.cloud.daemons:
            network = daemon.network
            assert isinstance(network, FakeHostNetwork)
            if device in network.host.devices:
                found.append(daemon.host)
        return found


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[NetApi]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=2,
                             deadlines=DEADLINES, **extra) as cloud:
        yield await NetApi(cloud).setup()


async def until(check: Any, what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_server_on_a_network_gets_a_bound_active_port_and_its_address(
        api: NetApi) -> None:
    """``networks: [{uuid}]``: the boot creates a port (device the server, owner
    compute:nova), binds it to the server's host, hostd plugs its tap there and the port
    turns ACTIVE; ``addresses`` lists the fixed IP with version, type and MAC. Deleting
    the server deletes the port and its tap."""
    net = await api.network(api.member)
    sid = await api.boot(api.member, networks=[{"uuid": net}])
    server = await api.settle(sid, api.member)
    assert server["status"] == "ACTIVE", server
    (port,) = await api.ports(device_id=sid)
    assert port["device_owner"] == "compute:nova" and port["network_id"] == net
    ip = port["fixed_ips"][0]["ip_address"]
    assert server["addresses"] == {"private": [{
        "version": 4, "addr": ip, "OS-EXT-IPS:type": "fixed",
        "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]}]}

    async def active() -> bool:
        (p,) = await api.ports(device_id=sid)
        return bool(p["status"] == "ACTIVE")

    await until(active, "the port ACTIVE")
    (port,) = await api.ports(device_id=sid)
    host = (await api.show(sid))["OS-EXT-SRV-ATTR:host"]
    assert port["binding:host_id"] == host
    assert api.plugged(port_device(port["id"])) == [host]
    await api.req("DELETE", f"/servers/{sid}", api.member, status=204)

    async def gone() -> bool:
        return not await api.ports(device_id=sid) and not api.plugged(
            port_device(port["id"]))

    await until(gone, "the server's port deleted and unplugged")


async def test_a_given_port_is_bound_then_unbound_and_kept(api: NetApi) -> None:
    """``networks: [{port}]``: the user's port is used as it is (its address shows in
    ``addresses``); deleting the server unbinds it and the port stays. A port that is
    already in use is refused with 409."""
    net = await api.network(api.member)
    port = (await api.neutron("POST", "/ports", api.member, 201,
                              json={"port": {"network_id": net}}))["port"]
    sid = await api.boot(api.member, networks=[{"port": port["id"]}])
    server = await api.settle(sid, api.member)
    assert server["status"] == "ACTIVE", server
    assert [a["addr"] for a in server["addresses"]["private"]] == [
        port["fixed_ips"][0]["ip_address"]]
    await api.req("POST", "/servers", api.member, status=409, json={"server": {
        "name": "vm2", "imageRef": api.image, "flavorRef": "1",
        "networks": [{"port": port["id"]}]}})
    await api.req("DELETE", f"/servers/{sid}", api.member, status=204)

    async def unbound() -> bool:
        found = await api.ports(id=port["id"])
        return len(found) == 1 and found[0]["device_id"] == "" and \
            found[0]["binding:host_id"] == ""

    await until(unbound, "the given port unbound and kept")


async def test_a_network_that_cannot_serve_ends_the_boot_in_error_releasing_all(
        api: NetApi) -> None:
    """No subnet, and a pool with no address left: each boot ends in ERROR with a fault
    that names the cause, no host keeps a claim, and no port is left behind."""
    bare = await api.network(api.member, cidr=None)
    sid = await api.boot(api.member, networks=[{"uuid": bare}])
    server = await api.settle(sid, api.member)
    assert server["status"] == "ERROR" and "no subnet" in server["fault"]["message"]
    tiny = await api.network(api.member, cidr="10.9.0.0/30")  # .1 gateway, .2 DHCP port
    sid = await api.boot(api.member, networks=[{"uuid": tiny}])
    server = await api.settle(sid, api.member)
    assert server["status"] == "ERROR", server
    assert "No more IP addresses" in server["fault"]["message"], server["fault"]
    assert await api.ports(device_id=sid) == []
    for host in await read_hosts(api.cloud.store):
        assert host.used.vcpus == 0, host


async def test_bad_networks_are_refused_and_write_nothing(api: NetApi) -> None:
    """A network or port that does not exist (or another project's) is 400, a malformed
    entry or fixed_ip 400, several networks for ``auto`` 409; none of the refused
    requests appends any event."""
    other_net = await api.network(api.other)
    head = await api.cloud.settled()
    bad = [
        [{"uuid": "8f2c1e63-1111-4111-8111-111111111111"}],
        [{"uuid": other_net}],
        [{"port": "8f2c1e63-2222-4222-8222-222222222222"}],
        [{"uuid": "not-a-uuid"}],
        [{"uuid": other_net, "fixed_ip": "10.0.0.500"}],
        [{}],
    ]
    refused = []
    for networks in bad:
        await api.req("POST", "/servers", api.member, status=400, json={"server": {
            "name": "vm", "imageRef": api.image, "flavorRef": "1", "networks": networks}})
        refused.append(api.last_request)
    assert await api.cloud.caused(head, refused) == []
    await api.network(api.member)
    await api.network(api.member)
    await api.req("POST", "/servers", api.member, status=409, json={"server": {
        "name": "vm", "imageRef": api.image, "flavorRef": "1", "networks": "auto"}})


async def test_concurrent_boots_given_one_port_leave_it_to_exactly_one(api: NetApi) -> None:
    """Five boots given the same free port at once: exactly one is accepted (the port
    is reserved for it, then bound), the others get 409 and create no server."""
    net = await api.network(api.member)
    port = (await api.neutron("POST", "/ports", api.member, 201,
                              json={"port": {"network_id": net}}))["port"]

    async def boot(i: int) -> int:
        status, _ = await api.req("POST", "/servers", api.member, json={"server": {
            "name": f"race{i}", "imageRef": api.image, "flavorRef": "1",
            "networks": [{"port": port["id"]}]}})
        return status

    statuses = await asyncio.gather(*(boot(i) for i in range(5)))
    assert sorted(statuses) == [202, 409, 409, 409, 409], statuses
    (sid,) = [s["id"] for s in (await api.req(
        "GET", "/servers", api.member, status=200))[1]["servers"]]
    assert (await api.settle(sid, api.member))["status"] == "ACTIVE"
    (bound,) = await api.ports(id=port["id"])
    assert bound["device_id"] == sid


async def test_a_boot_refused_on_a_later_nic_leaves_no_port_behind(api: NetApi) -> None:
    """``[{uuid: good}, {port: in use}]`` is 409 and ``[{uuid: good}, {uuid: unknown}]``
    400; neither leaves a port on the good network (the first NIC's port is deleted),
    and the in-use port keeps its server."""
    net = await api.network(api.member)
    port = (await api.neutron("POST", "/ports", api.member, 201,
                              json={"port": {"network_id": net}}))["port"]
    sid = await api.boot(api.member, networks=[{"port": port["id"]}])
    assert (await api.settle(sid, api.member))["status"] == "ACTIVE"
    before = {p["id"] for p in await api.ports(network_id=net)}
    for networks, status in (
            ([{"uuid": net}, {"port": port["id"]}], 409),
            ([{"uuid": net}, {"uuid": "8f2c1e63-1111-4111-8111-111111111111"}], 400)):
        await api.req("POST", "/servers", api.member, status=status, json={"server": {
            "name": "vm", "imageRef": api.image, "flavorRef": "1", "networks": networks}})
    assert {p["id"] for p in await api.ports(network_id=net)} == before
    (kept,) = await api.ports(id=port["id"])
    assert kept["device_id"] == sid


@pytest.fixture
async def short_lease_api(backends: tuple[str, dict[str, Any]], bus_names: Names,
                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                          ) -> AsyncIterator[NetApi]:
    monkeypatch.setenv("ORRERY_NETWORK_HOLD_LEASE", "1")
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=1,
                             deadlines=DEADLINES, **extra) as cloud:
        yield await NetApi(cloud).setup()


async def test_ports_taken_for_a_server_that_never_comes_go_back(
        short_lease_api: NetApi) -> None:
    """As if the API died between taking the ports and creating the server: a user's port
    reserved for it is freed, and a port made for it is deleted, once the lease has run
    out and the instance says it has no such server. A real server keeps its port."""
    api = short_lease_api
    net = await api.network(api.member)
    given = (await api.neutron("POST", "/ports", api.member, 201,
                               json={"port": {"network_id": net}}))["port"]
    ghost = "0a0b0c0d-1111-4111-8111-000000000001"
    reply = await api.cloud.client.call("port", given["id"], ReservePort(device_id=ghost))
    assert reply.ok, reply
    made = "0a0b0c0d-2222-4222-8222-000000000002"
    reply = await api.cloud.client.call("port", made, CreatePort(
        network_id=net, project_id=given["project_id"], mac_address="fa:16:3e:0a:0b:0c",
        device_id=ghost, device_owner="compute:nova", for_server=True))
    assert reply.ok, reply
    sid = await api.boot(api.member, networks=[{"uuid": net}])
    assert (await api.settle(sid, api.member))["status"] == "ACTIVE"

    async def given_back() -> bool:
        (port,) = await api.ports(id=given["id"])
        return port["device_id"] == "" and not await api.ports(id=made)

    await until(given_back, "the reserved port freed and the made one deleted")
    await asyncio.sleep(2.5)  # past the lease of the real server's port too
    (kept,) = await api.ports(device_id=sid)
    assert kept["status"] == "ACTIVE"
