"""The ``host`` actor kind: one hypervisor's capacity, liveness and claims, as events.

The host actor (id = host name) is the single writer of its capacity, so a claim is
decided against every earlier claim and nothing is ever overcommitted. Usage is the fold
of ``host.claimed`` / ``host.released``, so it can always be rebuilt from the log.

A claim's consumer is an instance (vCPUs, RAM, root disk on a compute host) or a volume
(``volume_gb`` of block storage on a storage host, whose capacity is
``Capacity.storage``); both are keyed by their id in ``instance_id``. A volume that grows
re-claims with ``resize``: its old claim is released and the new one taken in one
decision, or refused as a whole.

Liveness: hostd sends ``Heartbeat`` often; the actor records ``host.heartbeat`` at most
once per ``record_every`` seconds (no event for every unchanged beat). One durable timer
named ``down`` is due ``down_after`` seconds after the last recorded beat; when it fires
it either re-arms (a later beat was recorded) or records ``host.down``. A beat from a down
host records ``host.up``. So a host silent for ``down_after`` goes down, and a host that
beats at least every ``down_after - record_every`` seconds never does.
"""

from __future__ import annotations

import datetime as dt
import math
import os

import msgspec

from actors.kind import ActorKind, Context, Events, Rejected
from schemas import ENCODER, TimerFired, TimerSet
from schemas.hostd import Capacity, ExpectedDomains

KIND = "host"
DOWN_TIMER = "down"


class AllocationRatios(msgspec.Struct, frozen=True, kw_only=True):
    """How far each physical resource may be overcommitted (Nova's allocation ratios;
    ``volume`` is Cinder's max_over_subscription_ratio, thick provisioning at 1.0)."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0
    volume: float = 1.0


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """An amount of vCPU, RAM (MiB), disk (GiB) and block storage (GiB): a claim, or a
    host's usage."""

    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0
    volume_gb: int = 0

    def plus(self, other: Resources, sign: int = 1) -> Resources:
        return Resources(vcpus=self.vcpus + sign * other.vcpus,
                         ram_mb=self.ram_mb + sign * other.ram_mb,
                         disk_gb=self.disk_gb + sign * other.disk_gb,
                         volume_gb=self.volume_gb + sign * other.volume_gb)


# -- commands ------------------------------------------------------------------------------


class ReportCapacity(msgspec.Struct, frozen=True, kw_only=True, tag="host.report_capacity"):
    """hostd (re)started: what the host offers, as it measured it at ``at``."""

    capacity: Capacity
    at: dt.datetime


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="host.beat"):
    """hostd is alive; ``capacity`` as it measures it now, sent at ``at`` (host clock)."""

    capacity: Capacity
    at: dt.datetime


class Claim(msgspec.Struct, frozen=True, kw_only=True, tag="host.claim"):
    """Reserve room for consumer ``instance_id`` (an instance or a volume) on this host
    (idempotent per consumer); with ``resize``, a consumer that holds a claim swaps it
    for this one."""

    instance_id: str
    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0
    volume_gb: int = 0
    resize: bool = False

    @property
    def resources(self) -> Resources:
        return Resources(vcpus=self.vcpus, ram_mb=self.ram_mb, disk_gb=self.disk_gb,
                         volume_gb=self.volume_gb)


class Release(msgspec.Struct, frozen=True, kw_only=True, tag="host.release"):
    """Give back what ``instance_id`` claimed (nothing happens for an unknown instance)."""

    instance_id: str


# -- events --------------------------------------------------------------------------------


class HostRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="host.registered"):
    """The first report of a host: it is up with this capacity and these ratios."""

    capacity: Capacity
    ratios: AllocationRatios
    at: dt.datetime


class HostInventoryChanged(msgspec.Struct, frozen=True, kw_only=True,
                           tag="host.inventory_changed"):
    """The host reported a different capacity, or the configured ratios changed."""

    capacity: Capacity
    ratios: AllocationRatios
    at: dt.datetime


class HostHeartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="host.heartbeat"):
    """A beat received at ``at`` (control-plane clock), sent at ``sent_at`` (host clock)."""

    at: dt.datetime
    sent_at: dt.datetime


class HostDown(msgspec.Struct, frozen=True, kw_only=True, tag="host.down"):
    """No beat since ``last_heartbeat`` for ``down_after`` seconds: the host is down."""

    at: dt.datetime
    last_heartbeat: dt.datetime


class HostUp(msgspec.Struct, frozen=True, kw_only=True, tag="host.up"):
    """A down host beat again at ``at``."""

    at: dt.datetime


class HostClaimed(msgspec.Struct, frozen=True, kw_only=True, tag="host.claimed"):
    """Room reserved for an instance (or, ``volume_gb`` only, a volume)."""

    instance_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    volume_gb: int = 0


class HostReleased(msgspec.Struct, frozen=True, kw_only=True, tag="host.released"):
    """A consumer's claim given back (the amounts it had claimed)."""

    instance_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    volume_gb: int = 0


# -- reactions: an instance that failed or was deleted gives its claim back ----------------


class InstanceFailedOn(msgspec.Struct, frozen=True, kw_only=True, tag="instance.failed"):
    """The part of ``instance.failed`` the host reacts to."""

    instance_id: str
    host: str | None = None


class InstanceDeletedFrom(msgspec.Struct, frozen=True, kw_only=True, tag="instance.deleted"):
    """The part of ``instance.deleted`` the host reacts to."""

    instance_id: str
    host: str | None = None


class VolumeFailedOn(msgspec.Struct, frozen=True, kw_only=True, tag="volume.failed"):
    """The part of ``volume.failed`` the host reacts to."""

    volume_id: str
    host: str | None = None


class VolumeDeletedFrom(msgspec.Struct, frozen=True, kw_only=True, tag="volume.deleted"):
    """The part of ``volume.deleted`` the host reacts to."""

    volume_id: str
    host: str | None = None


def _consumer_host(event: InstanceFailedOn | InstanceDeletedFrom | VolumeFailedOn
                   | VolumeDeletedFrom) -> str | None:
    return event.host


HOST_COMMANDS: tuple[type[msgspec.Struct], ...] = (ReportCapacity, Heartbeat, Claim, Release)
HOST_EVENTS: tuple[type[msgspec.Struct], ...] = (
    HostRegistered, HostInventoryChanged, HostHeartbeat, HostDown, HostUp,
    HostClaimed, HostReleased,
)


class HostState(msgspec.Struct, kw_only=True):
    """The fold of one host's stream."""

    registered: bool = False
    up: bool = False
    capacity: Capacity = Capacity(vcpus=0, ram_mb=0, disk_gb=0)
    ratios: AllocationRatios = AllocationRatios()
    used: Resources = Resources()
    claims: dict[str, Resources] = {}
    last_heartbeat: dt.datetime | None = None
    down_timer: str | None = None


# -- the fit rule, shared with the scheduler -------------------------------------------------


def limits(capacity: Capacity, ratios: AllocationRatios) -> Resources:
    """What may be claimed in total: each capacity times its ratio, rounded down."""
    storage = capacity.storage.total_gb if capacity.storage is not None else 0
    return Resources(vcpus=math.floor(capacity.vcpus * ratios.cpu),
                     ram_mb=math.floor(capacity.ram_mb * ratios.ram),
                     disk_gb=math.floor(capacity.disk_gb * ratios.disk),
                     volume_gb=math.floor(storage * ratios.volume))


def free(capacity: Capacity, ratios: AllocationRatios, used: Resources) -> Resources:
    """What is left to claim (negative when ratios were lowered below usage)."""
    return limits(capacity, ratios).plus(used, -1)


def shortfall(room: Resources, need: Resources) -> str | None:
    """Why ``need`` does not fit in ``room`` (None: it fits)."""
    for what, unit, want, have in (
        ("vCPUs", "", need.vcpus, room.vcpus),
        ("RAM", " MiB", need.ram_mb, room.ram_mb),
        ("disk", " GiB", need.disk_gb, room.disk_gb),
        ("block storage", " GiB", need.volume_gb, room.volume_gb),
    ):
        if want > have:
            return f"not enough {what}: {want}{unit} requested, {max(have, 0)}{unit} free"
    return None


