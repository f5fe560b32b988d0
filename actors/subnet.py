"""The ``subnet`` actor kind: one IPv4 subnet and the single writer of its address pool.

The pool is a free set (`actors.ipam`): ``subnet.allocate`` draws its lowest address,
or takes the one asked for, as a hold for the port (`actors.holds`), and answers the
address as the Reply's result. So no address is ever handed out twice, however many
ports are created at once, and the pool is the fold of the log. Refusals, in Neutron's
words and types: pool empty 409 ``IpAddressGenerationFailure``; address taken 409
``IpAddressAlreadyAllocated``; address outside the subnet 400 ``InvalidIpForSubnet``.

A hold is confirmed when the subnet sees the port's ``port.ip_bound`` and released on
``port.ip_released`` (reactions, one event per address), or at once by the gateway; one
the port never took is asked about after the lease and released. ``subnet.delete`` is
409 ``SubnetInUse`` while any port but the network's DHCP port holds an address.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from actors import holds, ipam
from actors.holds import CheckHold, Ledger, ReleaseHolds
from actors.kind import ActorKind, Context, Events, Rejected
from schemas import Reply, TimerFired

KIND = "subnet"
PORT_KIND = "port"


class HostRoute(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    nexthop: str


class CreateSubnet(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.create"):
    """A subnet the gateway has planned (`ipam.plan_subnet`): gateway and pool ranges."""

    network_id: str
    project_id: str
    name: str = ""
    description: str = ""
    cidr: str
    gateway_ip: str | None
    pools: ipam.Ranges
    enable_dhcp: bool = True
    dns_nameservers: list[str] = []
    host_routes: list[HostRoute] = []


class UpdateSubnet(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.update"):
    name: str | None = None
    description: str | None = None
    enable_dhcp: bool | None = None
    dns_nameservers: list[str] | None = None
    host_routes: list[HostRoute] | None = None


class DeleteSubnet(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.delete"):
    """Delete unless a port other than ``dhcp_port`` holds an address here."""

    dhcp_port: str | None = None


class Allocate(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.allocate"):
    """Hand an address to ``port_id``: ``ip_address``, or the lowest free one."""

    port_id: str
    ip_address: str | None = None


class SubnetCreated(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.created"):
    subnet_id: str
    network_id: str
    project_id: str
    name: str
    description: str
    cidr: str
    gateway_ip: str | None
    pools: ipam.Ranges
    enable_dhcp: bool
    dns_nameservers: list[str]
    host_routes: list[HostRoute]
    at: dt.datetime


class SubnetUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.updated"):
    """The updatable fields as they are now."""

    subnet_id: str
    name: str
    description: str
    enable_dhcp: bool
    dns_nameservers: list[str]
    host_routes: list[HostRoute]
    at: dt.datetime


class SubnetDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.deleted"):
    subnet_id: str
    network_id: str
    at: dt.datetime


SUBNET_EVENTS: tuple[type[msgspec.Struct], ...] = (
    SubnetCreated, SubnetUpdated, SubnetDeleted, *holds.HOLD_EVENTS)


class SubnetState(msgspec.Struct, kw_only=True):
    exists: bool = False
    deleted: bool = False
    network_id: str = ""
    cidr: str = ""
    name: str = ""
    description: str = ""
    enable_dhcp: bool = True
    dns_nameservers: list[str] = []
    host_routes: list[HostRoute] = []
    pools: ipam.Ranges = []
    free: ipam.Ranges = []
    ledger: Ledger = msgspec.field(default_factory=Ledger)
    last: str | None = None  # the address the last allocation handed out

    @property
    def live(self) -> bool:
        return self.exists and not self.deleted


class PortAddressRef(msgspec.Struct, frozen=True, kw_only=True):
    port_id: str
    subnet_id: str
    ip_address: str


class PortIpBoundRef(PortAddressRef, frozen=True, kw_only=True, tag="port.ip_bound"):
    pass


class PortIpReleasedRef(PortAddressRef, frozen=True, kw_only=True, tag="port.ip_released"):
    pass


class SubnetDecider:
    """decide / react / timer / reply of the subnet kind."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def decide(self, state: SubnetState, command: msgspec.Struct, ctx: Context) -> Events:
        if isinstance(command, CreateSubnet):
            if state.exists:
                raise Rejected("conflict", f"Subnet {ctx.actor_id} already exists.")
            return [SubnetCreated(subnet_id=ctx.actor_id, at=ctx.now,
                                  **msgspec.structs.asdict(command))]
        if isinstance(command, ReleaseHolds):
            return holds.released(state.ledger, command.holder, command.key, "released")
        if not state.live:
            raise Rejected("SubnetNotFound", f"Subnet {ctx.actor_id} could not be found.")
        match command:
            case UpdateSubnet():
                return [_updated(state, command, ctx)]
            case DeleteSubnet(dhcp_port=dhcp):
                if any(h != dhcp for h in holds.holders(state.ledger)):
                    raise Rejected("SubnetInUse", f"Unable to complete operation on subnet "
                                   f"{ctx.actor_id}: One or more ports have an IP allocation"
                                   " from this subnet.")
                return [SubnetDeleted(subnet_id=ctx.actor_id, network_id=state.network_id,
                                      at=ctx.now)]
            case Allocate(port_id=port_id, ip_address=ip):
                return self._allocate(state, port_id, ip, ctx)
        raise Rejected("bad_request", f"subnet has no command {type(command).__name__}")

    def _allocate(self, state: SubnetState, port_id: str, ip: str | None,
                  ctx: Context) -> Events:
        if ip is None:
            drawn = ipam.draw(state.free)
            if drawn is None:
                raise Rejected("IpAddressGenerationFailure", "No more IP addresses available"
                               f" on network {state.network_id}.")
            ip = ipam.ip_text(drawn[0])
        else:
            self._check_address(state, ip, ctx)
        return holds.taken(state.ledger, ip, PORT_KIND, port_id, ctx, self.lease)

    @staticmethod
    def _check_address(state: SubnetState, ip: str, ctx: Context) -> None:
        try:
            value = ipam.parse_ip(ip)
        except ipam.PlanError as exc:
            raise Rejected("bad_request", str(exc)) from None
        first, last = ipam.hosts(ipam.parse_cidr(state.cidr))
        if not first <= value <= last:
            raise Rejected("InvalidIpForSubnet", f"IP address {ip} is not a valid IP for the "
                           "specified subnet.")
        if ip in state.ledger.holds:
            raise Rejected("IpAddressAlreadyAllocated", f"IP address {ip} already allocated"
                           f" in subnet {ctx.actor_id}")

    def react(self, state: SubnetState, event: msgspec.Struct, ctx: Context) -> Events:
        match event:
            case PortIpBoundRef(port_id=port, ip_address=ip):
                return holds.confirmed(state.ledger, port, ip)
            case PortIpReleasedRef(port_id=port, ip_address=ip):
                return holds.released(state.ledger, port, ip, "port let it go")
        return []

    def on_timer(self, state: SubnetState, fired: TimerFired, ctx: Context) -> Events:
        return holds.sweep(state.ledger, ctx, self.lease)

    def on_reply(self, state: SubnetState, reply: Reply, ctx: Context) -> Events:
        return holds.answered(state.ledger, reply)

    def effects(self, state: SubnetState, events: Events, ctx: Context) -> list[object]:
        return [t for e in events if isinstance(e, holds.HoldsChecking)
                for t in holds.asks(KIND, e, ctx)]


