"""Neutron v2.0 subset under ``/networking``: networks, subnets, ports, extensions, and the
read-only security-groups, floatingips and routers lists that openstacksdk asks for.

Writes are commands; each waits for the ``networking`` projection so the next read sees
it. The order of a port create: a MAC from the network (``network.add_port``), an
address from each subnet (``subnet.allocate``), then ``port.create`` with what was handed
out; on a definite refusal the hand-outs are released at once, and when the outcome is
unknown (a timeout) the owners' lease sweep settles them (`actors.holds`). A subnet
create registers its CIDR on the network first (overlap check), then creates the subnet
and, with DHCP, gives the network's DHCP port an address in it.

Visibility: a project sees its own networks and shared ones (and the subnets of those),
its own ports; admin sees all. Another project's resource is 404 as if absent; a
reader's write is 403; provider attributes are admin-only (403 for a member).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from aiohttp import web

from actors import ipam
from actors.client import ActorClient
from actors.holds import ReleaseHolds
from actors.hostnet import segment_spec
from actors.instance import NicInfo
from actors.network import (
    DHCP_OWNER,
    AddPort,
    AddSubnet,
    CreateNetwork,
    DeleteNetwork,
    UpdateNetwork,
    dhcp_port_id,
)
from actors.network_views import (
    PROJECTION_NAME,
    NetworkView,
    PortView,
    SubnetView,
    Where,
    read_networks,
    read_ports,
    read_subnets,
    subnet_ids_of,
)
from actors.port import CreatePort, DeletePort, FixedIp, ReservePort, UnbindPort, UpdatePort
from actors.segment import AllocateSegment, NetworkSettings, segment_id
from actors.subnet import Allocate, DeleteSubnet, HostRoute, UpdateSubnet
from bus.errors import CallTimeout
from gateway import network_docs as docs, network_rules as rules
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate
from gateway.errors import ApiError, ErrorCode
from gateway.json import decode, json_response, read_body, read_json
from gateway.middleware import REQUEST_ID
from schemas import Reply
from schemas.hostnet import NetworkSpec, port_device
from store.protocol import ProjectionStore


class NicUnavailable(Exception):
    """The network cannot give a server a port (no subnet, no free address, …)."""


log = structlog.get_logger("orrery.networking")

V2 = "/v2.0"
Doc = dict[str, Any]
#: the refusal types actors give, and the HTTP error each is
_TYPES: dict[str, ErrorCode] = {
    "NetworkInUse": "conflict", "SubnetInUse": "conflict", "PortInUse": "conflict",
    "MacAddressInUse": "conflict", "IpAddressGenerationFailure": "conflict",
    "IpAddressAlreadyAllocated": "conflict", "InvalidIpForSubnet": "bad_request",
    "InvalidInput": "bad_request",
    "NetworkNotFound": "not_found", "SubnetNotFound": "not_found",
    "PortNotFound": "not_found", "conflict": "conflict", "bad_request": "bad_request",
    "not_found": "not_found", "deadline_exceeded": "deadline_exceeded",
}


def _refused(reply: Reply) -> ApiError:
    kind = reply.error_type or ""
    # Neutron's own types are CamelCase; the generic codes take the webob class name
    return ApiError(_TYPES.get(kind, "internal"), reply.error,
                    error_type=kind if kind[:1].isupper() else None)


class Commands:
    """Calls to the networking actors; a refusal becomes the matching Neutron error."""

    def __init__(self, store: ProjectionStore, client: ActorClient, wait_timeout: float):
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout

    async def ask(self, request: web.Request, kind: str, actor_id: str,
                  command: msgspec.Struct) -> Reply:
        """The actor's Reply, refusals included (504 when it does not answer in time)."""
        try:
            return await self.client.call(kind, actor_id, command,
                                          correlation_id=request[REQUEST_ID])
        except CallTimeout as exc:
            raise ApiError("deadline_exceeded") from exc

    async def do(self, request: web.Request, kind: str, actor_id: str,
                 command: msgspec.Struct) -> Reply:
        reply = await self.ask(request, kind, actor_id, command)
        if not reply.ok:
            raise _refused(reply)
        return reply

    async def release(self, request: web.Request, kind: str, owner: str,
                      holder: str) -> None:
        """Give back what ``holder`` got from ``owner`` (best effort: the lease covers
        a release that is lost)."""
        try:
            await self.client.call(kind, owner, ReleaseHolds(holder=holder),
                                   correlation_id=request[REQUEST_ID])
        except CallTimeout:
            log.warning("release_timed_out", owner=f"{kind}:{owner}", holder=holder)

    async def seen(self, *replies: Reply) -> None:
        """Wait until the projection has folded every one of ``replies``."""
        position = max((r.position for r in replies), default=0)
        if position and not await self.store.wait_for_projection(
                PROJECTION_NAME, position, self.wait_timeout):
            raise ApiError("unavailable", "The networking projection is behind; try again.")


