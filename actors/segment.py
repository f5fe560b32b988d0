"""The ``segment`` actor kind: the single writer of one segmentation range.

One actor per range: ``vxlan`` (VNIs), ``vlan:<physnet>`` (VLAN ids) and
``flat:<physnet>`` (a physical network carries at most one flat network, key ``flat``).
``segment.allocate`` draws the lowest free id from the configured range, or takes the
id asked for (any valid id, in the range or not, as Neutron lets an admin do), and
answers it as the Reply's result; the hold is the network's (see `actors.holds`: it is
confirmed when ``network.created`` is seen, asked about if the network never comes, and
released on ``network.deleted``). The free set is the fold of the log on top of the
configured range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from actors import holds, ipam
from actors.holds import Ledger, ReleaseHolds
from actors.kind import ActorKind, Context, Events, Rejected
from schemas import Reply, TimerFired

KIND = "segment"
NETWORK_KIND = "network"
MAX_ID = {"vxlan": (1 << 24) - 1, "vlan": 4094}
FLAT_KEY = "flat"


@dataclass(frozen=True)
class NetworkSettings:
    """The networking configuration the kinds and the API share (from `orrery.config`)."""

    vni_ranges: tuple[tuple[int, int], ...] = ((1, 65535),)
    vlan_ranges: dict[str, tuple[tuple[int, int], ...]] = field(
        default_factory=lambda: {"physnet1": ((1, 4094),)})
    flat_networks: tuple[str, ...] = ("physnet1",)
    tenant_type: str = "vxlan"
    mtu: int = 1500
    hold_lease: float = 120.0

    @classmethod
    def parse(cls, *, vni_ranges: str, vlan_ranges: str, flat_networks: str,
              tenant_type: str, mtu: int, hold_lease: float) -> NetworkSettings:
        vlans: dict[str, tuple[tuple[int, int], ...]] = {}
        for item in _items(vlan_ranges):
            net, lo, hi = item.split(":")
            vlans[net] = (*vlans.get(net, ()), (int(lo), int(hi)))
        vnis = tuple((int(lo), int(hi)) for lo, hi in (i.split(":") for i in _items(vni_ranges)))
        return cls(vni_ranges=vnis, vlan_ranges=vlans, tenant_type=tenant_type, mtu=mtu,
                   flat_networks=tuple(_items(flat_networks)), hold_lease=hold_lease)

    def physnets(self) -> set[str]:
        return {*self.flat_networks, *self.vlan_ranges}

    def mtu_of(self, network_type: str) -> int:
        """VXLAN's encapsulation takes 50 bytes (Neutron's overhead for IPv4 VXLAN)."""
        return self.mtu - 50 if network_type == "vxlan" else self.mtu

    def ranges(self, segment_id: str) -> ipam.Ranges:
        """The configured free range of segment actor ``segment_id``."""
        if segment_id == "vxlan":
            return _merged(self.vni_ranges)
        if segment_id.startswith("vlan:"):
            return _merged(self.vlan_ranges.get(segment_id.removeprefix("vlan:"), ()))
        return []


def _items(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _merged(ranges: tuple[tuple[int, int], ...]) -> ipam.Ranges:
    free: ipam.Ranges = []
    for lo, hi in sorted(ranges):
        if free and lo <= free[-1][1] + 1:
            free[-1][1] = max(free[-1][1], hi)
        else:
            free.append([lo, hi])
    return free


def segment_id(network_type: str, physical_network: str | None) -> str:
    """The segment actor that owns a network's segment."""
    return "vxlan" if network_type == "vxlan" else f"{network_type}:{physical_network}"


class AllocateSegment(msgspec.Struct, frozen=True, kw_only=True, tag="segment.allocate"):
    """Hand a segment to ``network_id``: ``segmentation_id``, or the lowest free one."""

    network_id: str
    segmentation_id: int | None = None


class SegmentState(msgspec.Struct, kw_only=True):
    range: ipam.Ranges = []  # the configured range (released ids go back if in it)
    free: ipam.Ranges = []
    ledger: Ledger = msgspec.field(default_factory=Ledger)


class NetworkCreatedRef(msgspec.Struct, frozen=True, kw_only=True, tag="network.created"):
    """The fields of ``network.created`` the segment kind reacts to."""

    network_id: str
    network_type: str
    physical_network: str | None = None
    segmentation_id: int | None = None


class NetworkDeletedRef(msgspec.Struct, frozen=True, kw_only=True, tag="network.deleted"):
    network_id: str
    network_type: str
    physical_network: str | None = None
    segmentation_id: int | None = None


