"""The real data plane driven by the cloud: networks and ports made and deleted through
the Networking API, ports bound to hosts as the boot saga binds them, and two real
HostDaemons whose pyroute2 drivers build the data plane inside two "host" namespaces
joined by a veth underlay. Nothing is handed to the drivers by the test: what they build
comes from the log, through the host network planner.

Each guest is a namespace whose veth stands in for the instance's tap: it is plugged as
a spawn plugs a port (the daemon's network sync, before the log knows the binding), then
the port is bound to that host. Network one (VXLAN) spans both hosts; network two has
the same subnet on host B only, so isolation is not a routing accident.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.hostnet import segment_spec
from actors.network_views import Where, read_networks, read_subnets
from actors.port import BindPort
from bus.routing import Names
from hostd.daemon import HostDaemon
from hostd.fake import FakeHypervisor
from hostd.net_pyroute2 import Pyroute2HostNetwork
from hostd.network import bridge_name
from schemas.hostnet import HostNetworkView, PortSpec, port_device
from tests.integration.test_dataplane_netns import DHCP_SCRIPT
from tests.support.cloud import Cloud, running_cloud
from tests.support.netns import in_ns, need_netns, remove_namespaces, sh, stop_dnsmasqs

pytestmark = pytest.mark.timeout(240)

NET = "/networking/v2.0"
HOSTS = {"host-a": "192.0.2.1", "host-b": "192.0.2.2"}


@dataclass
class Guest:
    ns: str
    host: str
    port: dict[str, Any]

    @property
    def ip(self) -> str:
        return str(self.port["fixed_ips"][0]["ip_address"])


@dataclass
class World:
    cloud: Cloud
    prefix: str
    state: Path
    script: Path
    drivers: dict[str, Pyroute2HostNetwork] = field(default_factory=dict)
    daemons: dict[str, HostDaemon] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    guests: dict[str, Guest] = field(default_factory=dict)
    nets: dict[str, str] = field(default_factory=dict)

    def host_ns(self, host: str) -> str:
        return f"{self.prefix}{host[-1]}"

    async def neutron(self, method: str, path: str, status: int, **body: Any) -> Any:
        token = await self.cloud.admin_token()
        async with self.cloud.http.request(method, self.cloud.url + NET + path,
                                           json=body or None,
                                           headers={"X-Auth-Token": token}) as resp:
            text = await resp.text()
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            return await resp.json(content_type=None) if text else None

    async def start_hostd(self, host: str) -> None:
        """A hostd for ``host`` with a new pyroute2 driver (a hostd (re)start)."""
        driver = await Pyroute2HostNetwork.open(
            netns=self.host_ns(host), underlay_ip=HOSTS[host], state_dir=self.state / host,
            dhcp_netns_prefix=f"{self.host_ns(host)}-d-")
        daemon = HostDaemon(self.cloud.bus, FakeHypervisor(), host, heartbeat_every=0.5,
                            reconcile_every=3600.0, network=driver)
        self.drivers[host], self.daemons[host] = driver, daemon
        self.tasks[host] = asyncio.create_task(daemon.run(), name=f"hostd-{host}")
        await until(lambda: daemon.sync is not None and daemon.sync.applied > 0,
                    f"{host}'s first network sync")

    async def stop_hostd(self, host: str) -> None:
        self.daemons[host].shutdown()
        await asyncio.wait_for(self.tasks.pop(host), 15)
        await self.drivers[host].close()

    async def quiet(self) -> None:
        """Until no host has applied a desired set for half a second."""
        last = -1
        while True:
            now = sum(d.sync.applied for d in self.daemons.values() if d.sync)
            if now == last:
                return
            last = now
            await asyncio.sleep(0.5)

    async def guest(self, name: str, host: str, network: str) -> Guest:
        """A port on ``network`` (API), its guest namespace behind a veth named as the
        port's tap, plugged on ``host`` as a spawn plugs it, then bound there."""
        port = (await self.neutron("POST", "/ports", 201,
                                   port={"network_id": self.nets[network]}))["port"]
        await self.quiet()
        guest = Guest(ns=f"{self.prefix}{name}", host=host, port=port)
        device = port_device(port["id"])
        await sh("ip", "netns", "add", guest.ns)
        await in_ns(guest.ns, "ip", "link", "set", "lo", "up")
        await in_ns(self.host_ns(host), "ip", "link", "add", device, "type", "veth",
                    "peer", "name", "eth0", "netns", guest.ns)
        await in_ns(guest.ns, "ip", "link", "set", "eth0", "address", port["mac_address"],
                    "mtu", "1450", "up")
        self.guests[name] = guest
        net = (await read_networks(self.cloud.store, Where().eq("id", port["network_id"])))[0]
        subnets = await read_subnets(self.cloud.store, Where().eq("network_id", net.id))
        sync = self.daemons[host].sync
        assert sync is not None
        await sync.plug([segment_spec(net, subnets)], [PortSpec(
            port_id=port["id"], network_id=net.id, mac=port["mac_address"],
            ips=(guest.ip,), device=device)])
        reply = await self.cloud.client.call("port", port["id"], BindPort(
            host_id=host, device_id=str(uuid.uuid4())))
        assert reply.ok, reply
        return guest

    async def dhcp(self, name: str) -> str:
        out = await in_ns(self.guests[name].ns, "udhcpc", "-i", "eth0", "-f", "-q", "-n",
                          "-t", "5", "-T", "2", "-s", str(self.script), timeout=60)
        line = next(ln for ln in out.splitlines() if ln.startswith("LEASE "))
        return dict(kv.split("=", 1) for kv in line.split()[1:])["ip"]

    async def pings(self, name: str, address: str, *, within: int = 6) -> bool:
        out = await in_ns(self.guests[name].ns, "busybox", "ping", "-c", "2", "-w",
                          str(within), address, check=False)
        return " 0% packet loss" in out