def _updated(state: SubnetState, cmd: UpdateSubnet, ctx: Context) -> SubnetUpdated:
    return SubnetUpdated(
        subnet_id=ctx.actor_id, at=ctx.now,
        name=state.name if cmd.name is None else cmd.name,
        description=state.description if cmd.description is None else cmd.description,
        enable_dhcp=state.enable_dhcp if cmd.enable_dhcp is None else cmd.enable_dhcp,
        dns_nameservers=state.dns_nameservers if cmd.dns_nameservers is None
        else cmd.dns_nameservers,
        host_routes=state.host_routes if cmd.host_routes is None else cmd.host_routes)


def evolve(state: SubnetState, event: msgspec.Struct) -> SubnetState:
    match event:
        case SubnetCreated():
            state.exists, state.deleted = True, False
            state.network_id, state.cidr, state.name = event.network_id, event.cidr, event.name
            state.description, state.enable_dhcp = event.description, event.enable_dhcp
            state.dns_nameservers, state.host_routes = event.dns_nameservers, event.host_routes
            state.pools = [list(r) for r in event.pools]
            state.free = [list(r) for r in event.pools]
        case SubnetUpdated():
            state.name, state.description = event.name, event.description
            state.enable_dhcp, state.dns_nameservers = event.enable_dhcp, event.dns_nameservers
            state.host_routes = event.host_routes
        case SubnetDeleted():
            state.deleted = True
        case holds.HoldTaken(key=ip):
            state.free, state.last = ipam.take(state.free, ipam.parse_ip(ip)), ip
        case holds.HoldReleased(key=ip, holder=holder) if ip in state.ledger.of(holder):
            value = ipam.parse_ip(ip)
            if ipam.contains(state.pools, value):
                state.free = ipam.give(state.free, value)
    holds.fold(state.ledger, event)
    return state


def answer(state: SubnetState, query: CheckHold, ctx: Context) -> str:
    """As the holder of its CIDR on the network: held while the subnet lives."""
    return holds.answer_held(state.live)


def address_result(state: SubnetState, command: msgspec.Struct, ctx: Context) -> str | None:
    """The Reply's result for ``allocate``: the address handed out."""
    return state.last if isinstance(command, Allocate) else None


def initial(_actor_id: str) -> SubnetState:
    return SubnetState()


def make_subnet_kind(lease: float = 120.0) -> ActorKind[SubnetState]:
    decider = SubnetDecider(lease)
    return ActorKind(
        name=KIND, state_type=SubnetState, initial=initial, decide=decider.decide,
        evolve=evolve, events=SUBNET_EVENTS,
        commands=(CreateSubnet, UpdateSubnet, DeleteSubnet, Allocate, ReleaseHolds),
        reactions={"port.ip_bound": _subnet, "port.ip_released": _subnet},
        reaction_events=(PortIpBoundRef, PortIpReleasedRef),
        react=decider.react, on_timer=decider.on_timer, on_reply=decider.on_reply,
        effects=decider.effects, queries=(CheckHold,), answer=answer, result=address_result,
    )


def _subnet(event: PortAddressRef) -> str:
    return event.subnet_id
