"""A recording HostNetwork: the pyroute2 driver's observable behaviour on an in-memory host.

``FakeHost`` stands for the kernel and the running dnsmasq processes (it outlives a
driver, as a real host outlives hostd); ``FakeHostNetwork`` is the driver, with the
same memory of what it was asked to build as the real one. Faults by constructor:
``kernel_lacks`` device kinds (e.g. ``("vlan",)`` like this machine's kernel) and
``fail_dhcp`` network ids whose DHCP server will not start. ``calls`` counts the
driver's calls by method name (so a test can tell an incremental change from a rebuild).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import msgspec
import structlog

from hostd.network import (
    CapabilityMissing,
    DhcpFailed,
    HostNetworkError,
    UnknownNetwork,
    UnknownPhysicalNetwork,
    bridge_name,
    changed_entries,
    dhcp_device_name,
    dhcp_entry,
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
    port_device,
)

log = structlog.get_logger(__name__)


class _Device(msgspec.Struct, kw_only=True):
    name: str
    index: int
    kind: str
    mac: str
    mtu: int = 1500
    up: bool = False
    master: str | None = None
    vni: int | None = None
    peers: set[str] = msgspec.field(default_factory=set)


class FakeHost:
    """The in-memory kernel: devices by name, and running DHCP servers by network."""

    def __init__(self, *, bridges: Iterable[str] = (), kernel_lacks: Iterable[str] = (),
                 fail_dhcp: Iterable[str] = ()) -> None:
        self.devices: dict[str, _Device] = {}
        self.dhcp: dict[str, DhcpView] = {}
        self.kernel_lacks = frozenset(kernel_lacks)
        self.fail_dhcp = frozenset(fail_dhcp)
        self._indexes = itertools.count(2)
        for name in bridges:
            self.add_device(name, "bridge", up=True)

    def add_device(self, name: str, kind: str = "other", *, master: str | None = None,
                   up: bool = False) -> None:
        """Make a device appear, as an operator or another program would."""
        index = next(self._indexes)
        self.devices[name] = _Device(name=name, index=index, kind=kind, up=up, master=master,
                                     mac=f"02:00:00:00:{index >> 8 & 255:02x}:{index & 255:02x}")

    def ensure(self, name: str, kind: str, *, vni: int | None = None) -> _Device:
        """The device if its kind (and VNI) match, else a new one in its place."""
        if kind in self.kernel_lacks:
            raise CapabilityMissing(f"create {name}: the kernel does not support it")
        device = self.devices.get(name)
        if device is None or device.kind != kind or device.vni != vni:
            self.delete(name)
            self.add_device(name, kind)
            device = self.devices[name]
            device.vni = vni
        return device

    def delete(self, name: str) -> bool:
        """Delete a device; its ports are released from it, as the kernel does."""
        if self.devices.pop(name, None) is None:
            return False
        for other in self.devices.values():
            if other.master == name:
                other.master = None
        return True


class FakeHostNetwork:
    """HostNetwork on a FakeHost; passes the same contract suite as Pyroute2HostNetwork."""

    def __init__(self, host: FakeHost | None = None, *, underlay_ip: str | None = "192.0.2.1",
                 bridge_mappings: Mapping[str, str] | None = None) -> None:
        self.bridge_mappings = dict(bridge_mappings or {})
        self.host = host or FakeHost(bridges=self.bridge_mappings.values())
        self.underlay_ip = underlay_ip
        self._lock = asyncio.Lock()
        self._networks: dict[str, NetworkSpec] = {}
        self._ports: dict[str, PortSpec] = {}
        self.calls: Counter[str] = Counter()

    async def close(self) -> None:
        return None

    async def capabilities(self) -> Capabilities:
        lacks = self.host.kernel_lacks
        physnets = tuple(sorted(p for p, dev in self.bridge_mappings.items()
                                if dev in self.host.devices))
        missing: dict[str, str] = {}
        for kind, reason in (
            ("flat", "no physical network bridge on this host" if not physnets else None),
            ("vxlan", "the kernel has no vxlan support" if "vxlan" in lacks else
             "no underlay address configured" if not self.underlay_ip else None),
            ("vlan", "802.1Q: the kernel has no vlan support" if "vlan" in lacks else
             "no physical network bridge on this host" if not physnets else None),
        ):
            if reason:
                missing[kind] = reason
        return Capabilities(flat="flat" not in missing, vxlan="vxlan" not in missing,
                            vlan="vlan" not in missing, physical_networks=physnets,
                            missing=missing, underlay_ip=self.underlay_ip)

    async def ensure_network(self, spec: NetworkSpec) -> None:
        self.calls["ensure_network"] += 1
        validate_network(spec)
        caps = await self.capabilities()
        if not supports(caps, spec.type):
            raise CapabilityMissing(
                f"network {spec.network_id}: this host cannot carry {spec.type} networks: "
                f"{caps.missing.get(spec.type, 'unsupported')}", network_id=spec.network_id)
        async with self._lock:
            bridge = self._ensure_segment(spec)
            if spec.dhcp is not None:
                self._ensure_dhcp(spec, bridge)
            else:
                self._remove_dhcp(spec.network_id)
            self._networks[spec.network_id] = spec

    def _ensure_segment(self, spec: NetworkSpec) -> str:
        if spec.type == "flat":
            return self._physnet_device(spec)
        bridge = self.host.ensure(bridge_name(spec.network_id), "bridge")
        _configure(bridge, mtu=spec.mtu)
        if spec.type == "vxlan":
            vxlan = self.host.ensure(vxlan_name(spec.network_id), "vxlan",
                                     vni=spec.segmentation_id)
            _configure(vxlan, master=bridge.name, mtu=spec.mtu)
            vxlan.peers = set(spec.peers)
        else:
            self._physnet_device(spec)
            vlan = self.host.ensure(vlan_name(spec.network_id), "vlan")
            _configure(vlan, master=bridge.name, mtu=spec.mtu)
        return bridge.name

    def _physnet_device(self, spec: NetworkSpec) -> str:
        physnet = spec.physical_network or ""
        device = self.bridge_mappings.get(physnet)
        if device is None or device not in self.host.devices:
            raise UnknownPhysicalNetwork(
                f"network {spec.network_id}: physical network {physnet!r} has no bridge "
                f"on this host ({device or 'not mapped'})", network_id=spec.network_id)
        return device

    def _ensure_dhcp(self, spec: NetworkSpec, bridge: str) -> None:
        assert spec.dhcp is not None
        veth = self.host.ensure(dhcp_device_name(spec.network_id), "veth")
        _configure(veth, master=bridge, mtu=spec.mtu)
        if spec.network_id in self.host.fail_dhcp:
            raise DhcpFailed(f"dnsmasq for {spec.network_id} failed: injected",
                             network_id=spec.network_id)
        self.host.dhcp[spec.network_id] = DhcpView(
            network_id=spec.network_id, running=True, mac=spec.dhcp.mac.lower(),
            ips=tuple(sorted(spec.dhcp.ips)),
            hosts=tuple(sorted((dhcp_entry(h) for h in spec.dhcp.hosts),
                               key=lambda h: h.mac.lower())))

    async def update_dhcp_hosts(self, network_id: str, add: Sequence[DhcpHost],
                                remove: Sequence[DhcpHost]) -> None:
        self.calls["update_dhcp_hosts"] += 1
        async with self._lock:
            spec, served = self._networks.get(network_id), self.host.dhcp.get(network_id)
            if spec is None or spec.dhcp is None or served is None:
                raise UnknownNetwork(f"network {network_id}: no DHCP server here",
                                     network_id=network_id)
            validate_dhcp_addresses(spec, (h.ip for h in add))
            self.host.dhcp[network_id] = msgspec.structs.replace(
                served, hosts=tuple(changed_entries(served.hosts, add, remove)))

    def _remove_dhcp(self, network_id: str) -> None:
        self.host.dhcp.pop(network_id, None)
        self.host.delete(dhcp_device_name(network_id))

    async def remove_network(self, network_id: str) -> None:
        async with self._lock:
            for port in [p for p in self._ports.values() if p.network_id == network_id]:
                self._remove_port(port.port_id, port.device)
            self._remove_dhcp(network_id)
            for name in network_devices(network_id):
                self.host.delete(name)
            self._networks.pop(network_id, None)

    async def set_peers(self, network_id: str, peers: Iterable[str]) -> None:
        async with self._lock:
            spec = self._network(network_id)
            if spec.type != "vxlan":
                return
            vxlan = self.host.devices.get(vxlan_name(network_id))
            if vxlan is None:
                raise UnknownNetwork(f"network {network_id} has no VXLAN device here",
                                     network_id=network_id)
            vxlan.peers = set(peers)
            self._networks[network_id] = msgspec.structs.replace(
                spec, peers=tuple(sorted(vxlan.peers)))

    def _network(self, network_id: str) -> NetworkSpec:
        spec = self._networks.get(network_id)
        if spec is None:
            raise UnknownNetwork(f"network {network_id} is not built on this host",
                                 network_id=network_id)
        return spec

    async def ensure_port(self, port: PortSpec) -> None:
        self.calls["ensure_port"] += 1
        validate_port(port)
        async with self._lock:
            spec = self._network(port.network_id)
            bridge = (self.bridge_mappings.get(spec.physical_network or "", "")
                      if spec.type == "flat" else bridge_name(spec.network_id))
            if bridge not in self.host.devices:
                raise UnknownNetwork(f"network {spec.network_id} has no bridge here",
                                     network_id=spec.network_id)
            device = self.host.devices.get(port.device)
            if device is None:
                device = self.host.ensure(port.device, "tap")
            _configure(device, master=bridge, mtu=spec.mtu, mac=host_side_mac(port.mac))
            self._ports[port.port_id] = port

    async def remove_port(self, port_id: str, device: str | None = None) -> None:
        async with self._lock:
            self._remove_port(port_id, device)

    def _remove_port(self, port_id: str, device: str | None) -> None:
        known = self._ports.pop(port_id, None)
        self.host.delete(device or (known.device if known else port_device(port_id)))

    async def reconcile(self, desired: DesiredHostNetwork) -> tuple[str, ...]:
        self.calls["reconcile"] += 1
        failures: list[HostNetworkError] = []
        for spec in desired.networks:
            try:
                await self.ensure_network(spec)
            except HostNetworkError as exc:
                failures.append(exc)
        for port in desired.ports:
            try:
                await self.ensure_port(port)
            except HostNetworkError as exc:
                failures.append(exc)
        removed = self._remove_strays(desired)
        if failures:
            raise failures[0]
        return removed

    def _remove_strays(self, desired: DesiredHostNetwork) -> tuple[str, ...]:
        removed: list[str] = []
        for network_id in stray_dhcp(self.host.dhcp, desired):
            self._remove_dhcp(network_id)
            removed.append(f"dhcp:{network_id}")
        for name in stray_devices(list(self.host.devices), desired):
            if self.host.delete(name):
                removed.append(name)
        self._networks = {n.network_id: n for n in desired.networks
                          if n.network_id in self._networks}
        self._ports = {p.port_id: p for p in desired.ports if p.port_id in self._ports}
        return tuple(removed)

    async def inspect(self) -> HostNetworkView:
        devices = {d.name: DeviceView(name=d.name, index=d.index, kind=d.kind, mac=d.mac,
                                      mtu=d.mtu, up=d.up, master=d.master, vni=d.vni,
                                      peers=tuple(sorted(d.peers)))
                   for d in self.host.devices.values()}
        return HostNetworkView(devices=devices, dhcp=dict(sorted(self.host.dhcp.items())))


def _configure(device: _Device, *, master: str | None = None, mtu: int | None = None,
               mac: str | None = None) -> None:
    """What Links.configure does: set master, MTU and MAC where given, bring it up."""
    if master is not None:
        device.master = master
    if mtu is not None:
        device.mtu = mtu
    if mac is not None:
        device.mac = mac.lower()
    device.up = True
