"""The ``network`` actor kind: one Neutron network, and the single writer of what must be
unique or counted per network: its ports' MAC addresses and its subnets' CIDRs.

Commands: ``network.create`` / ``network.update`` / ``network.delete``, and two hand-outs
the gateway asks for before it creates a port or a subnet:

- ``network.add_port`` (port id, MAC or none): a user-given MAC already in use on this
  network is 409 ``MacAddressInUse``; without one a MAC under fa:16:3e is derived from
  the message id (drawn again until unused). The Reply's result is the MAC.
- ``network.add_subnet`` (subnet id, CIDR): a CIDR overlapping another subnet of this
  network is 400 (Neutron's message says it overlaps with another subnet).

Both are holds (`actors.holds`): confirmed when the network sees the holder's
``port.created`` / ``subnet.created``, released on ``port.deleted`` / ``subnet.deleted``
(and by the gateway at once), asked about after the lease when the holder never came.
Delete is 409 ``NetworkInUse`` while a port other than the network's DHCP port
(`dhcp_port_id`) holds a MAC here; ``network.deleted`` names the segment to give back
and the subnets and DHCP port to remove (their actors react to it).
"""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from actors import holds, ipam
from actors.holds import CheckHold, Ledger, ReleaseHolds
from actors.kind import ActorKind, Context, Events, Rejected
from schemas import Reply, TimerFired

KIND = "network"
PORT_KIND, SUBNET_KIND = "port", "subnet"
MAC, SUBNET = "mac:", "subnet:"
DHCP_OWNER = "network:dhcp"


