"""What the Neutron API checks in a request before it becomes a command: policy (owner,
writer), provider and subnet values, DNS servers and host routes, port bodies and the
fixed IPs they ask for; each refusal as Neutron words it."""

from __future__ import annotations

import msgspec

from actors import ipam
from actors.network_views import NetworkView, SubnetView
from actors.subnet import CreateSubnet, HostRoute
from gateway import network_docs as docs
from gateway.auth import AuthContext
from gateway.errors import ApiError


def bad(message: str, error_type: str = "HTTPBadRequest") -> ApiError:
    return ApiError("bad_request", message, error_type=error_type)


def writer(context: AuthContext, action: str) -> None:
    """A reader's write is refused (403), as Neutron's policy does."""
    if not context.is_admin and "member" not in context.roles:
        raise ApiError("forbidden", f"rule:{action} is disallowed by policy",
                       error_type="PolicyNotAuthorized")


def segmentation_id(value: int | str | None) -> int | None:
    """Neutron converts the segmentation id to an integer (the CLI sends a string)."""
    if value is None or isinstance(value, int):
        return value
    if not value.strip().isdigit():
        raise bad(f"Invalid input for provider:segmentation_id. Reason: '{value}' is not"
                   " an integer.")
    return int(value)


def owner(context: AuthContext, asked: str | None) -> str:
    """The project a new resource belongs to: the caller's, or (admin) the one asked for."""
    if asked and asked != context.project_id:
        if not context.is_admin:
            raise ApiError("forbidden", "(rule:create:project_id) is disallowed by policy",
                           error_type="PolicyNotAuthorized")
        return asked
    return context.project_id or ""


def owns(context: AuthContext, project_id: str, action: str) -> None:
    """Only the owner (or admin) changes a resource: a shared network's others may not."""
    if not context.is_admin and project_id != context.project_id:
        raise ApiError("forbidden", f"rule:{action} is disallowed by policy",
                       error_type="PolicyNotAuthorized")


def subnet_command(body: docs.SubnetBody, net: NetworkView,
                    context: AuthContext) -> CreateSubnet:
    if body.ip_version != 4:
        raise bad(f"Invalid input for ip_version. Reason: {body.ip_version} is not in "
                   "[4] (IPv6 subnets are not supported by this cloud).")
    if body.cidr is None:
        raise bad("Bad subnets request: a cidr must be specified in the absence of a "
                   "subnet pool.")
    gateway = None if body.gateway_ip is msgspec.UNSET else body.gateway_ip
    pools = None if body.allocation_pools is None else \
        [(p.start, p.end) for p in body.allocation_pools]
    try:
        gw, ranges = ipam.plan_subnet(body.cidr, gateway, pools,
                                      default_gateway=body.gateway_ip is msgspec.UNSET)
    except ipam.PlanError as exc:
        raise bad(str(exc)) from None
    check_dns(body.dns_nameservers)
    check_routes(body.host_routes)
    return CreateSubnet(
        network_id=net.id, project_id=owner(context, body.project_id or body.tenant_id),
        name=body.name, description=body.description, cidr=body.cidr, gateway_ip=gw,
        pools=ranges, enable_dhcp=body.enable_dhcp, dns_nameservers=body.dns_nameservers,
        host_routes=[HostRoute(destination=r.destination, nexthop=r.nexthop)
                     for r in body.host_routes])


def check_dns(servers: list[str]) -> None:
    """Neutron's ``dns_nameservers`` validation: addresses, each once."""
    try:
        for server in servers:
            ipam.parse_ip(server, "dns_nameservers")
    except ipam.PlanError as exc:
        raise bad(str(exc)) from None
    for server in servers:
        if servers.count(server) > 1:
            raise bad(f"Invalid input for dns_nameservers. Reason: Duplicate nameserver "
                       f"'{server}'.")


def check_routes(routes: list[docs.RouteBody]) -> None:
    """Neutron's ``host_routes`` validation: a CIDR destination and an address nexthop,
    each route once."""
    seen: set[tuple[str, str]] = set()
    for route in routes:
        try:
            ipam.parse_cidr(route.destination)
        except ipam.PlanError:
            raise bad(f"Invalid input for host_routes. Reason: '{route.destination}' is "
                       "not a valid IP subnet.") from None
        try:
            ipam.parse_ip(route.nexthop, "host_routes")
        except ipam.PlanError as exc:
            raise bad(str(exc)) from None
        key = (route.destination, route.nexthop)
        if key in seen:
            raise bad(f"Invalid input for host_routes. Reason: Duplicate hostroute "
                       f"'{{'destination': '{route.destination}', 'nexthop': "
                       f"'{route.nexthop}'}}'.")
        seen.add(key)


def check_port_body(body: docs.PortBody, context: AuthContext) -> None:
    if body.host_id is not None and not context.is_admin:
        raise ApiError("forbidden", "(rule:create_port:binding:host_id) is disallowed by "
                       "policy", error_type="PolicyNotAuthorized")
    if body.host_id:
        raise bad("Invalid input for binding:host_id: ports are bound by the compute "
                   "service when a server uses them.")
    if body.vnic_type != "normal":
        raise bad(f"Invalid input for binding:vnic_type. Reason: '{body.vnic_type}' is not"
                   " in ['normal'].")


def fixed_ip_requests(asked: list[docs.FixedIpBody] | None, subnets: list[SubnetView],
                       network_id: str) -> list[tuple[str | None, str | None]] | None:
    """(subnet id, address or None) for each fixed IP asked for; an address without a
    subnet finds the network's subnet that contains it. None: nothing asked for."""
    if asked is None:
        return None
    out: list[tuple[str | None, str | None]] = []
    by_id = {s.id: s for s in subnets}
    for item in asked:
        if item.subnet_id is not None and item.subnet_id not in by_id:
            raise bad(f"Invalid input for operation: Failed to create port on network "
                       f"{network_id}, because fixed_ips included invalid subnet "
                       f"{item.subnet_id}.", "InvalidInput")
        if item.subnet_id is None and item.ip_address is None:
            raise bad("Invalid input for fixed_ips: each needs a subnet_id or an "
                       "ip_address.")
        subnet_id = item.subnet_id
        if subnet_id is None:
            assert item.ip_address is not None
            subnet_id = subnet_holding(item.ip_address, subnets, network_id)
        elif item.ip_address is not None:
            check_in_subnet(item.ip_address, by_id[subnet_id])
        out.append((subnet_id, item.ip_address))
    return out


def check_in_subnet(address: str, subnet: SubnetView) -> None:
    try:
        value = ipam.parse_ip(address)
    except ipam.PlanError as exc:
        raise bad(str(exc)) from None
    first, last = ipam.hosts(ipam.parse_cidr(subnet.cidr))
    if not first <= value <= last:
        raise bad(f"IP address {address} is not a valid IP for the specified subnet.",
                   "InvalidIpForSubnet")


def subnet_holding(address: str, subnets: list[SubnetView], network_id: str) -> str:
    try:
        value = ipam.parse_ip(address)
    except ipam.PlanError as exc:
        raise bad(str(exc)) from None
    for s in subnets:
        first, last = ipam.hosts(ipam.parse_cidr(s.cidr))
        if first <= value <= last:
            return s.id
    raise bad(f"IP address {address} is not a valid IP for any of the subnets on network "
               f"{network_id}.", "InvalidIpForNetwork")