# -- decide / evolve ---------------------------------------------------------------------------


class HostDecider:
    """decide / on_timer of the host kind, with its configuration."""

    def __init__(self, down_after: float, record_every: float,
                 ratios: AllocationRatios) -> None:
        if down_after <= 0 or not 0 < record_every < down_after:
            raise ValueError("need 0 < record_every < down_after")
        self.down_after = dt.timedelta(seconds=down_after)
        self.record_every = dt.timedelta(seconds=record_every)
        self.ratios = ratios

    def decide(self, state: HostState, command: msgspec.Struct, ctx: Context) -> Events:
        match command:
            case ReportCapacity(capacity=capacity, at=at):
                return self._beat(state, capacity, at, ctx, force=True)
            case Heartbeat(capacity=capacity, at=at):
                return self._beat(state, capacity, at, ctx, force=False)
            case Claim():
                return self._claim(state, command)
            case Release(instance_id=instance_id):
                held = state.claims.get(instance_id)
                return [] if held is None else [_released(instance_id, held)]
        raise Rejected("bad_request", f"host has no command {type(command).__name__}")

    def _beat(self, state: HostState, capacity: Capacity, sent_at: dt.datetime,
              ctx: Context, *, force: bool) -> Events:
        now = ctx.now
        if not state.registered:
            return [HostRegistered(capacity=capacity, ratios=self.ratios, at=now),
                    self._arm(ctx, now)]
        events: list[msgspec.Struct] = []
        if capacity != state.capacity or self.ratios != state.ratios:
            events.append(HostInventoryChanged(capacity=capacity, ratios=self.ratios, at=now))
        if not state.up:
            return [*events, HostUp(at=now), self._arm(ctx, now)]
        last = state.last_heartbeat
        if force or events or last is None or now - last >= self.record_every:
            events.append(HostHeartbeat(at=now, sent_at=sent_at))
        return events

    def _arm(self, ctx: Context, since: dt.datetime) -> TimerSet:
        return TimerSet(timer_id=ctx.derive_id(), name=DOWN_TIMER,
                        fire_at=since + self.down_after)

    def _claim(self, state: HostState, claim: Claim) -> Events:
        need = claim.resources
        if min(need.vcpus, need.ram_mb, need.disk_gb, need.volume_gb) < 0:
            raise Rejected("bad_request", "a claim cannot be negative")
        held = state.claims.get(claim.instance_id)
        if held is not None and held == need:
            return []
        if held is not None and not claim.resize:
            raise Rejected("conflict", f"instance {claim.instance_id} already holds"
                           " a different claim on this host")
        if not state.registered:
            raise Rejected("conflict", "host has never reported its capacity")
        if not state.up:
            raise Rejected("conflict", "host is down")
        room = free(state.capacity, self.ratios, state.used)
        if held is not None:  # a resize: the old claim counts as room
            room = room.plus(held)
        reason = shortfall(room, need)
        if reason is not None:
            raise Rejected("conflict", reason)
        claimed = HostClaimed(instance_id=claim.instance_id, vcpus=need.vcpus,
                              ram_mb=need.ram_mb, disk_gb=need.disk_gb,
                              volume_gb=need.volume_gb)
        return [claimed] if held is None else [_released(claim.instance_id, held), claimed]

    def react(self, state: HostState, event: msgspec.Struct, ctx: Context) -> Events:
        """An instance or a volume failed or was deleted: release what it claimed here."""
        if isinstance(event, InstanceFailedOn | InstanceDeletedFrom):
            return self.decide(state, Release(instance_id=event.instance_id), ctx)
        if isinstance(event, VolumeFailedOn | VolumeDeletedFrom):
            return self.decide(state, Release(instance_id=event.volume_id), ctx)
        return []

    def on_timer(self, state: HostState, fired: TimerFired, ctx: Context) -> Events:
        if fired.name != DOWN_TIMER or not state.up or state.last_heartbeat is None:
            return []
        deadline = state.last_heartbeat + self.down_after
        if deadline > ctx.now:  # a later beat was recorded: wait until it is stale too
            return [self._arm(ctx, state.last_heartbeat)]
        return [HostDown(at=ctx.now, last_heartbeat=state.last_heartbeat)]


