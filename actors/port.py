"""The ``port`` actor kind: one Neutron port, its MAC and fixed IPs, and its binding.

The gateway reserves the MAC on the network (``network.add_port``) and each address on
its subnet (``subnet.allocate``) before ``port.create``; the port records what it was
given. Each address is also its own event (``port.ip_bound`` / ``port.ip_released``), so
the subnet that owns it confirms or frees it by reacting, and ``port.created`` /
``port.deleted`` tell the network. A port answers the owners' ``hold.check``: ``held``
while it is live and has that MAC or address.

Commands for the boot saga and hostd (the lead's instance saga uses these):

- ``port.bind`` (``host_id``, ``device_id``, ``device_owner``): the port is bound to an
  instance on a host (``binding:host_id``); status stays ``DOWN``. A port bound to
  another device is 409 ``PortInUse``; binding again to the same device is a no-op.
- ``port.plug`` (``host_id``): hostd has plugged the port on that host: ``ACTIVE``.
  From another host than the binding's, or unbound, it is refused (409).
- ``port.reserve`` (``device_id``, ``device_owner``): the gateway takes a user's port
  for a server before the server exists; 409 ``PortInUse`` when another device has it,
  a no-op for the same device. So of two boots given one port, exactly one gets it.
- ``port.unbind`` (``device_id``): host, device id and owner cleared, status ``DOWN`` (a
  port the user created survives its server; one the saga created is deleted instead).
  Only for that device: a port another device took since is left alone.

A port the gateway made for a server (``port.create`` with ``for_server``) or reserved for
one holds that server as a hold (`actors.holds`, key ``server:created`` / ``server:reserved``,
holder the instance): confirmed when the server binds it; if it is still pending after
the lease, the instance is asked (``hold.check``), and a server that does not exist (the
API died between making the ports and creating the server, or the create was lost) gets
its port back: a made port is deleted, a reserved one freed. So no port is left bound to
a server that never was.

``port.update`` changes name, description, admin_state_up, device_id/owner and fixed IPs
(the gateway allocates the new addresses first and frees the dropped ones after).
The network's DHCP port is deleted when its network is (a reaction to
``network.deleted``).
"""

from __future__ import annotations

import datetime as dt

import msgspec

from actors import holds
from actors.holds import CheckHold, Ledger
from actors.kind import ActorKind, Context, Events, Rejected
from schemas import Reply, TimerCancelled, TimerFired

KIND = "port"
DOWN, ACTIVE = "DOWN", "ACTIVE"


class FixedIp(msgspec.Struct, frozen=True, kw_only=True):
    subnet_id: str
    ip_address: str


class CreatePort(msgspec.Struct, frozen=True, kw_only=True, tag="port.create"):
    network_id: str
    project_id: str
    mac_address: str
    fixed_ips: list[FixedIp] = []
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    device_id: str = ""
    device_owner: str = ""
    #: made by the gateway for server ``device_id``: deleted if that server never comes
    for_server: bool = False


class UpdatePort(msgspec.Struct, frozen=True, kw_only=True, tag="port.update"):
    name: str | None = None
    description: str | None = None
    admin_state_up: bool | None = None
    device_id: str | None = None
    device_owner: str | None = None
    fixed_ips: list[FixedIp] | None = None
    #: deltas that need no read of the current list (the DHCP port's, updated by
    #: concurrent subnet creates and deletes): addresses added, a subnet's ones dropped
    add_fixed_ips: list[FixedIp] = []
    drop_subnet: str | None = None


class DeletePort(msgspec.Struct, frozen=True, kw_only=True, tag="port.delete"):
    pass


class BindPort(msgspec.Struct, frozen=True, kw_only=True, tag="port.bind"):
    host_id: str
    device_id: str
    device_owner: str = "compute:nova"


class PlugPort(msgspec.Struct, frozen=True, kw_only=True, tag="port.plug"):
    """hostd's report: the port is plugged on ``host_id``."""

    host_id: str


class ReservePort(msgspec.Struct, frozen=True, kw_only=True, tag="port.reserve"):
    """Take the port for ``device_id`` (a server being created), or refuse."""

    device_id: str
    device_owner: str = "compute:nova"


