"""From the log to the hosts' networks, and hosts chosen by the networks they carry, on
a whole in-process cloud (two fake hosts with the recording network driver), embedded
and on PostgreSQL + RabbitMQ. Servers on a VXLAN network on both hosts make both carry
it with each other as peers and one of them serve its DHCP (its DHCP port ACTIVE there);
an API port delete reaches the host at once (tap and DHCP entry gone); the last port
leaving a host takes the network off it; a restarted hostd changes nothing; a stray tap
goes at the next reconcile; a VLAN network's servers avoid a host without 802.1Q."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.network import dhcp_port_id
from bus.routing import Names
from hostd.daemon import HostDaemon
from hostd.net_fake import FakeHost, FakeHostNetwork
from hostd.network import bridge_name, vxlan_name
from schemas.hostnet import port_device
from tests.integration.test_servers_networks import DEADLINES, NetApi
from tests.support.cloud import running_cloud

UNDERLAY = {"host-1": "192.0.2.1", "host-2": "192.0.2.2"}


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[NetApi]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=2,
                             deadlines=DEADLINES, **extra) as cloud:
        yield await NetApi(cloud).setup()


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str,
                timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


def fake(api: NetApi, host: str) -> FakeHostNetwork:
    daemon = next(d for d in api.cloud.daemons if d.host == host)
    assert isinstance(daemon.network, FakeHostNetwork)
    return daemon.network


async def two_servers(api: NetApi, net: str) -> tuple[list[str], list[dict[str, Any]]]:
    """One server on each host (the second goes where the first left more room)."""
    sids = []
    for name in ("vm1", "vm2"):
        sid = await api.boot(api.member, name=name, networks=[{"uuid": net}])
        assert (await api.settle(sid, api.member))["status"] == "ACTIVE"
        sids.append(sid)
    hosts = [(await api.show(s))["OS-EXT-SRV-ATTR:host"] for s in sids]
    assert sorted(hosts) == ["host-1", "host-2"], hosts
    ports = [(await api.ports(device_id=s))[0] for s in sids]
    return sids, ports


def peered(api: NetApi, net: str) -> bool:
    """Whether each host carries the network flooding to the other's underlay address."""
    return all(fake(api, h).host.devices.get(vxlan_name(net)) is not None
               and fake(api, h).host.devices[vxlan_name(net)].peers == {
                   ip for other, ip in UNDERLAY.items() if other != h}
               for h in UNDERLAY)


def dhcp_hosts(api: NetApi, net: str) -> list[str]:
    return [h for h in UNDERLAY if net in fake(api, h).host.dhcp]


async def test_a_network_on_two_hosts_peers_them_and_one_serves_its_dhcp(
        api: NetApi) -> None:
    """Both hosts carry the network, each flooding to the other's underlay address;
    exactly one runs its DHCP, with an entry per port; the DHCP port is bound there
    and ACTIVE."""
    net = await api.network(api.member)
    _, ports = await two_servers(api, net)
    await until(lambda: peered(api, net), "each host peering with the other")
    await until(lambda: len(dhcp_hosts(api, net)) == 1, "one DHCP server")
    (server,) = dhcp_hosts(api, net)
    entries = {(e.mac, e.ip) for e in fake(api, server).host.dhcp[net].hosts}
    assert {(p["mac_address"], p["fixed_ips"][0]["ip_address"]) for p in ports} <= entries

    async def dhcp_port_active() -> bool:
        (port,) = await api.ports(id=dhcp_port_id(net))
        return bool(port["status"] == "ACTIVE" and port["binding:host_id"] == server)

    await until(dhcp_port_active, "the DHCP port ACTIVE on its host")


async def test_an_api_port_delete_unplugs_at_once_and_the_last_port_takes_the_network(
        api: NetApi) -> None:
    """Deleting a server's port through the API removes its tap and its DHCP entry on
    the hosts without waiting for a reconcile; deleting the servers then leaves neither
    host carrying the network, and the network can be deleted."""
    net = await api.network(api.member)
    for daemon in api.cloud.daemons:
        daemon.reconcile_every = 3600.0  # only pushes from here on
    sids, ports = await two_servers(api, net)
    await until(lambda: len(dhcp_hosts(api, net)) == 1, "one DHCP server")
    gone = ports[1]
    await api.neutron("DELETE", f"/ports/{gone['id']}", api.member, 204)
    device = port_device(gone["id"])
    await until(lambda: all(device not in fake(api, h).host.devices for h in UNDERLAY),
                "the deleted port's tap removed")
    # the DHCP server may move: the host that lost its port may have been serving
    await until(lambda: len(dhcp_hosts(api, net)) == 1 and all(
        gone["mac_address"] not in {e.mac for e in fake(api, h).host.dhcp[net].hosts}
        for h in dhcp_hosts(api, net)), "its DHCP entry removed")
    for sid in sids:
        await api.req("DELETE", f"/servers/{sid}", api.member, status=204)
    await until(lambda: all(bridge_name(net) not in fake(api, h).host.devices
                            and net not in fake(api, h).host.dhcp for h in UNDERLAY),
                "the network off both hosts")
    await api.neutron("DELETE", f"/networks/{net}", api.member, 204)