def _released(consumer: str, held: Resources) -> HostReleased:
    return HostReleased(instance_id=consumer, vcpus=held.vcpus, ram_mb=held.ram_mb,
                        disk_gb=held.disk_gb, volume_gb=held.volume_gb)


def answer(state: HostState, query: msgspec.Struct, ctx: Context) -> str:
    """``host.expected``: the instances holding a claim here, as a JSON list (volumes'
    claims are no domains)."""
    if isinstance(query, ExpectedDomains):
        return ENCODER.encode(sorted(k for k, r in state.claims.items()
                                     if not r.volume_gb)).decode()
    raise Rejected("bad_request", f"host has no query {type(query).__name__}")


def initial(_actor_id: str) -> HostState:
    return HostState()


def evolve(state: HostState, event: msgspec.Struct) -> HostState:
    match event:
        case HostRegistered(capacity=capacity, ratios=ratios, at=at):
            state.registered, state.up, state.last_heartbeat = True, True, at
            state.capacity, state.ratios = capacity, ratios
        case HostInventoryChanged(capacity=capacity, ratios=ratios):
            state.capacity, state.ratios = capacity, ratios
        case HostHeartbeat(at=at):
            state.last_heartbeat = at
        case HostDown():
            state.up = False
        case HostUp(at=at):
            state.up, state.last_heartbeat = True, at
        case HostClaimed(instance_id=iid, vcpus=v, ram_mb=r, disk_gb=d, volume_gb=g):
            state.claims[iid] = Resources(vcpus=v, ram_mb=r, disk_gb=d, volume_gb=g)
            state.used = state.used.plus(state.claims[iid])
        case HostReleased(instance_id=iid):
            held = state.claims.pop(iid, None)
            if held is not None:
                state.used = state.used.plus(held, -1)
        case TimerSet(timer_id=tid, name=name) if name == DOWN_TIMER:
            state.down_timer = tid
        case TimerFired(timer_id=tid) if tid == state.down_timer:
            state.down_timer = None
    return state


def make_host_kind(
    *, down_after: float = 30.0, record_every: float | None = None,
    ratios: AllocationRatios | None = None, snapshot_every: int = 200,
) -> ActorKind[HostState]:
    """The ``host`` kind: down after ``down_after`` s without a beat, beats recorded at most
    every ``record_every`` s (default a third of ``down_after``), claims under ``ratios``."""
    decider = HostDecider(down_after, record_every or down_after / 3,
                          ratios or AllocationRatios())
    return ActorKind(
        name=KIND,
        state_type=HostState,
        initial=initial,
        decide=decider.decide,
        evolve=evolve,
        commands=HOST_COMMANDS,
        events=HOST_EVENTS,
        on_timer=decider.on_timer,
        reactions={"instance.failed": _consumer_host, "instance.deleted": _consumer_host,
                   "volume.failed": _consumer_host, "volume.deleted": _consumer_host},
        react=decider.react,
        reaction_events=(InstanceFailedOn, InstanceDeletedFrom, VolumeFailedOn,
                         VolumeDeletedFrom),
        queries=(ExpectedDomains,),
        answer=answer,
        snapshot_every=snapshot_every,
    )


#: environment variable overriding ``down_after`` of HOST (seconds), e.g. for tests
DOWN_AFTER_ENV = "ORRERY_HOST_DOWN_AFTER"

#: the host kind with the default settings (``--kind actors.host:HOST``)
HOST = make_host_kind(down_after=float(os.environ.get(DOWN_AFTER_ENV) or 30.0))
