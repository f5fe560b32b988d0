"""The HostNetwork on Linux: bridges, VXLAN, 802.1Q and taps by netlink (pyroute2), DHCP by dnsmasq.

The driver works inside one network namespace, the host's (None: its own process's), so
that tests and several "hosts" on one machine each get their own. Each DHCP server runs
in a namespace of its own (``<dhcp_netns_prefix><network id>``, like Neutron's qdhcp-),
joined to the network's bridge by a veth: the host itself never gets an address on a
tenant network, so tenants cannot reach the host and overlapping subnets do not clash.

What the driver was asked to build is remembered (ports are plugged into networks it
has built); a new driver object learns it again from ``reconcile``, which leaves every
matching device untouched, so a hostd restart changes nothing on the data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import structlog
from pyroute2 import netns as pyroute2_netns

from hostd.dnsmasq import Dnsmasq
from hostd.net_links import Link, Links, is_up, link_data, link_kind
from hostd.network import (
    VXLAN_PORT,
    CapabilityMissing,
    HostNetworkError,
    UnknownNetwork,
    UnknownPhysicalNetwork,
    bridge_name,
    dhcp_device_name,
    dhcp_prefixlen,
    host_side_mac,
    network_devices,
    stray_devices,
    stray_dhcp,
    supports,
    validate_dhcp_addresses,
    validate_network,
    validate_port,
    vlan_name,
    vxlan_name,
)
from schemas.hostnet import (
    Capabilities,
    DesiredHostNetwork,
    DeviceView,
    DhcpHost,
    DhcpView,
    HostNetworkView,
    NetworkSpec,
    PortSpec,
    name_key,
    port_device,
)

log = structlog.get_logger(__name__)
_PROBES = ("oprbr", "oprvx", "oprvl")


class Pyroute2HostNetwork:
    """HostNetwork over netlink in namespace ``netns``.

    ``bridge_mappings`` maps a physical network to the operator's bridge for it;
    ``underlay_ip`` is this host's VXLAN tunnel endpoint (None: no VXLAN here);
    ``state_dir`` holds the dnsmasq files; ``call_timeout`` bounds each netlink call.
    """

    def __init__(self, links: Links, *, netns: str | None, underlay_ip: str | None,
                 bridge_mappings: Mapping[str, str], state_dir: Path,
                 dhcp_netns_prefix: str, dnsmasq_user: str = "root") -> None:
        self._links = links
        self.netns = netns
        self.underlay_ip = underlay_ip
        self.bridge_mappings = dict(bridge_mappings)
        self.dhcp_netns_prefix = dhcp_netns_prefix
        self._dnsmasq = Dnsmasq(state_dir, user=dnsmasq_user)
        self._lock = asyncio.Lock()
        self._networks: dict[str, NetworkSpec] = {}
        self._ports: dict[str, PortSpec] = {}
        self._caps: Capabilities | None = None

    @classmethod
    async def open(cls, *, netns: str | None = None, underlay_ip: str | None = None,
                   bridge_mappings: Mapping[str, str] | None = None,
                   state_dir: Path, dhcp_netns_prefix: str = "orrery-dhcp-",
                   dnsmasq_user: str = "root", call_timeout: float = 10.0,
                   ) -> Pyroute2HostNetwork:
        """A driver on a netlink socket in ``netns`` (which must exist)."""
        links = await Links.open(netns, timeout=call_timeout)
        return cls(links, netns=netns, underlay_ip=underlay_ip,
                   bridge_mappings=bridge_mappings or {}, state_dir=state_dir,
                   dhcp_netns_prefix=dhcp_netns_prefix, dnsmasq_user=dnsmasq_user)

    async def close(self) -> None:
        await self._links.close()

    # -- capabilities ------------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        if self._caps is None:
            async with self._lock:
                self._caps = await self._probe()
                log.info("network_capabilities", netns=self.netns,
                         caps=msgspec.to_builtins(self._caps))
        return self._caps

    async def _probe(self) -> Capabilities:
        """Try each device kind once on throwaway devices, and look for the physnets."""
        no_bridge = await self._probe_kind("oprbr", {"kind": "bridge"})
        no_vxlan = await self._probe_kind("oprvx", {"kind": "vxlan", "vxlan_id": 1})
        no_vlan = "needs bridge support" if no_bridge else await self._probe_kind(
            "oprvl", {"kind": "vlan", "link": await self._links.index("oprbr"), "vlan_id": 1})
        for name in reversed(_PROBES):
            await self._links.delete(name)
        physnets = tuple(sorted([p for p, dev in self.bridge_mappings.items()
                                 if await self._links.get(dev) is not None]))
        no_physnet = None if physnets else "no physical network bridge on this host"
        no_underlay = None if self.underlay_ip else "no underlay address configured"
        missing: dict[str, str] = {}
        return Capabilities(
            flat=_capable(missing, "flat", no_bridge, no_physnet),
            vxlan=_capable(missing, "vxlan", no_vxlan, no_underlay),
            vlan=_capable(missing, "vlan", no_vlan and f"802.1Q: {no_vlan}", no_physnet),
            physical_networks=physnets, missing=missing, underlay_ip=self.underlay_ip)

    async def _probe_kind(self, name: str, create: dict[str, object]) -> str | None:
        """None if the kernel makes this kind of device, else why not."""
        await self._links.delete(name)
        try:
            await self._links.ensure(name, str(create["kind"]), create=create)
        except CapabilityMissing:
            return f"the kernel has no {create['kind']} support"
        except HostNetworkError as exc:
            return str(exc)
        return None

    # -- networks ----------------------------------------------------------------------

    async def ensure_network(self, spec: NetworkSpec) -> None:
        validate_network(spec)
        caps = await self.capabilities()
        if not supports(caps, spec.type):
            raise CapabilityMissing(
                f"network {spec.network_id}: this host cannot carry {spec.type} networks: "
                f"{caps.missing.get(spec.type, 'unsupported')}", network_id=spec.network_id)
        async with self._lock:
            bridge = await self._ensure_segment(spec)
            if spec.dhcp is not None:
                await self._ensure_dhcp(spec, bridge)
            else:
                await self._remove_dhcp(spec.network_id)
            self._networks[spec.network_id] = spec

    async def _ensure_segment(self, spec: NetworkSpec) -> Link:
        """The bridge the network's ports hang on, with its tunnel or subinterface."""
        if spec.type == "flat":
            return await self._physnet_device(spec)
        bridge = await self._links.ensure(
            bridge_name(spec.network_id), "bridge",
            create={"kind": "bridge", "br_stp_state": 0, "br_forward_delay": 0})
        await self._links.configure(bridge, mtu=spec.mtu)
        if spec.type == "vxlan":
            await self._ensure_vxlan(spec, bridge["index"])
        else:
            lower = await self._physnet_device(spec)
            vlan = await self._links.ensure(
                vlan_name(spec.network_id), "vlan",
                create={"kind": "vlan", "link": lower["index"], "vlan_id": spec.segmentation_id},
                keep=lambda link: link_data(link, "vlan_id") == spec.segmentation_id
                and link.get("link") == lower["index"])
            await self._links.configure(vlan, master=bridge["index"], mtu=spec.mtu)
        return bridge

    async def _ensure_vxlan(self, spec: NetworkSpec, bridge_index: int) -> None:
        local = self.underlay_ip
        vxlan = await self._links.ensure(
            vxlan_name(spec.network_id), "vxlan",
            create={"kind": "vxlan", "vxlan_id": spec.segmentation_id, "vxlan_local": local,
                    "vxlan_port": VXLAN_PORT, "vxlan_learning": 1},
            keep=lambda link: link_data(link, "vxlan_id") == spec.segmentation_id
            and link_data(link, "vxlan_local") == local
            and link_data(link, "vxlan_port") == VXLAN_PORT)
        await self._links.configure(vxlan, master=bridge_index, mtu=spec.mtu)
        await self._links.set_flood_peers(vxlan["index"], spec.peers)

    async def _physnet_device(self, spec: NetworkSpec) -> Link:
        physnet = spec.physical_network or ""
        device = self.bridge_mappings.get(physnet)
        link = None if device is None else await self._links.get(device)
        if link is None:
            raise UnknownPhysicalNetwork(
                f"network {spec.network_id}: physical network {physnet!r} has no bridge "
                f"on this host ({device or 'not mapped'})", network_id=spec.network_id)
        return link

    async def remove_network(self, network_id: str) -> None:
        async with self._lock:
            for port in [p for p in self._ports.values() if p.network_id == network_id]:
                await self._remove_port(port.port_id, port.device)
            await self._remove_dhcp(network_id)
            for name in network_devices(network_id):
                await self._links.delete(name)
            self._networks.pop(network_id, None)

    async def set_peers(self, network_id: str, peers: Iterable[str]) -> None:
        async with self._lock:
            spec = self._network(network_id)
            if spec.type != "vxlan":
                return
            spec = msgspec.structs.replace(spec, peers=tuple(sorted(set(peers))))
            index = await self._links.index(vxlan_name(network_id))
            if index is None:
                raise UnknownNetwork(f"network {network_id} has no VXLAN device here",
                                     network_id=network_id)
            await self._links.set_flood_peers(index, spec.peers)
            self._networks[network_id] = spec

    def _network(self, network_id: str) -> NetworkSpec:
        spec = self._networks.get(network_id)
        if spec is None:
            raise UnknownNetwork(f"network {network_id} is not built on this host",
                                 network_id=network_id)
        return spec

    # -- DHCP --------------------------------------------------------------------------

    def dhcp_netns(self, network_id: str) -> str:
        """The namespace the network's DHCP server runs in."""
        return self.dhcp_netns_prefix + network_id

    async def _ensure_dhcp(self, spec: NetworkSpec, bridge: Link) -> None:
        assert spec.dhcp is not None
        ns = self.dhcp_netns(spec.network_id)
        host_end = dhcp_device_name(spec.network_id)
        ns_end = "odn" + name_key(spec.network_id)
        if ns not in await asyncio.to_thread(pyroute2_netns.listnetns):
            await asyncio.to_thread(pyroute2_netns.create, ns)
        veth = await self._links.get(host_end)
        if veth is None:
            veth = await self._links.ensure(host_end, "veth",
                                            create={"kind": "veth", "peer": ns_end})
        await self._links.move_to(ns_end, ns)
        await self._links.configure(veth, master=bridge["index"], mtu=spec.mtu)
        want = {(ip, dhcp_prefixlen(spec, ip)) for ip in spec.dhcp.ips}
        async with Links.opened(ns, timeout=self._links.timeout) as inside:
            lo = await inside.get("lo")
            if lo is not None:
                await inside.configure(lo)
            end = await inside.get(ns_end)
            if end is None:
                raise HostNetworkError(f"network {spec.network_id}: DHCP veth {ns_end} "
                                       f"missing in {ns}", network_id=spec.network_id)
            await inside.configure(end, mtu=spec.mtu, mac=spec.dhcp.mac)
            await inside.set_addresses(end["index"], want)
        await self._dnsmasq.ensure(spec, ns_end, ns)

    async def update_dhcp_hosts(self, network_id: str, add: Sequence[DhcpHost],
                                remove: Sequence[DhcpHost]) -> None:
        async with self._lock:
            spec = self._networks.get(network_id)
            if spec is None or spec.dhcp is None:
                raise UnknownNetwork(f"network {network_id}: no DHCP server here",
                                     network_id=network_id)
            validate_dhcp_addresses(spec, (h.ip for h in add))
            if not await asyncio.to_thread(self._dnsmasq.update_hosts, network_id, add,
                                           remove):
                raise UnknownNetwork(f"network {network_id}: its DHCP server is not running",
                                     network_id=network_id)

    async def _remove_dhcp(self, network_id: str) -> None:
        await self._dnsmasq.stop(network_id)
        await self._links.delete(dhcp_device_name(network_id))
        ns = self.dhcp_netns(network_id)
        if ns in await asyncio.to_thread(pyroute2_netns.listnetns):
            await asyncio.to_thread(pyroute2_netns.remove, ns)
            log.info("dhcp_netns_removed", netns=ns)

    async def _served(self) -> set[str]:
        """Networks with a DHCP server (or its namespace) of ours on this host."""
        prefix = self.dhcp_netns_prefix
        names = await asyncio.to_thread(pyroute2_netns.listnetns)
        return set(self._dnsmasq.served()) | {
            n[len(prefix):] for n in names if n.startswith(prefix)}

    # -- ports -------------------------------------------------------------------------

    async def ensure_port(self, port: PortSpec) -> None:
        validate_port(port)
        async with self._lock:
            spec = self._network(port.network_id)
            bridge_dev = (self.bridge_mappings.get(spec.physical_network or "", "")
                          if spec.type == "flat" else bridge_name(spec.network_id))
            bridge = await self._links.get(bridge_dev)
            if bridge is None:
                raise UnknownNetwork(f"network {spec.network_id} has no bridge here",
                                     network_id=spec.network_id)
            device = await self._links.get(port.device)
            if device is None:
                device = await self._links.ensure(
                    port.device, "tap", create={"kind": "tuntap", "mode": "tap"})
            await self._links.configure(device, master=bridge["index"], mtu=spec.mtu,
                                        mac=host_side_mac(port.mac))
            self._ports[port.port_id] = port
            log.info("port_plugged", port_id=port.port_id, device=port.device,
                     bridge=bridge_dev)

    async def remove_port(self, port_id: str, device: str | None = None) -> None:
        async with self._lock:
            await self._remove_port(port_id, device)

    async def _remove_port(self, port_id: str, device: str | None) -> None:
        known = self._ports.pop(port_id, None)
        name = device or (known.device if known else port_device(port_id))
        if await self._links.delete(name):
            log.info("port_unplugged", port_id=port_id, device=name)

    # -- reconcile and inspect ---------------------------------------------------------

    async def reconcile(self, desired: DesiredHostNetwork) -> tuple[str, ...]:
        """Build what is desired (carrying on past a network that fails, which is logged
        and raised at the end), then remove Orrery's devices and DHCP servers that are
        not desired."""
        failures: list[HostNetworkError] = []
        for spec in desired.networks:
            await _attempt(failures, self.ensure_network(spec), network_id=spec.network_id)
        for port in desired.ports:
            await _attempt(failures, self.ensure_port(port), network_id=port.network_id)
        removed = await self._remove_strays(desired)
        if failures:
            raise failures[0]
        return removed

    async def _remove_strays(self, desired: DesiredHostNetwork) -> tuple[str, ...]:
        async with self._lock:
            removed: list[str] = []
            for network_id in stray_dhcp(await self._served(), desired):
                await self._remove_dhcp(network_id)
                removed.append(f"dhcp:{network_id}")
            names = [link.get("ifname") for link in await self._links.dump()]
            for name in stray_devices(names, desired):
                if await self._links.delete(name):
                    removed.append(name)
            self._networks = {n.network_id: n for n in desired.networks
                              if n.network_id in self._networks}
            self._ports = {p.port_id: p for p in desired.ports if p.port_id in self._ports}
        if removed:
            log.info("host_network_strays_removed", netns=self.netns, removed=removed)
        return tuple(removed)

    async def inspect(self) -> HostNetworkView:
        links = await self._links.dump()
        names = {link["index"]: link.get("ifname") for link in links}
        devices = {}
        for link in links:
            view = await self._device_view(link, names)
            devices[view.name] = view
        dhcp = {}
        for network_id in sorted(await self._served()):
            dhcp[network_id] = await self._dhcp_view(network_id)
        return HostNetworkView(devices=devices, dhcp=dhcp)

    async def _device_view(self, link: Link, names: Mapping[int, str]) -> DeviceView:
        kind = link_kind(link)
        peers: tuple[str, ...] = ()
        if kind == "vxlan":
            peers = tuple(sorted(await self._links.flood_peers(link["index"])))
        return DeviceView(
            name=link.get("ifname"), index=link["index"], kind=kind,
            mac=link.get("address") or "", mtu=link.get("mtu"), up=is_up(link),
            master=names.get(link.get("master") or 0),
            vni=link_data(link, "vxlan_id") if kind == "vxlan" else None, peers=peers)

    async def _dhcp_view(self, network_id: str) -> DhcpView:
        ns = self.dhcp_netns(network_id)
        mac = ""
        ips: tuple[str, ...] = ()
        with contextlib.suppress(HostNetworkError):
            async with Links.opened(ns, timeout=self._links.timeout) as inside:
                end = await inside.get("odn" + name_key(network_id))
                if end is not None:
                    mac = end.get("address")
                    ips = tuple(sorted(ip for ip, _ in await inside.addresses(end["index"])))
        return DhcpView(network_id=network_id,
                        running=self._dnsmasq.running_pid(network_id) is not None,
                        mac=mac, ips=ips, hosts=self._dnsmasq.hosts(network_id))


def _capable(missing: dict[str, str], what: str, *reasons: str | None) -> bool:
    """Whether nothing stands in the way (every reason None); record the first reason."""
    for reason in reasons:
        if reason:
            missing[what] = reason
            return False
    return True


async def _attempt(failures: list[HostNetworkError], step: Awaitable[None], *,
                   network_id: str) -> None:
    """Run one reconcile step; a HostNetworkError is logged and kept, not raised."""
    try:
        await step
    except HostNetworkError as exc:
        log.warning("host_network_reconcile_failed", network_id=network_id,
                    error=type(exc).__name__, reason=str(exc))
        failures.append(exc)