class NetworkingApi:
    """The network `ServiceApi`: Neutron v2.0 under ``/networking``."""

    service = "network"

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 settings: NetworkSettings | None = None, wait_timeout: float = 10.0) -> None:
        self.store = store
        self.settings = settings or NetworkSettings()
        self.cmd = Commands(store, client, wait_timeout)

    def register(self, router: ServiceRouter) -> None:
        router.get(f"{V2}/extensions", self.list_extensions)
        router.get(f"{V2}/extensions/{{alias}}", self.show_extension)
        router.get(f"{V2}/networks", self.list_networks)
        router.post(f"{V2}/networks", self.create_network)
        router.get(f"{V2}/networks/{{id}}", self.show_network)
        router.put(f"{V2}/networks/{{id}}", self.update_network)
        router.delete(f"{V2}/networks/{{id}}", self.delete_network)
        router.get(f"{V2}/subnets", self.list_subnets)
        router.post(f"{V2}/subnets", self.create_subnet)
        router.get(f"{V2}/subnets/{{id}}", self.show_subnet)
        router.put(f"{V2}/subnets/{{id}}", self.update_subnet)
        router.delete(f"{V2}/subnets/{{id}}", self.delete_subnet)
        router.get(f"{V2}/ports", self.list_ports)
        router.post(f"{V2}/ports", self.create_port)
        router.get(f"{V2}/ports/{{id}}", self.show_port)
        router.put(f"{V2}/ports/{{id}}", self.update_port)
        router.delete(f"{V2}/ports/{{id}}", self.delete_port)
        router.get(f"{V2}/security-groups", self.list_security_groups)
        router.get(f"{V2}/security-groups/{{id}}", self.show_security_group)
        router.get(f"{V2}/floatingips", self.empty("floatingips"))
        router.get(f"{V2}/routers", self.empty("routers"))

    # -- extensions and the empty collections ------------------------------------------

    async def list_extensions(self, request: web.Request) -> web.Response:
        await authenticate(request)
        return json_response({"extensions": [docs.extension_doc(*e) for e in docs.EXTENSIONS]})

    async def show_extension(self, request: web.Request) -> web.Response:
        await authenticate(request)
        alias = request.match_info["alias"]
        for ext in docs.EXTENSIONS:
            if ext[0] == alias:
                return json_response({"extension": docs.extension_doc(*ext)})
        raise ApiError("not_found", f"Extension with alias {alias} does not exist",
                       error_type="HTTPNotFound")

    @staticmethod
    def empty(collection: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await authenticate(request)
            return json_response({collection: []})
        return handler

    async def list_security_groups(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        projects = [context.project_id or ""]
        if context.is_admin and docs.values(request.query, "project_id"):
            projects = docs.values(request.query, "project_id")
        groups = [docs.security_group_doc(p) for p in projects]
        names = docs.values(request.query, "name")
        ids = docs.values(request.query, "id")
        groups = [g for g in groups if (not names or g["name"] in names)
                  and (not ids or g["id"] in ids)]
        fields = docs.values(request.query, "fields")
        return json_response({"security_groups": [docs.select(g, fields) for g in groups]})

    async def show_security_group(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        group = docs.security_group_doc(context.project_id or "")
        if request.match_info["id"] != group["id"]:
            raise ApiError("not_found", f"Security group {request.match_info['id']} does not"
                           " exist", error_type="SecurityGroupNotFound")
        return json_response({"security_group": group})

    # -- networks ------------------------------------------------------------------------

    def _visible(self, context: AuthContext, where: Where) -> Where:
        if not context.is_admin:
            where.raw("(project_id = {} OR shared = 1)", context.project_id or "")
        return where

    async def _network(self, network_id: str, context: AuthContext) -> NetworkView:
        found = await read_networks(self.store, self._visible(
            context, Where().eq("id", network_id)))
        if not found:
            raise ApiError("not_found", f"Network {network_id} could not be found.",
                           error_type="NetworkNotFound")
        return found[0]

    async def _network_docs(self, nets: Sequence[NetworkView], context: AuthContext,
                            fields: list[str]) -> list[Doc]:
        subnets = await subnet_ids_of(self.store, [n.id for n in nets])
        return [docs.select(docs.network_doc(n, subnets[n.id], context.is_admin), fields)
                for n in nets]

    async def list_networks(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        q = request.query
        if any(v.lower() in ("true", "1") for v in docs.values(q, "router:external")) or \
                any(v != "ACTIVE" for v in docs.values(q, "status")):
            return json_response({"networks": []})
        where = docs.filters(q, self._visible(context, Where()),
                             [("id", "id"), ("name", "name"), ("project_id", "project_id"),
                              ("tenant_id", "project_id")],
                             [("shared", "shared"), ("admin_state_up", "admin_state_up")])
        nets = await read_networks(self.store, where)
        body = await self._network_docs(nets, context, docs.values(q, "fields"))
        return json_response({"networks": body})

    async def show_network(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        net = await self._network(request.match_info["id"], context)
        body = await self._network_docs([net], context, docs.values(request.query, "fields"))
        return json_response({"network": body[0]})

    async def create_network(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        rules.writer(context, "create_network")
        raw = await read_body(request)
        bulk = "networks" in decode(raw, dict[str, Any])
        bodies = decode(raw, docs.NetworksRequest).networks if bulk \
            else [decode(raw, docs.NetworkRequest).network]
        plans = [self._network_plan(b, context) for b in bodies]
        created: list[NetworkView] = []
        try:
            for network_id, command in plans:
                created.append(await self._create_network(request, network_id, command))
        except ApiError:
            for net in created:  # bulk create is all or nothing, as in Neutron
                await self._delete_network(request, net)
            raise
        out = await self._network_docs(created, context, [])
        if bulk:
            return json_response({"networks": out}, status=201)
        return json_response({"network": out[0]}, status=201)

    def _network_plan(self, body: docs.NetworkBody,
                      context: AuthContext) -> tuple[str, CreateNetwork]:
        seg = rules.segmentation_id(body.segmentation_id)
        provider = (body.network_type, body.physical_network, seg)
        if not context.is_admin:
            if any(v is not None for v in provider):
                raise ApiError("forbidden", "(rule:create_network:provider:network_type) is"
                               " disallowed by policy", error_type="PolicyNotAuthorized")
            if body.shared:
                raise ApiError("forbidden", "(rule:create_network:shared) is disallowed by "
                               "policy", error_type="PolicyNotAuthorized")
        if body.external:
            raise rules.bad("Invalid input for router:external: external networks are not "
                       "supported by this cloud.")
        kind = body.network_type or self.settings.tenant_type
        physnet = body.physical_network
        if body.network_type is None and kind != "vxlan":
            physnet = physnet or next(iter(sorted(self.settings.physnets())), None)
        self._check_provider(kind, physnet, seg)
        mtu = self.settings.mtu_of(kind)
        if body.mtu is not None and not 68 <= body.mtu <= mtu:
            raise rules.bad(f"Invalid input for mtu. Reason: {body.mtu} is not in 68..{mtu}.")
        project = rules.owner(context, body.project_id or body.tenant_id)
        return str(uuid.uuid4()), CreateNetwork(
            project_id=project, name=body.name, description=body.description,
            admin_state_up=body.admin_state_up, shared=bool(body.shared),
            network_type=kind, physical_network=physnet,
            segmentation_id=seg, mtu=body.mtu or mtu)

    def _check_provider(self, kind: str, physnet: str | None, seg: int | None) -> None:
        if kind not in ("flat", "vlan", "vxlan"):
            raise rules.bad(f"Invalid input for operation: network_type value '{kind}' not "
                       "supported.", "InvalidInput")
        if kind == "vxlan" and physnet is not None:
            raise rules.bad("Invalid input for operation: provider:physical_network specified "
                       "for vxlan network.", "InvalidInput")
        if kind == "flat" and seg is not None:
            raise rules.bad("Invalid input for operation: provider:segmentation_id specified for"
                       " flat network.", "InvalidInput")
        if kind != "vxlan":
            allowed = self.settings.flat_networks if kind == "flat" \
                else tuple(self.settings.vlan_ranges)
            if physnet is None or physnet not in allowed:
                raise rules.bad(f"Invalid input for operation: physical_network '{physnet}' "
                           f"unknown for {kind} provider network.", "InvalidInput")

    async def _create_network(self, request: web.Request, network_id: str,
                              command: CreateNetwork) -> NetworkView:
        segment = segment_id(command.network_type, command.physical_network)
        got = await self.cmd.do(request, "segment", segment, AllocateSegment(
            network_id=network_id, segmentation_id=command.segmentation_id))
        if command.network_type != "flat":
            command = msgspec.structs.replace(command, segmentation_id=int(got.result or 0))
        reply = await self.cmd.ask(request, "network", network_id, command)
        if not reply.ok:
            await self.cmd.release(request, "segment", segment, network_id)
            raise _refused(reply)
        await self.cmd.seen(reply)
        log.info("network_created", network_id=network_id, type=command.network_type,
                 segmentation_id=command.segmentation_id)
        return (await read_networks(self.store, Where().eq("id", network_id)))[0]

    async def update_network(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        net = await self._network(request.match_info["id"], context)
        rules.writer(context, "update_network")
        rules.owns(context, net.project_id, "update_network")
        body = (await read_json(request, docs.NetworkUpdateRequest)).network
        if body.shared is not None and not context.is_admin:
            raise ApiError("forbidden", "(rule:update_network:shared) is disallowed by "
                           "policy", error_type="PolicyNotAuthorized")
        reply = await self.cmd.do(request, "network", net.id, UpdateNetwork(
            name=body.name, description=body.description,
            admin_state_up=body.admin_state_up, shared=body.shared))
        await self.cmd.seen(reply)
        return await self.show_network(request)

    async def delete_network(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        net = await self._network(request.match_info["id"], context)
        rules.writer(context, "delete_network")
        rules.owns(context, net.project_id, "delete_network")
        await self._delete_network(request, net)
        log.info("network_deleted", network_id=net.id)
        return web.Response(status=204)

    async def _delete_network(self, request: web.Request, net: NetworkView) -> None:
        """Delete the network, then (as its actors' reactions also would) its DHCP port,
        subnets and segment, so the next read sees none of them."""
        reply = await self.cmd.do(request, "network", net.id, DeleteNetwork())
        replies = [reply]
        dhcp = dhcp_port_id(net.id)
        if await read_ports(self.store, Where().eq("id", dhcp)):
            replies.append(await self.cmd.ask(request, "port", dhcp, DeletePort()))
        for subnet in await read_subnets(self.store, Where().eq("network_id", net.id)):
            replies.append(await self.cmd.ask(request, "subnet", subnet.id,
                                              DeleteSubnet(dhcp_port=dhcp)))
        await self.cmd.release(request, "segment",
                               segment_id(net.network_type, net.physical_network), net.id)
        await self.cmd.seen(*replies)

    # -- subnets -------------------------------------------------------------------------

    def _visible_subnets(self, context: AuthContext, where: Where) -> Where:
        if not context.is_admin:
            where.raw("(project_id = {} OR network_id IN (SELECT id FROM net_networks"
                      " WHERE shared = 1))", context.project_id or "")
        return where

    async def _subnet(self, subnet_id: str, context: AuthContext) -> SubnetView:
        found = await read_subnets(self.store, self._visible_subnets(
            context, Where().eq("id", subnet_id)))
        if not found:
            raise ApiError("not_found", f"Subnet {subnet_id} could not be found.",
                           error_type="SubnetNotFound")
        return found[0]

    async def list_subnets(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        q = request.query
        if any(v != "4" for v in docs.values(q, "ip_version")):
            return json_response({"subnets": []})
        where = docs.filters(q, self._visible_subnets(context, Where()),
                             [("id", "id"), ("name", "name"), ("network_id", "network_id"),
                              ("cidr", "cidr"), ("project_id", "project_id"),
                              ("tenant_id", "project_id"), ("gateway_ip", "gateway_ip")],
                             [("enable_dhcp", "enable_dhcp")])
        fields = docs.values(q, "fields")
        subnets = await read_subnets(self.store, where)
        return json_response({"subnets": [docs.select(docs.subnet_doc(s), fields)
                                          for s in subnets]})

    async def show_subnet(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        subnet = await self._subnet(request.match_info["id"], context)
        fields = docs.values(request.query, "fields")
        return json_response({"subnet": docs.select(docs.subnet_doc(subnet), fields)})

    async def create_subnet(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        rules.writer(context, "create_subnet")
        body = (await read_json(request, docs.SubnetRequest)).subnet
        net = await self._network(body.network_id, context)
        rules.owns(context, net.project_id, "create_subnet")
        command = rules.subnet_command(body, net, context)
        subnet_id = str(uuid.uuid4())
        await self.cmd.do(request, "network", net.id,
                          AddSubnet(subnet_id=subnet_id, cidr=command.cidr))
        reply = await self.cmd.ask(request, "subnet", subnet_id, command)
        if not reply.ok:
            await self.cmd.release(request, "network", net.id, subnet_id)
            raise _refused(reply)
        replies = [reply]
        if command.enable_dhcp:
            replies += await self._dhcp_address(request, net, subnet_id)
        await self.cmd.seen(*replies)
        log.info("subnet_created", subnet_id=subnet_id, network_id=net.id, cidr=command.cidr)
        subnet = await self._subnet(subnet_id, context)
        return json_response({"subnet": docs.subnet_doc(subnet)}, status=201)

    async def _dhcp_address(self, request: web.Request, net: NetworkView,
                            subnet_id: str) -> list[Reply]:
        """Give the network's DHCP port an address in the new subnet (created with its
        first one). A full pool leaves the subnet without DHCP port address, logged."""
        port_id = dhcp_port_id(net.id)
        got = await self.cmd.ask(request, "subnet", subnet_id, Allocate(port_id=port_id))
        if not got.ok or got.result is None:
            log.warning("dhcp_address_failed", subnet_id=subnet_id, reason=got.error)
            return []
        ip = FixedIp(subnet_id=subnet_id, ip_address=got.result)
        mac = await self.cmd.do(request, "network", net.id, AddPort(port_id=port_id))
        created = await self.cmd.ask(request, "port", port_id, CreatePort(
            network_id=net.id, project_id=net.project_id, mac_address=mac.result or "",
            fixed_ips=[ip], device_owner=DHCP_OWNER, device_id=f"dhcp-{net.id}"))
        if created.ok:
            return [created]
        # the port exists already (an earlier subnet): add the address to it
        return [await self.cmd.do(request, "port", port_id, UpdatePort(add_fixed_ips=[ip]))]

    async def update_subnet(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        subnet = await self._subnet(request.match_info["id"], context)
        rules.writer(context, "update_subnet")
        rules.owns(context, subnet.project_id, "update_subnet")
        body = (await read_json(request, docs.SubnetUpdateRequest)).subnet
        if body.dns_nameservers is not None:
            rules.check_dns(body.dns_nameservers)
        if body.host_routes is not None:
            rules.check_routes(body.host_routes)
        routes = None if body.host_routes is None else \
            [HostRoute(destination=r.destination, nexthop=r.nexthop) for r in body.host_routes]
        reply = await self.cmd.do(request, "subnet", subnet.id, UpdateSubnet(
            name=body.name, description=body.description, enable_dhcp=body.enable_dhcp,
            dns_nameservers=body.dns_nameservers, host_routes=routes))
        await self.cmd.seen(reply)
        return await self.show_subnet(request)

    async def delete_subnet(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        subnet = await self._subnet(request.match_info["id"], context)
        rules.writer(context, "delete_subnet")
        rules.owns(context, subnet.project_id, "delete_subnet")
        dhcp = dhcp_port_id(subnet.network_id)
        replies = [await self.cmd.do(request, "subnet", subnet.id,
                                     DeleteSubnet(dhcp_port=dhcp))]
        await self.cmd.release(request, "network", subnet.network_id, subnet.id)
        ports = await read_ports(self.store, Where().eq("id", dhcp))
        if ports:
            left = [f for f in ports[0].fixed_ips if f.subnet_id != subnet.id]
            command: msgspec.Struct = UpdatePort(drop_subnet=subnet.id) if left \
                else DeletePort()
            replies.append(await self.cmd.ask(request, "port", dhcp, command))
            if not left:
                await self.cmd.release(request, "network", subnet.network_id, dhcp)
        await self.cmd.seen(*replies)
        log.info("subnet_deleted", subnet_id=subnet.id)
        return web.Response(status=204)

    # -- ports ---------------------------------------------------------------------------

    def _visible_ports(self, context: AuthContext, where: Where) -> Where:
        if not context.is_admin:
            where.eq("project_id", context.project_id or "")
        return where

    async def _port(self, port_id: str, context: AuthContext) -> PortView:
        found = await read_ports(self.store, self._visible_ports(
            context, Where().eq("id", port_id)))
        if not found:
            raise ApiError("not_found", f"Port {port_id} could not be found.",
                           error_type="PortNotFound")
        return found[0]

    async def list_ports(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        q = request.query
        where = docs.filters(q, self._visible_ports(context, Where()),
                             [("id", "id"), ("name", "name"), ("network_id", "network_id"),
                              ("device_id", "device_id"), ("device_owner", "device_owner"),
                              ("mac_address", "mac_address"), ("status", "status"),
                              ("project_id", "project_id"), ("tenant_id", "project_id"),
                              ("binding:host_id", "host_id")],
                             [("admin_state_up", "admin_state_up")])
        ports = await read_ports(self.store, docs.fixed_ip_filters(q, where))
        fields = docs.values(q, "fields")
        return json_response({"ports": [docs.select(docs.port_doc(p, context.is_admin),
                                                    fields) for p in ports]})

    async def show_port(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        port = await self._port(request.match_info["id"], context)
        fields = docs.values(request.query, "fields")
        return json_response({"port": docs.select(docs.port_doc(port, context.is_admin),
                                                  fields)})

    async def create_port(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        rules.writer(context, "create_port")
        body = (await read_json(request, docs.PortRequest)).port
        net = await self._network(body.network_id, context)
        rules.check_port_body(body, context)
        owner = rules.owner(context, body.project_id or body.tenant_id)
        mac = None
        if body.mac_address is not None:
            mac = ipam.normalise_mac(body.mac_address)
            if mac is None:
                raise rules.bad(f"Invalid input for mac_address. Reason: '{body.mac_address}' is "
                           "not a valid MAC address.")
        subnets = await read_subnets(self.store, Where().eq("network_id", net.id))
        wanted = rules.fixed_ip_requests(body.fixed_ips, subnets, net.id)
        port_id = await self._new_port(request, net, subnets, owner=owner, mac=mac,
                                       wanted=wanted, body=body)
        port = await self._port(port_id, context)
        return json_response({"port": docs.port_doc(port, context.is_admin)}, status=201)

    async def _new_port(self, request: web.Request, net: NetworkView,
                        subnets: list[SubnetView], *, owner: str, mac: str | None,
                        wanted: list[tuple[str | None, str | None]] | None,
                        body: docs.PortBody, for_server: bool = False) -> str:
        """Create a port on ``net`` (addresses first, then the MAC, then the port, each
        handed back if a later step is refused) and wait until it can be read; its id."""
        await self._in_use(net.id, mac, wanted)
        port_id = str(uuid.uuid4())
        # addresses first: a full pool, the most common refusal, then records nothing
        ips = await self._allocate(request, port_id, wanted, subnets)
        got = await self.cmd.ask(request, "network", net.id,
                                 AddPort(port_id=port_id, mac_address=mac))
        if not got.ok:
            await self._give_back(request, net.id, port_id, ips)
            raise _refused(got)
        reply = await self.cmd.ask(request, "port", port_id, CreatePort(
            network_id=net.id, project_id=owner, mac_address=got.result or "",
            fixed_ips=ips, name=body.name,
            description=body.description, admin_state_up=body.admin_state_up,
            device_id=body.device_id, device_owner=body.device_owner, for_server=for_server))
        if not reply.ok:
            await self._give_back(request, net.id, port_id, ips)
            raise _refused(reply)
        await self.cmd.seen(reply)
        return port_id

    # -- ports for servers (the compute API's boot) -------------------------------------

    async def server_nic(self, request: web.Request, context: AuthContext, server_id: str,
                         *, network_id: str | None = None, port_id: str | None = None,
                         fixed_ip: str | None = None) -> NicInfo:
        """A NIC for server ``server_id``: the user's port ``port_id`` (which must be
        free), or a new port on ``network_id`` (with ``fixed_ip`` if asked) that the
        server owns. ApiError for a network or port the caller cannot see (Nova answers
        those at once) and 409 for a port another device has; NicUnavailable when the
        network cannot give the server a port (the boot then ends in ERROR, as Nova's
        does). A given port is reserved for the server by its actor (``port.reserve``),
        so of two boots given the same port exactly one gets it; the caller gives the
        NICs back with ``release_nics`` when the boot does not go ahead."""
        if port_id is not None:
            port = await self._port(port_id, context)
            in_use = ApiError("conflict", f"Port {port_id} is still in use.")
            if port.device_id:
                raise in_use
            net = await self._network(port.network_id, context)
            reply = await self.cmd.ask(request, "port", port.id, ReservePort(
                device_id=server_id, device_owner="compute:nova"))
            if not reply.ok:
                raise in_use if reply.error_type == "PortInUse" else _refused(reply)
        else:
            assert network_id is not None
            net = await self._network(network_id, context)
            subnets = await read_subnets(self.store, Where().eq("network_id", net.id))
            if not subnets:
                raise NicUnavailable(f"Network {net.id} has no subnet to take an address"
                                     " from.")
            try:
                wanted: list[tuple[str | None, str | None]] | None = None if \
                    fixed_ip is None else [(rules.subnet_holding(fixed_ip, subnets, net.id),
                                            fixed_ip)]
                new = await self._new_port(
                    request, net, subnets, owner=context.project_id or net.project_id,
                    mac=None, wanted=wanted, for_server=True, body=docs.PortBody(
                        network_id=net.id, device_id=server_id, device_owner="compute:nova"))
            except ApiError as exc:
                if exc.code in ("deadline_exceeded", "unavailable"):
                    raise
                raise NicUnavailable(exc.message or exc.code) from exc
            port = (await read_ports(self.store, Where().eq("id", new)))[0]
        return NicInfo(port_id=port.id, network_id=net.id, network_name=net.name,
                       mac=port.mac_address, ips=tuple(f.ip_address for f in port.fixed_ips),
                       created=port_id is None, device=port_device(port.id),
                       network=await self._plumbing(net))

    async def release_nics(self, request: web.Request, server_id: str,
                           nics: Sequence[NicInfo]) -> None:
        """Give back the NICs made for a server that will not boot: delete the ports made
        for it (their MACs and addresses back to their owners now), and unreserve the
        ports it was given, if it still has them. Best effort: failures are logged. The
        refusal that follows is answered only once the ports list shows the release, so a
        client listing ports after the error never sees a port the boot made."""
        replies: list[Reply] = []
        for nic in nics:
            try:
                if nic.created:
                    found = await read_ports(self.store, Where().eq("id", nic.port_id))
                    replies.append(await self.cmd.ask(request, "port", nic.port_id,
                                                      DeletePort()))
                    await self._give_back(request, nic.network_id, nic.port_id,
                                          found[0].fixed_ips if found else [])
                else:
                    replies.append(await self.cmd.ask(request, "port", nic.port_id,
                                                      UnbindPort(device_id=server_id)))
            except ApiError as exc:
                log.warning("nic_release_failed", server_id=server_id, port_id=nic.port_id,
                            reason=exc.message or exc.code)
            else:
                log.info("nic_released", server_id=server_id, port_id=nic.port_id,
                         deleted=nic.created)
        try:
            await self.cmd.seen(*(r for r in replies if r.ok))
        except ApiError as exc:
            log.warning("nic_release_unseen", server_id=server_id, reason=exc.code)

    async def auto_network(self, context: AuthContext) -> str | None:
        """Nova's ``networks: auto``: the one network the project can use (its own or a
        shared one), None when there is none; 409 when there are several."""
        nets = await read_networks(self.store, Where().raw(
            "(project_id = {} OR shared = 1)", context.project_id or ""))
        if len(nets) > 1:
            raise ApiError("conflict", "Multiple possible networks found, use a Network ID"
                                       " to be more specific.")
        return nets[0].id if nets else None

    async def _plumbing(self, net: NetworkView) -> NetworkSpec:
        """What a host needs to plug a server's port on ``net``: its segment and subnets.
        DHCP and VXLAN peers are the host network planner's (`actors.hostnet`): one host
        serves a network's DHCP, and peers change as hosts come and go."""
        subnets = await read_subnets(self.store, Where().eq("network_id", net.id))
        return segment_spec(net, subnets)

    async def _in_use(self, network_id: str, mac: str | None,
                      wanted: list[tuple[str | None, str | None]] | None) -> None:
        """Refuse a MAC or address the projection already shows in use, before anything
        is handed out (the owners still decide races: this only spares the log)."""
        if mac is not None and await read_ports(self.store, Where().eq(
                "network_id", network_id).eq("mac_address", mac)):
            raise ApiError("conflict", f"Unable to complete operation for network "
                           f"{network_id}. The mac address {mac} is in use.",
                           error_type="MacAddressInUse")
        for subnet_id, address in wanted or []:
            if address is not None and await self.store.query(
                    "SELECT port_id FROM net_port_ips WHERE subnet_id = $1 AND"
                    " ip_address = $2", subnet_id, address):
                raise ApiError("conflict", f"IP address {address} already allocated in "
                               f"subnet {subnet_id}", error_type="IpAddressAlreadyAllocated")

    async def _allocate(self, request: web.Request, port_id: str,
                        wanted: list[tuple[str | None, str | None]] | None,
                        subnets: list[SubnetView]) -> list[FixedIp]:
        """An address for each (subnet, address) asked for; with nothing asked for, one
        from the first subnet of the network that has one free. All or nothing."""
        ips: list[FixedIp] = []
        try:
            if wanted is None:
                if subnets:
                    ips.append(await self._first_free(request, port_id, subnets))
                return ips
            for subnet_id, address in wanted:
                assert subnet_id is not None
                got = await self.cmd.do(request, "subnet", subnet_id,
                                        Allocate(port_id=port_id, ip_address=address))
                ips.append(FixedIp(subnet_id=subnet_id, ip_address=got.result or ""))
            return ips
        except ApiError:
            for subnet_id in {f.subnet_id for f in ips}:
                await self.cmd.release(request, "subnet", subnet_id, port_id)
            raise

    async def _first_free(self, request: web.Request, port_id: str,
                          subnets: list[SubnetView]) -> FixedIp:
        last: Reply | None = None
        for subnet in subnets:
            last = await self.cmd.ask(request, "subnet", subnet.id, Allocate(port_id=port_id))
            if last.ok and last.result:
                return FixedIp(subnet_id=subnet.id, ip_address=last.result)
            if last.error_type != "IpAddressGenerationFailure":
                break
        assert last is not None
        raise _refused(last)

    async def _give_back(self, request: web.Request, network_id: str, port_id: str,
                         ips: list[FixedIp]) -> None:
        for subnet_id in {f.subnet_id for f in ips}:
            await self.cmd.release(request, "subnet", subnet_id, port_id)
        await self.cmd.release(request, "network", network_id, port_id)

    async def update_port(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        port = await self._port(request.match_info["id"], context)
        rules.writer(context, "update_port")
        body = (await read_json(request, docs.PortUpdateRequest)).port
        ips: list[FixedIp] | None = None
        added: list[FixedIp] = []
        if body.fixed_ips is not None:
            subnets = await read_subnets(self.store, Where().eq("network_id",
                                                                port.network_id))
            wanted = rules.fixed_ip_requests(body.fixed_ips, subnets, port.network_id) or []
            ips = [f for f in port.fixed_ips if (f.subnet_id, f.ip_address) in wanted]
            todo = [w for w in wanted if (w[0], w[1]) not in
                    {(f.subnet_id, f.ip_address) for f in ips}]
            added = await self._allocate(request, port.id, todo, subnets)
            ips += added
        reply = await self.cmd.ask(request, "port", port.id, UpdatePort(
            name=body.name, description=body.description, admin_state_up=body.admin_state_up,
            device_id=body.device_id, device_owner=body.device_owner, fixed_ips=ips))
        if not reply.ok:
            for f in added:
                await self.cmd.do(request, "subnet", f.subnet_id,
                                  ReleaseHolds(holder=port.id, key=f.ip_address))
            raise _refused(reply)
        if ips is not None:  # free the dropped addresses now (the reaction also would)
            for f in port.fixed_ips:
                if f not in ips:
                    await self.cmd.ask(request, "subnet", f.subnet_id,
                                       ReleaseHolds(holder=port.id, key=f.ip_address))
        await self.cmd.seen(reply)
        return await self.show_port(request)

    async def delete_port(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        port = await self._port(request.match_info["id"], context)
        rules.writer(context, "delete_port")
        reply = await self.cmd.do(request, "port", port.id, DeletePort())
        await self._give_back(request, port.network_id, port.id, port.fixed_ips)
        await self.cmd.seen(reply)
        log.info("port_deleted", port_id=port.id)
        return web.Response(status=204)