async def until(check: Any, what: str, timeout: float = 30.0) -> None:
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
        await asyncio.sleep(0.1)


async def underlay(world: World) -> None:
    for host in HOSTS:
        await sh("ip", "netns", "add", world.host_ns(host))
        await in_ns(world.host_ns(host), "ip", "link", "set", "lo", "up")
    a, b = (world.host_ns(h) for h in HOSTS)
    await in_ns(a, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0",
                "netns", b)
    for host, ip in HOSTS.items():
        await in_ns(world.host_ns(host), "ip", "addr", "add", f"{ip}/24", "dev", "ul0")
        await in_ns(world.host_ns(host), "ip", "link", "set", "ul0", "up")


async def build(world: World) -> None:
    await underlay(world)
    for host in HOSTS:
        await world.start_hostd(host)
    for name, pool in (("one", "10.10.0.10"), ("two", "10.10.0.100")):
        net = (await world.neutron("POST", "/networks", 201, network={"name": name}))
        world.nets[name] = net["network"]["id"]
        await world.neutron("POST", "/subnets", 201, subnet={  # one subnet, distinct pools
            "network_id": world.nets[name], "cidr": "10.10.0.0/24", "ip_version": 4,
            "allocation_pools": [{"start": pool, "end": pool[:-1] + "9"}]})
    await world.guest("g1", "host-a", "one")
    await world.guest("g2", "host-b", "one")
    await world.guest("g3", "host-b", "two")
    await world.quiet()


@pytest.fixture
async def world(tmp_path: Path, bus_names: Names) -> AsyncIterator[World]:
    """The built world; every namespace, link and dnsmasq is gone afterwards, also when
    building or the test failed."""
    need_netns("udhcpc", "busybox")
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    prefix = f"odc{uuid.uuid4().hex[:6]}"
    async with running_cloud("embedded", tmp_path, names=bus_names, hosts=0) as cloud:
        built = World(cloud=cloud, prefix=prefix, state=tmp_path / "state", script=script)
        try:
            await build(built)
            yield built
        finally:
            for host in list(built.tasks):
                await built.stop_hostd(host)
            for host in HOSTS:
                stop_dnsmasqs(built.state / host)
            remove_namespaces(prefix)


def indexes(view: HostNetworkView) -> dict[str, int]:
    return {name: d.index for name, d in view.devices.items()}


async def test_guests_get_their_ports_addresses_ping_and_networks_stay_apart(
        world: World) -> None:
    """Each guest's DHCP lease is its Neutron port's address (one DHCP server for
    network one, reached over the tunnel from the other host); g1 (host A) and g2
    (host B) ping each other over VXLAN; g3 (network two, same subnet, host B) reaches
    neither, and is not reached."""
    for name, guest in world.guests.items():
        assert await world.dhcp(name) == guest.ip, name
    g1, g2, g3 = (world.guests[n].ip for n in ("g1", "g2", "g3"))
    assert await world.pings("g1", g2)
    assert await world.pings("g2", g1)
    assert not await world.pings("g3", g2, within=3)
    assert not await world.pings("g3", g1, within=3)
    assert not await world.pings("g1", g3, within=3)


async def test_a_hostd_restart_leaves_the_data_plane_unchanged(world: World) -> None:
    """Both hostds stop and start again with new drivers: their first sync from the log
    removes nothing, every device keeps its ifindex, and the guests still ping and renew."""
    for name in world.guests:
        await world.dhcp(name)
    before = {h: await d.inspect() for h, d in world.drivers.items()}
    for host in HOSTS:
        await world.stop_hostd(host)
        await world.start_hostd(host)
    await world.quiet()
    after = {h: await d.inspect() for h, d in world.drivers.items()}
    assert {h: indexes(v) for h, v in after.items()} == {
        h: indexes(v) for h, v in before.items()}
    assert after == before
    assert await world.pings("g1", world.guests["g2"].ip)
    assert await world.dhcp("g2") == world.guests["g2"].ip


async def test_an_api_port_delete_cuts_its_guest_off(world: World) -> None:
    """DELETE /ports/{g2}: host B unplugs g2's tap without waiting for a reconcile, its
    DHCP entry goes, g1 no longer reaches it; g3 on the same host keeps its tap."""
    await world.dhcp("g1")
    await world.dhcp("g2")
    g2 = world.guests["g2"]
    assert await world.pings("g1", g2.ip)
    await world.neutron("DELETE", f"/ports/{g2.port['id']}", 204)
    device = port_device(g2.port["id"])

    async def unplugged() -> bool:
        return device not in (await world.drivers["host-b"].inspect()).devices

    await until(unplugged, "g2's tap removed from host B")
    assert not await world.pings("g1", g2.ip, within=3)
    views = [await d.inspect() for d in world.drivers.values()]
    served = [v.dhcp[world.nets["one"]] for v in views if world.nets["one"] in v.dhcp]
    assert len(served) == 1
    assert g2.port["mac_address"] not in {h.mac for h in served[0].hosts}
    b = await world.drivers["host-b"].inspect()
    assert b.devices[port_device(world.guests["g3"].port["id"])].master == bridge_name(
        world.nets["two"])