class UnbindPort(msgspec.Struct, frozen=True, kw_only=True, tag="port.unbind"):
    """Give the port back from ``device_id`` ("" : whoever has it)."""

    device_id: str = ""


class PortCreated(msgspec.Struct, frozen=True, kw_only=True, tag="port.created"):
    port_id: str
    network_id: str
    project_id: str
    mac_address: str
    fixed_ips: list[FixedIp]
    name: str
    description: str
    admin_state_up: bool
    device_id: str
    device_owner: str
    at: dt.datetime


class PortUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="port.updated"):
    """The updatable fields as they are now."""

    port_id: str
    name: str
    description: str
    admin_state_up: bool
    device_id: str
    device_owner: str
    fixed_ips: list[FixedIp]
    at: dt.datetime


class PortIpBound(msgspec.Struct, frozen=True, kw_only=True, tag="port.ip_bound"):
    port_id: str
    subnet_id: str
    ip_address: str


class PortIpReleased(msgspec.Struct, frozen=True, kw_only=True, tag="port.ip_released"):
    port_id: str
    subnet_id: str
    ip_address: str


class PortBound(msgspec.Struct, frozen=True, kw_only=True, tag="port.bound"):
    port_id: str
    host_id: str
    device_id: str
    device_owner: str
    at: dt.datetime


class PortPlugged(msgspec.Struct, frozen=True, kw_only=True, tag="port.plugged"):
    port_id: str
    host_id: str
    at: dt.datetime


class PortUnbound(msgspec.Struct, frozen=True, kw_only=True, tag="port.unbound"):
    """``host_id``: the host it was bound to ("" in events recorded before it was kept)."""

    port_id: str
    at: dt.datetime
    host_id: str = ""


class PortDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="port.deleted"):
    """``host_id``: the host it was bound to, if any (as in ``port.unbound``)."""

    port_id: str
    network_id: str
    at: dt.datetime
    host_id: str = ""


PORT_EVENTS: tuple[type[msgspec.Struct], ...] = (
    PortCreated, PortUpdated, PortIpBound, PortIpReleased, PortBound, PortPlugged,
    PortUnbound, PortDeleted, *holds.HOLD_EVENTS)
#: the hold keys of a port made for a server and of one reserved for a server
MADE, RESERVED = "server:created", "server:reserved"
INSTANCE_KIND = "instance"


class PortState(msgspec.Struct, kw_only=True):
    exists: bool = False
    deleted: bool = False
    network_id: str = ""
    mac_address: str = ""
    fixed_ips: list[FixedIp] = []
    name: str = ""
    description: str = ""
    admin_state_up: bool = True
    device_id: str = ""
    device_owner: str = ""
    host_id: str = ""
    status: str = DOWN
    #: the server the port waits for (see the module)
    ledger: Ledger = msgspec.field(default_factory=Ledger)

    @property
    def live(self) -> bool:
        return self.exists and not self.deleted


class NetworkDeletedRef(msgspec.Struct, frozen=True, kw_only=True, tag="network.deleted"):
    network_id: str
    dhcp_port_id: str