def dhcp_port_id(network_id: str) -> str:
    """The id of the network's DHCP port (one per network, as Neutron's DHCP agent has)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:dhcp-port:{network_id}"))


class CreateNetwork(msgspec.Struct, frozen=True, kw_only=True, tag="network.create"):
    project_id: str
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    shared: bool = False
    network_type: str
    physical_network: str | None = None
    segmentation_id: int | None = None
    mtu: int


class UpdateNetwork(msgspec.Struct, frozen=True, kw_only=True, tag="network.update"):
    name: str | None = None
    description: str | None = None
    admin_state_up: bool | None = None
    shared: bool | None = None


class DeleteNetwork(msgspec.Struct, frozen=True, kw_only=True, tag="network.delete"):
    pass


class AddPort(msgspec.Struct, frozen=True, kw_only=True, tag="network.add_port"):
    """Reserve a MAC for ``port_id`` on this network (result: the MAC)."""

    port_id: str
    mac_address: str | None = None


class AddSubnet(msgspec.Struct, frozen=True, kw_only=True, tag="network.add_subnet"):
    """Register ``cidr`` for ``subnet_id``: refused if it overlaps another subnet."""

    subnet_id: str
    cidr: str


class NetworkCreated(msgspec.Struct, frozen=True, kw_only=True, tag="network.created"):
    network_id: str
    project_id: str
    name: str
    description: str
    admin_state_up: bool
    shared: bool
    network_type: str
    physical_network: str | None
    segmentation_id: int | None
    mtu: int
    at: dt.datetime


class NetworkUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="network.updated"):
    """The updatable fields as they are now."""

    network_id: str
    name: str
    description: str
    admin_state_up: bool
    shared: bool
    at: dt.datetime


class NetworkDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="network.deleted"):
    network_id: str
    network_type: str
    physical_network: str | None
    segmentation_id: int | None
    subnets: list[str]
    dhcp_port_id: str
    at: dt.datetime


NETWORK_EVENTS: tuple[type[msgspec.Struct], ...] = (
    NetworkCreated, NetworkUpdated, NetworkDeleted, *holds.HOLD_EVENTS)


class NetworkState(msgspec.Struct, kw_only=True):
    exists: bool = False
    deleted: bool = False
    project_id: str = ""
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    shared: bool = False
    network_type: str = ""
    physical_network: str | None = None
    segmentation_id: int | None = None
    ledger: Ledger = msgspec.field(default_factory=Ledger)

    @property
    def live(self) -> bool:
        return self.exists and not self.deleted


# -- what the network reacts to (fields of the port and subnet events it needs) ------------


class PortCreatedRef(msgspec.Struct, frozen=True, kw_only=True, tag="port.created"):
    port_id: str
    network_id: str


class PortDeletedRef(msgspec.Struct, frozen=True, kw_only=True, tag="port.deleted"):
    port_id: str
    network_id: str


class SubnetCreatedRef(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.created"):
    subnet_id: str
    network_id: str


class SubnetDeletedRef(msgspec.Struct, frozen=True, kw_only=True, tag="subnet.deleted"):
    subnet_id: str
    network_id: str


class NetworkDecider:
    """decide / react / timer / reply / answer of the network kind."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def decide(self, state: NetworkState, command: msgspec.Struct, ctx: Context) -> Events:
        if isinstance(command, CreateNetwork):
            if state.exists:
                raise Rejected("conflict", f"Network {ctx.actor_id} already exists.")
            return [NetworkCreated(network_id=ctx.actor_id, at=ctx.now,
                                   **msgspec.structs.asdict(command))]
        if isinstance(command, ReleaseHolds):
            return holds.released(state.ledger, command.holder, command.key, "released")
        if not state.live:
            raise Rejected("NetworkNotFound", f"Network {ctx.actor_id} could not be found.")
        match command:
            case UpdateNetwork():
                return [_updated(state, command, ctx)]
            case DeleteNetwork():
                return self._delete(state, ctx)
            case AddPort(port_id=port_id, mac_address=mac):
                return self._add_port(state, port_id, mac, ctx)
            case AddSubnet(subnet_id=subnet_id, cidr=cidr):
                return self._add_subnet(state, subnet_id, cidr, ctx)
        raise Rejected("bad_request", f"network has no command {type(command).__name__}")

    def _delete(self, state: NetworkState, ctx: Context) -> Events:
        dhcp = dhcp_port_id(ctx.actor_id)
        if any(h != dhcp for h in holds.holders(state.ledger, MAC)):
            raise Rejected("NetworkInUse", f"Unable to complete operation on network "
                           f"{ctx.actor_id}. There are one or more ports still in use on "
                           "the network.")
        return [NetworkDeleted(network_id=ctx.actor_id, network_type=state.network_type,
                               physical_network=state.physical_network,
                               segmentation_id=state.segmentation_id,
                               subnets=list(holds.holders(state.ledger, SUBNET)),
                               dhcp_port_id=dhcp, at=ctx.now)]

    def _add_port(self, state: NetworkState, port_id: str, mac: str | None,
                  ctx: Context) -> Events:
        mine = [k for k in state.ledger.of(port_id) if k.startswith(MAC)]
        if mine:
            return []  # asked again: the same MAC
        if mac is not None and MAC + mac in state.ledger.holds:
            raise Rejected("MacAddressInUse", f"Unable to complete operation for network"
                           f" {ctx.actor_id}. The mac address {mac} is in use.")
        chosen = mac or _fresh_mac(state.ledger, ctx)
        return holds.taken(state.ledger, MAC + chosen, PORT_KIND, port_id, ctx, self.lease)

    def _add_subnet(self, state: NetworkState, subnet_id: str, cidr: str,
                    ctx: Context) -> Events:
        if SUBNET + subnet_id in state.ledger.holds:
            return []
        others = [h.value for k, h in state.ledger.holds.items() if k.startswith(SUBNET)]
        clash = ipam.overlaps(cidr, others)
        if clash is not None:
            raise Rejected("InvalidInput", f"Invalid input for operation: Requested subnet "
                           f"with cidr: {cidr} for network: {ctx.actor_id} overlaps with "
                           "another subnet.")
        return holds.taken(state.ledger, SUBNET + subnet_id, SUBNET_KIND, subnet_id, ctx,
                           self.lease, value=cidr)

    def react(self, state: NetworkState, event: msgspec.Struct, ctx: Context) -> Events:
        match event:
            case PortCreatedRef(port_id=holder) | SubnetCreatedRef(subnet_id=holder):
                return holds.confirmed(state.ledger, holder)
            case PortDeletedRef(port_id=holder) | SubnetDeletedRef(subnet_id=holder):
                return holds.released(state.ledger, holder, reason="holder deleted")
        return []

    def on_timer(self, state: NetworkState, fired: TimerFired, ctx: Context) -> Events:
        return holds.sweep(state.ledger, ctx, self.lease)

    def on_reply(self, state: NetworkState, reply: Reply, ctx: Context) -> Events:
        return holds.answered(state.ledger, reply)

    def effects(self, state: NetworkState, events: Events, ctx: Context) -> list[object]:
        return [t for e in events if isinstance(e, holds.HoldsChecking)
                for t in holds.asks(KIND, e, ctx)]


