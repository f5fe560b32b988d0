"""What hostd last applied of its host's desired network, by network, port and DHCP entry.

A full desired set (``hostd.network``, or a pull's answer) replaces it all, at the log
position it was read at; a delta (``hostd.network_delta``) changes single entries, each
only if no newer one was applied for the same key, so deltas that overtake each other
(several planners push) end where the log does. Networks are kept without their static
DHCP entries (``head``); the entries are kept per port, so a delta about one port
changes that port's entries and no other's. Pure bookkeeping: no IO.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas.hostnet import DesiredHostNetwork, DhcpChange, DhcpHost, NetworkSpec, PortSpec


def head(spec: NetworkSpec) -> NetworkSpec:
    """The spec without its static DHCP entries."""
    if spec.dhcp is None or not spec.dhcp.hosts:
        return spec
    return msgspec.structs.replace(spec, dhcp=msgspec.structs.replace(spec.dhcp, hosts=()))


def served_subnets(spec: NetworkSpec | None) -> tuple[str, ...] | None:
    """What decides which addresses have entries: the DHCP-enabled subnets of a network
    this host serves (None: it does not serve the network's DHCP)."""
    if spec is None or spec.dhcp is None:
        return None
    return tuple(sorted(s.subnet_id for s in spec.subnets if s.enable_dhcp))


def _key(host: DhcpHost) -> str:
    return host.port_id or f"mac:{host.mac.lower()}"


class NetState:
    """See the module. ``base`` is the position of the full set it started from."""

    def __init__(self, desired: DesiredHostNetwork, position: int) -> None:
        self.base = position
        self.networks: dict[str, NetworkSpec] = {}
        self.entries: dict[str, dict[str, tuple[DhcpHost, ...]]] = {}
        for spec in desired.networks:
            self.networks[spec.network_id] = head(spec)
            if spec.dhcp is not None:
                by_key: dict[str, list[DhcpHost]] = {}
                for h in spec.dhcp.hosts:
                    by_key.setdefault(_key(h), []).append(h)
                self.entries[spec.network_id] = {k: tuple(v) for k, v in by_key.items()}
        self.ports: dict[str, PortSpec] = {p.port_id: p for p in desired.ports}
        self._at: dict[str, int] = {}

    def fresh(self, key: str, position: int) -> bool:
        """Whether a change of ``key`` read at ``position`` is not older than the one
        applied (and records it as applied if so)."""
        if position < self._at.get(key, self.base):
            return False
        self._at[key] = position
        return True

    def spec(self, network_id: str) -> NetworkSpec:
        """The network as the host has it, with every static DHCP entry."""
        spec = self.networks[network_id]
        if spec.dhcp is None:
            return spec
        hosts = tuple(h for hs in self.entries.get(network_id, {}).values() for h in hs)
        return msgspec.structs.replace(spec, dhcp=msgspec.structs.replace(spec.dhcp,
                                                                          hosts=hosts))

    def set_network(self, spec: NetworkSpec) -> None:
        """Carry ``spec`` (a head); its entries stay while it keeps its DHCP server."""
        self.networks[spec.network_id] = spec
        if spec.dhcp is None:
            self.entries.pop(spec.network_id, None)
        else:
            self.entries.setdefault(spec.network_id, {})

    def drop_network(self, network_id: str) -> list[PortSpec]:
        """Forget the network and its ports; the ports it had."""
        self.networks.pop(network_id, None)
        self.entries.pop(network_id, None)
        ports = [p for p in self.ports.values() if p.network_id == network_id]
        for port in ports:
            del self.ports[port.port_id]
        return ports

    def change_entries(self, network_id: str, changes: Iterable[DhcpChange], position: int
                       ) -> tuple[list[DhcpHost], list[DhcpHost]]:
        """Apply the fresh ``changes`` to the network's entries: (added, removed)."""
        entries = self.entries.setdefault(network_id, {})
        added: list[DhcpHost] = []
        removed: list[DhcpHost] = []
        for change in changes:
            if not self.fresh(f"dhcp:{network_id}/{change.port_id}", position):
                continue
            old = set(entries.get(change.port_id, ()))
            new = set(change.hosts)
            removed += sorted(old - new, key=lambda h: (h.mac, h.ip))
            added += sorted(new - old, key=lambda h: (h.mac, h.ip))
            if change.hosts:
                entries[change.port_id] = change.hosts
            else:
                entries.pop(change.port_id, None)
        return added, removed

    def desired(self) -> DesiredHostNetwork:
        """Everything as one desired set (as long as the host has)."""
        return DesiredHostNetwork(networks=tuple(self.spec(n) for n in self.networks),
                                  ports=tuple(self.ports.values()))