class PortDecider:
    """decide / on_timer / on_reply / effects of the port kind, with the server lease."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def decide(self, state: PortState, command: msgspec.Struct, ctx: Context) -> Events:
        events = decide(state, command, ctx)
        match command:
            case CreatePort(for_server=True, device_id=device) if device:
                return [*events, *holds.taken(state.ledger, MADE, INSTANCE_KIND, device,
                                              ctx, self.lease)]
            case ReservePort(device_id=device) if events:
                return [*events, *holds.taken(state.ledger, RESERVED, INSTANCE_KIND, device,
                                              ctx, self.lease)]
            case BindPort(device_id=device):
                settled = holds.confirmed(state.ledger, device)
                return [*events, *settled, *self._no_timer(state, settled)]
            case UnbindPort() | DeletePort() if events:
                let_go = [e for k, h in state.ledger.holds.items()
                          for e in holds.released(state.ledger, h.holder, k, "let go")]
                return [*events, *let_go, *self._no_timer(state, let_go)]
        return events

    @staticmethod
    def _no_timer(state: PortState, settling: Events) -> Events:
        """Cancel the lease timer once ``settling`` leaves nothing pending (a port per
        server boot would otherwise fire one timer each, for nothing, a lease later)."""
        if not settling or state.ledger.timer is None:
            return []
        settled = {(getattr(e, "key", ""), getattr(e, "holder", "")) for e in settling}
        pending = [k for k, h in state.ledger.holds.items()
                   if not h.confirmed and (k, h.holder) not in settled]
        return [] if pending else [TimerCancelled(timer_id=state.ledger.timer)]

    def on_timer(self, state: PortState, fired: TimerFired, ctx: Context) -> Events:
        return holds.sweep(state.ledger, ctx, self.lease)

    def effects(self, state: PortState, events: Events, ctx: Context) -> list[object]:
        return [t for e in events if isinstance(e, holds.HoldsChecking)
                for t in holds.asks(KIND, e, ctx)]

    def on_reply(self, state: PortState, reply: Reply, ctx: Context) -> Events:
        """The instance's answer: held (confirmed) or free, and then the port goes back
        (deleted if made for it, freed if reserved), unless someone else has it now."""
        events = list(holds.answered(state.ledger, reply))
        for event in events:
            if not isinstance(event, holds.HoldReleased) or not state.live \
                    or state.device_id != event.holder or state.host_id:
                continue
            if event.key == MADE:
                return [*events, *_delete(state, ctx)]
            return [*events, _updated(state, ctx, device_id="", device_owner="")]
        return events


def decide(state: PortState, command: msgspec.Struct, ctx: Context) -> Events:
    if isinstance(command, CreatePort):
        if state.exists:
            raise Rejected("conflict", f"Port {ctx.actor_id} already exists.")
        fields = msgspec.structs.asdict(command)
        fields.pop("for_server")
        return [PortCreated(port_id=ctx.actor_id, at=ctx.now, **fields),
                *_bound(ctx.actor_id, command.fixed_ips)]
    if not state.live:
        raise Rejected("PortNotFound", f"Port {ctx.actor_id} could not be found.")
    match command:
        case UpdatePort():
            return _update(state, command, ctx)
        case DeletePort():
            return _delete(state, ctx)
        case ReservePort(device_id=device, device_owner=owner):
            _free_for(state, device, ctx)
            if (state.device_id, state.device_owner) == (device, owner):
                return []
            return [_updated(state, ctx, device_id=device, device_owner=owner)]
        case BindPort(host_id=host, device_id=device, device_owner=owner):
            _free_for(state, device, ctx)
            if (state.host_id, state.device_id, state.device_owner) == (host, device, owner):
                return []
            return [PortBound(port_id=ctx.actor_id, host_id=host, device_id=device,
                              device_owner=owner, at=ctx.now)]
        case PlugPort(host_id=host):
            if not state.host_id or host != state.host_id:
                raise Rejected("conflict", f"Port {ctx.actor_id} is not bound to host {host}.")
            return [] if state.status == ACTIVE else [
                PortPlugged(port_id=ctx.actor_id, host_id=host, at=ctx.now)]
        case UnbindPort(device_id=device):
            if not (state.host_id or state.device_id or state.device_owner):
                return []
            if device and device != state.device_id:
                return []  # another device has it now
            return [PortUnbound(port_id=ctx.actor_id, host_id=state.host_id, at=ctx.now)]
    raise Rejected("bad_request", f"port has no command {type(command).__name__}")


def _free_for(state: PortState, device: str, ctx: Context) -> None:
    """Refuse (409 PortInUse) unless the port is free or already ``device``'s."""
    if state.device_id not in ("", device):
        raise Rejected("PortInUse", f"Unable to complete operation on port {ctx.actor_id} "
                       f"for network {state.network_id}. Port already has an attached "
                       f"device {state.device_id}.")


def _updated(state: PortState, ctx: Context, *, device_id: str,
             device_owner: str) -> PortUpdated:
    return PortUpdated(port_id=ctx.actor_id, at=ctx.now, fixed_ips=list(state.fixed_ips),
                       name=state.name, description=state.description,
                       admin_state_up=state.admin_state_up, device_id=device_id,
                       device_owner=device_owner)


def _bound(port_id: str, ips: list[FixedIp]) -> Events:
    return [PortIpBound(port_id=port_id, subnet_id=f.subnet_id, ip_address=f.ip_address)
            for f in ips]