def _fresh_mac(ledger: Ledger, ctx: Context) -> str:
    """A derived MAC no port of the network has (derived again on the rare collision)."""
    n = 0
    while MAC + (mac := ipam.derived_mac(ctx.derive_id(n))) in ledger.holds:
        n += 1
    return mac


def _updated(state: NetworkState, cmd: UpdateNetwork, ctx: Context) -> NetworkUpdated:
    def pick(new: object, old: object) -> object:
        return old if new is None else new

    return NetworkUpdated(
        network_id=ctx.actor_id, at=ctx.now,
        name=str(pick(cmd.name, state.name)),
        description=str(pick(cmd.description, state.description)),
        admin_state_up=bool(pick(cmd.admin_state_up, state.admin_state_up)),
        shared=bool(pick(cmd.shared, state.shared)))


def evolve(state: NetworkState, event: msgspec.Struct) -> NetworkState:
    match event:
        case NetworkCreated():
            state.exists, state.deleted = True, False
            state.project_id, state.name = event.project_id, event.name
            state.description, state.admin_state_up = event.description, event.admin_state_up
            state.shared, state.network_type = event.shared, event.network_type
            state.physical_network = event.physical_network
            state.segmentation_id = event.segmentation_id
        case NetworkUpdated():
            state.name, state.description = event.name, event.description
            state.admin_state_up, state.shared = event.admin_state_up, event.shared
        case NetworkDeleted():
            state.deleted = True
    holds.fold(state.ledger, event)
    return state


def answer(state: NetworkState, query: CheckHold, ctx: Context) -> str:
    """As a holder of a segment: held while the network lives (any key of its range)."""
    return holds.answer_held(state.live)


def mac_result(state: NetworkState, command: msgspec.Struct, ctx: Context) -> str | None:
    """The Reply's result for ``add_port``: the port's MAC."""
    if isinstance(command, AddPort):
        macs = [k for k in state.ledger.of(command.port_id) if k.startswith(MAC)]
        return macs[0].removeprefix(MAC) if macs else None
    return None


def initial(_actor_id: str) -> NetworkState:
    return NetworkState()


def make_network_kind(lease: float = 120.0) -> ActorKind[NetworkState]:
    decider = NetworkDecider(lease)
    return ActorKind(
        name=KIND, state_type=NetworkState, initial=initial, decide=decider.decide,
        evolve=evolve, events=NETWORK_EVENTS,
        commands=(CreateNetwork, UpdateNetwork, DeleteNetwork, AddPort, AddSubnet,
                  ReleaseHolds),
        reactions={"port.created": _network, "port.deleted": _network,
                   "subnet.created": _network, "subnet.deleted": _network},
        reaction_events=(PortCreatedRef, PortDeletedRef, SubnetCreatedRef, SubnetDeletedRef),
        react=decider.react, on_timer=decider.on_timer, on_reply=decider.on_reply,
        effects=decider.effects, queries=(CheckHold,), answer=answer, result=mac_result,
    )


def _network(event: PortCreatedRef | PortDeletedRef | SubnetCreatedRef
             | SubnetDeletedRef) -> str:
    return event.network_id