class SegmentDecider:
    """decide / react / timer / reply of the segment kind with the configured ranges."""

    def __init__(self, settings: NetworkSettings) -> None:
        self.settings = settings

    def initial(self, actor_id: str) -> SegmentState:
        configured = self.settings.ranges(actor_id)
        return SegmentState(range=configured, free=[list(r) for r in configured])

    def decide(self, state: SegmentState, command: msgspec.Struct, ctx: Context) -> Events:
        match command:
            case AllocateSegment(network_id=net, segmentation_id=wanted):
                return self._allocate(state, net, wanted, ctx)
            case ReleaseHolds(holder=holder, key=key):
                return holds.released(state.ledger, holder, key, "network deleted")
        raise Rejected("bad_request", f"segment has no command {type(command).__name__}")

    def _allocate(self, state: SegmentState, network_id: str, wanted: int | None,
                  ctx: Context) -> Events:
        mine = state.ledger.of(network_id)
        if mine:
            return []  # asked again (a retry): the same segment
        lease = self.settings.hold_lease
        if ctx.actor_id.startswith("flat:"):
            if FLAT_KEY in state.ledger.holds:
                physnet = ctx.actor_id.removeprefix("flat:")
                raise Rejected("conflict", f"Unable to create the flat network. Physical "
                               f"network {physnet} is in use.")
            return holds.taken(state.ledger, FLAT_KEY, NETWORK_KIND, network_id, ctx, lease)
        kind = ctx.actor_id.partition(":")[0]
        if wanted is None:
            drawn = ipam.draw(state.free)
            if drawn is None:
                raise Rejected("conflict", "Unable to create the network. No tenant network "
                               "is available for allocation.")
            wanted = drawn[0]
        elif not 1 <= wanted <= MAX_ID[kind]:
            raise Rejected("bad_request", f"Invalid input for operation: segmentation_id "
                           f"{wanted} is out of range 1..{MAX_ID[kind]}.")
        if str(wanted) in state.ledger.holds:
            raise Rejected("conflict", f"Unable to create the network. The "
                           f"{'VLAN' if kind == 'vlan' else 'tunnel ID'} {wanted} is in use.")
        return holds.taken(state.ledger, str(wanted), NETWORK_KIND, network_id, ctx, lease)

    def react(self, state: SegmentState, event: msgspec.Struct, ctx: Context) -> Events:
        match event:
            case NetworkCreatedRef(network_id=net):
                return holds.confirmed(state.ledger, net)
            case NetworkDeletedRef(network_id=net):
                return holds.released(state.ledger, net, reason="network deleted")
        return []

    def on_timer(self, state: SegmentState, fired: TimerFired, ctx: Context) -> Events:
        return holds.sweep(state.ledger, ctx, self.settings.hold_lease)

    def on_reply(self, state: SegmentState, reply: Reply, ctx: Context) -> Events:
        return holds.answered(state.ledger, reply)

    def effects(self, state: SegmentState, events: Events, ctx: Context) -> list[object]:
        return [t for e in events if isinstance(e, holds.HoldsChecking)
                for t in holds.asks(KIND, e, ctx)]


def evolve(state: SegmentState, event: msgspec.Struct) -> SegmentState:
    match event:
        case holds.HoldTaken(key=key) if key != FLAT_KEY:
            state.free = ipam.take(state.free, int(key))
        case holds.HoldReleased(key=key, holder=holder) if key != FLAT_KEY \
                and key in state.ledger.of(holder) and ipam.contains(state.range, int(key)):
            state.free = ipam.give(state.free, int(key))
    holds.fold(state.ledger, event)
    return state


def allocation(state: SegmentState, command: msgspec.Struct, ctx: Context) -> str | None:
    """The Reply's result: the segment the network holds (``flat`` for a flat one)."""
    if isinstance(command, AllocateSegment):
        mine = state.ledger.of(command.network_id)
        return mine[0] if mine else None
    return None


def make_segment_kind(settings: NetworkSettings) -> ActorKind[SegmentState]:
    decider = SegmentDecider(settings)
    return ActorKind(
        name=KIND, state_type=SegmentState, initial=decider.initial, decide=decider.decide,
        evolve=evolve, commands=(AllocateSegment, ReleaseHolds), events=holds.HOLD_EVENTS,
        reactions={"network.created": _segment_of_created, "network.deleted": _segment_of},
        react=decider.react, reaction_events=(NetworkCreatedRef, NetworkDeletedRef),
        on_timer=decider.on_timer, on_reply=decider.on_reply, effects=decider.effects,
        result=allocation,
    )


def _segment_of(event: NetworkDeletedRef) -> str | None:
    return segment_id(event.network_type, event.physical_network) \
        if event.network_type in ("vxlan", "vlan", "flat") else None


def _segment_of_created(event: NetworkCreatedRef) -> str | None:
    return segment_id(event.network_type, event.physical_network) \
        if event.network_type in ("vxlan", "vlan", "flat") else None
