"""Neutron v2.0 representations, request bodies and list queries (no IO).

Representations follow the Networking API reference field for field for the extensions
`EXTENSIONS` lists (and no others): ``provider`` and ``binding`` attributes are shown
to admins only, as Neutron's default policy does. `select` applies ``fields=``.
Request bodies refuse attributes Neutron does not know (its "Unrecognized attribute").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from multidict import MultiMapping

from actors import ipam
from actors.network_views import NetworkView, PortView, SubnetView, Where
from gateway.errors import ApiError

Doc = dict[str, Any]
UPDATED = "2024-01-01T00:00:00-00:00"

#: (alias, name, description) of every extension this API really implements
EXTENSIONS: tuple[tuple[str, str, str], ...] = (
    ("provider", "Provider Network",
     "Expose mapping of virtual networks to physical networks"),
    ("external-net", "Neutron external network", "Adds external network attribute to "
     "network resource."),
    ("network-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external "
     "application"),
    ("security-group", "security-group", "The security groups extension."),
    ("standard-attr-description", "standard-attr-description", "Extension to add "
     "descriptions to standard attributes"),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display "
     "the revision number of neutron resources."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at "
     "fields to all Neutron resources that have Neutron standard attributes."),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id "
     "field is enabled."),
)


def extension_doc(alias: str, name: str, description: str) -> Doc:
    return {"alias": alias, "name": name, "description": description, "updated": UPDATED,
            "links": []}


# -- representations -----------------------------------------------------------------------


def network_doc(n: NetworkView, subnets: list[str], admin: bool) -> Doc:
    doc: Doc = {
        "id": n.id, "name": n.name, "description": n.description,
        "admin_state_up": n.admin_state_up, "status": "ACTIVE", "subnets": subnets,
        "shared": n.shared, "project_id": n.project_id, "tenant_id": n.project_id,
        "router:external": False, "mtu": n.mtu, "created_at": n.created_at,
        "updated_at": n.updated_at, "revision_number": n.revision,
    }
    if admin:
        doc["provider:network_type"] = n.network_type
        doc["provider:physical_network"] = n.physical_network
        doc["provider:segmentation_id"] = n.segmentation_id
    return doc


def subnet_doc(s: SubnetView) -> Doc:
    return {
        "id": s.id, "name": s.name, "description": s.description,
        "network_id": s.network_id, "project_id": s.project_id, "tenant_id": s.project_id,
        "ip_version": 4, "cidr": s.cidr, "gateway_ip": s.gateway_ip,
        "enable_dhcp": s.enable_dhcp, "allocation_pools": ipam.pool_docs(s.pools),
        "dns_nameservers": s.dns_nameservers,
        "host_routes": [msgspec.structs.asdict(r) for r in s.host_routes],
        "ipv6_address_mode": None, "ipv6_ra_mode": None, "subnetpool_id": None,
        "created_at": s.created_at, "updated_at": s.updated_at, "revision_number": s.revision,
    }


def port_doc(p: PortView, admin: bool) -> Doc:
    doc: Doc = {
        "id": p.id, "name": p.name, "description": p.description,
        "network_id": p.network_id, "project_id": p.project_id, "tenant_id": p.project_id,
        "mac_address": p.mac_address, "admin_state_up": p.admin_state_up,
        "status": p.status, "device_id": p.device_id, "device_owner": p.device_owner,
        "fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                      for f in p.fixed_ips],
        "security_groups": [] if p.device_owner.startswith("network:")
        else [default_group_id(p.project_id)],
        "binding:vnic_type": "normal", "created_at": p.created_at,
        "updated_at": p.updated_at, "revision_number": p.revision,
    }
    if admin:
        doc["binding:host_id"] = p.host_id
        doc["binding:profile"] = {}
        doc["binding:vif_details"] = {}
        doc["binding:vif_type"] = "tap" if p.host_id else "unbound"
    return doc


def default_group_id(project_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:default-sg:{project_id}"))


def security_group_doc(project_id: str) -> Doc:
    """A project's ``default`` group with Neutron's four default rules."""
    group = default_group_id(project_id)

    def rule(n: int, direction: str, ethertype: str, remote: str | None) -> Doc:
        return {"id": str(uuid.uuid5(uuid.UUID(group), f"rule-{n}")),
                "security_group_id": group, "direction": direction, "ethertype": ethertype,
                "protocol": None, "port_range_min": None, "port_range_max": None,
                "remote_ip_prefix": None, "remote_group_id": remote, "description": "",
                "project_id": project_id, "tenant_id": project_id, "revision_number": 0,
                "created_at": UPDATED, "updated_at": UPDATED}

    rules = [rule(0, "egress", "IPv4", None), rule(1, "egress", "IPv6", None),
             rule(2, "ingress", "IPv4", group), rule(3, "ingress", "IPv6", group)]
    return {"id": group, "name": "default", "description": "Default security group",
            "project_id": project_id, "tenant_id": project_id, "stateful": True,
            "security_group_rules": rules, "revision_number": 0,
            "created_at": UPDATED, "updated_at": UPDATED}


def select(doc: Doc, fields: list[str]) -> Doc:
    """``fields=`` (repeatable): only those keys (all when none is asked for)."""
    return {k: v for k, v in doc.items() if k in fields} if fields else doc


# -- request bodies ------------------------------------------------------------------------


class NetworkBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    shared: bool | None = None
    project_id: str | None = None
    tenant_id: str | None = None
    network_type: str | None = msgspec.field(default=None, name="provider:network_type")
    physical_network: str | None = msgspec.field(default=None,
                                                 name="provider:physical_network")
    segmentation_id: int | str | None = msgspec.field(default=None,
                                                      name="provider:segmentation_id")
    external: bool = msgspec.field(default=False, name="router:external")
    mtu: int | None = None
    availability_zone_hints: list[str] = []


class NetworkRequest(msgspec.Struct, forbid_unknown_fields=True):
    network: NetworkBody


class NetworksRequest(msgspec.Struct, forbid_unknown_fields=True):
    networks: list[NetworkBody]


class NetworkUpdateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    admin_state_up: bool | None = None
    shared: bool | None = None


class NetworkUpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    network: NetworkUpdateBody


class PoolBody(msgspec.Struct, forbid_unknown_fields=True):
    start: str
    end: str


class RouteBody(msgspec.Struct, forbid_unknown_fields=True):
    destination: str
    nexthop: str


class SubnetBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    network_id: str
    cidr: str | None = None
    ip_version: int = 4
    name: str = ""
    description: str = ""
    gateway_ip: str | msgspec.UnsetType | None = msgspec.UNSET
    allocation_pools: list[PoolBody] | None = None
    enable_dhcp: bool = True
    dns_nameservers: list[str] = []
    host_routes: list[RouteBody] = []
    project_id: str | None = None
    tenant_id: str | None = None


class SubnetRequest(msgspec.Struct, forbid_unknown_fields=True):
    subnet: SubnetBody


class SubnetUpdateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    enable_dhcp: bool | None = None
    dns_nameservers: list[str] | None = None
    host_routes: list[RouteBody] | None = None


class SubnetUpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    subnet: SubnetUpdateBody


class FixedIpBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    subnet_id: str | None = None
    ip_address: str | None = None


class PortBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    network_id: str
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    mac_address: str | None = None
    fixed_ips: list[FixedIpBody] | None = None
    device_id: str = ""
    device_owner: str = ""
    project_id: str | None = None
    tenant_id: str | None = None
    security_groups: list[str] | None = None
    host_id: str | None = msgspec.field(default=None, name="binding:host_id")
    vnic_type: str = msgspec.field(default="normal", name="binding:vnic_type")


class PortRequest(msgspec.Struct, forbid_unknown_fields=True):
    port: PortBody


class PortUpdateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    admin_state_up: bool | None = None
    device_id: str | None = None
    device_owner: str | None = None
    fixed_ips: list[FixedIpBody] | None = None
    security_groups: list[str] | None = None


class PortUpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    port: PortUpdateBody


# -- list queries --------------------------------------------------------------------------


def _bool(name: str, text: str) -> bool:
    low = text.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise ApiError("bad_request", f"Invalid input for {name}. Reason: '{text}' cannot be "
                   "converted to boolean.", error_type="HTTPBadRequest")


def values(query: MultiMapping[str], name: str) -> list[str]:
    return list(query.getall(name, []))


def filters(query: MultiMapping[str], where: Where,
            text: Iterable[tuple[str, str]], flags: Iterable[tuple[str, str]] = ()) -> Where:
    """Equality filters: ``(query name, column)`` text ones and boolean ones; several
    values of one name mean any of them."""
    for name, column in text:
        asked = values(query, name)
        if asked:
            where.any_of(column, asked)
    for name, column in flags:
        asked = values(query, name)
        if asked:
            where.any_of(column, sorted({int(_bool(name, v)) for v in asked}))
    return where


def fixed_ip_filters(query: MultiMapping[str], where: Where) -> Where:
    """``fixed_ips=ip_address=…`` / ``fixed_ips=subnet_id=…`` (repeatable, each one must
    match a fixed IP of the port)."""
    for item in values(query, "fixed_ips"):
        key, sep, value = item.partition("=")
        if not sep or key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise ApiError("bad_request", f"Invalid input for fixed_ips. Reason: '{item}' is"
                           " not of the form ip_address=... or subnet_id=....",
                           error_type="HTTPBadRequest")
        if key == "ip_address_substr":
            where.raw("id IN (SELECT port_id FROM net_port_ips WHERE ip_address LIKE {})",
                      f"%{value}%")
        else:
            where.raw(f"id IN (SELECT port_id FROM net_port_ips WHERE {key} = {{}})", value)
    return where