async def test_a_restarted_hostd_keeps_its_network_and_a_stray_tap_goes(
        api: NetApi) -> None:
    """A new daemon on the same host pulls the same desired network and removes
    nothing; a tap of Orrery's that no port wants is removed by the next reconcile."""
    net = await api.network(api.member)
    await two_servers(api, net)
    await until(lambda: len(dhcp_hosts(api, net)) == 1 and peered(api, net), "all synced")
    old = api.cloud.daemons[0]
    network = fake(api, old.host)
    await until(lambda: old.sync is not None and old.sync.applied > 0, "a first sync")
    before = await network.inspect()
    old.shutdown()
    network.host.add_device("otpdeadbeef000", "tap", master=bridge_name(net), up=True)
    again = HostDaemon(api.cloud.bus, api.cloud.hypervisors[0], old.host,
                       heartbeat_every=1.0, network=FakeHostNetwork(
                           network.host, bridge_mappings={"physnet1": "br-phys"},
                           underlay_ip=UNDERLAY[old.host]))
    task = asyncio.create_task(again.run())
    try:
        await until(lambda: again.sync is not None and again.sync.applied > 0,
                    "the new daemon's first sync")
        after = await network.inspect()
        assert "otpdeadbeef000" not in after.devices
        assert {k: (v.index, v.master, v.peers) for k, v in after.devices.items()} == {
            k: (v.index, v.master, v.peers) for k, v in before.devices.items()}
        assert after.dhcp == before.dhcp
    finally:
        again.shutdown()
        await asyncio.wait_for(task, 10)


def vlan_only_on_host_2(i: int) -> FakeHostNetwork:
    """Host 1's kernel has no 802.1Q (as this machine's); host 2's has."""
    lacks = ("vlan",) if i == 0 else ()
    return FakeHostNetwork(FakeHost(bridges=["br-phys"], kernel_lacks=lacks),
                           bridge_mappings={"physnet1": "br-phys"},
                           underlay_ip=f"192.0.2.{i + 1}")


@pytest.fixture
async def vlan_api(backends: tuple[str, dict[str, Any]], bus_names: Names,
                   tmp_path: Path) -> AsyncIterator[NetApi]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=2,
                             deadlines=DEADLINES, host_network=vlan_only_on_host_2,
                             **extra) as cloud:
        yield await NetApi(cloud).setup()


async def test_servers_on_a_vlan_network_go_to_the_host_with_802_1q(
        vlan_api: NetApi) -> None:
    """host-1 reports VLAN missing (802.1Q): every server of an admin's VLAN network
    lands on host-2 and its VLAN subinterface is built there; a server with no network
    may still go to host-1."""
    api = vlan_api
    net = (await api.neutron("POST", "/networks", api.admin, 201, json={"network": {
        "name": "vlan", "provider:network_type": "vlan",
        "provider:physical_network": "physnet1", "provider:segmentation_id": 120}}))["network"]
    await api.neutron("POST", "/subnets", api.admin, 201, json={"subnet": {
        "network_id": net["id"], "cidr": "10.20.0.0/24", "ip_version": 4}})
    sids = [await api.boot(api.admin, name=f"v{i}", networks=[{"uuid": net["id"]}])
            for i in range(3)]
    for sid in sids:
        assert (await api.settle(sid, api.admin))["status"] == "ACTIVE"
        assert (await api.show(sid))["OS-EXT-SRV-ATTR:host"] == "host-2"
    await until(lambda: any(d.kind == "vlan" for d in fake(api, "host-2").host.devices.values()),
                "the VLAN subinterface on host-2")
    assert not any(d.kind == "vlan" for d in fake(api, "host-1").host.devices.values())
    plain = await api.boot(api.admin, name="plain")
    assert (await api.settle(plain, api.admin))["status"] == "ACTIVE"
    assert (await api.show(plain))["OS-EXT-SRV-ATTR:host"] == "host-1"