def _released(port_id: str, ips: list[FixedIp]) -> Events:
    return [PortIpReleased(port_id=port_id, subnet_id=f.subnet_id, ip_address=f.ip_address)
            for f in ips]


def _update(state: PortState, cmd: UpdatePort, ctx: Context) -> Events:
    ips = state.fixed_ips if cmd.fixed_ips is None else cmd.fixed_ips
    ips = [f for f in ips if f.subnet_id != cmd.drop_subnet]
    ips += [f for f in cmd.add_fixed_ips if f not in ips]
    updated = PortUpdated(
        port_id=ctx.actor_id, at=ctx.now, fixed_ips=ips,
        name=state.name if cmd.name is None else cmd.name,
        description=state.description if cmd.description is None else cmd.description,
        admin_state_up=state.admin_state_up if cmd.admin_state_up is None
        else cmd.admin_state_up,
        device_id=state.device_id if cmd.device_id is None else cmd.device_id,
        device_owner=state.device_owner if cmd.device_owner is None else cmd.device_owner)
    gone = [f for f in state.fixed_ips if f not in ips]
    new = [f for f in ips if f not in state.fixed_ips]
    return [updated, *_bound(ctx.actor_id, new), *_released(ctx.actor_id, gone)]


def _delete(state: PortState, ctx: Context) -> Events:
    return [*_released(ctx.actor_id, state.fixed_ips),
            PortDeleted(port_id=ctx.actor_id, network_id=state.network_id,
                        host_id=state.host_id, at=ctx.now)]


def react(state: PortState, event: msgspec.Struct, ctx: Context) -> Events:
    """The network's DHCP port goes with its network."""
    if isinstance(event, NetworkDeletedRef) and state.live:
        return _delete(state, ctx)
    return []


def evolve(state: PortState, event: msgspec.Struct) -> PortState:
    match event:
        case PortCreated():
            state.exists, state.deleted = True, False
            state.network_id, state.mac_address = event.network_id, event.mac_address
            state.fixed_ips, state.name = list(event.fixed_ips), event.name
            state.description, state.admin_state_up = event.description, event.admin_state_up
            state.device_id, state.device_owner = event.device_id, event.device_owner
        case PortUpdated():
            state.fixed_ips, state.name = list(event.fixed_ips), event.name
            state.description, state.admin_state_up = event.description, event.admin_state_up
            state.device_id, state.device_owner = event.device_id, event.device_owner
        case PortBound():
            state.host_id, state.device_id = event.host_id, event.device_id
            state.device_owner, state.status = event.device_owner, DOWN
        case PortPlugged():
            state.status = ACTIVE
        case PortUnbound():
            state.host_id = state.device_id = state.device_owner = ""
            state.status = DOWN
        case PortDeleted():
            state.deleted = True
    holds.fold(state.ledger, event)
    return state


def answer(state: PortState, query: CheckHold, ctx: Context) -> str:
    """``held`` while live and holding the MAC (asked by the network) or the address
    (asked by the subnet)."""
    if not state.live:
        return holds.FREE
    if query.owner_kind == "network":
        return holds.answer_held(query.key == f"mac:{state.mac_address}")
    return holds.answer_held(any(f.subnet_id == query.owner_id and f.ip_address == query.key
                                 for f in state.fixed_ips))


def _dhcp_port(event: NetworkDeletedRef) -> str:
    return event.dhcp_port_id


def initial(_actor_id: str) -> PortState:
    return PortState()


def make_port_kind(lease: float = 120.0) -> ActorKind[PortState]:
    """The port kind; a port made or reserved for a server asks about it after ``lease``."""
    decider = PortDecider(lease)
    return ActorKind(
        name=KIND, state_type=PortState, initial=initial, decide=decider.decide,
        evolve=evolve,
        commands=(CreatePort, UpdatePort, DeletePort, BindPort, PlugPort, UnbindPort,
                  ReservePort),
        events=PORT_EVENTS, reactions={"network.deleted": _dhcp_port},
        reaction_events=(NetworkDeletedRef,), react=react, queries=(CheckHold,),
        answer=answer, on_timer=decider.on_timer, on_reply=decider.on_reply,
        effects=decider.effects,
    )


PORT = make_port_kind()
