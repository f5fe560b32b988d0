"""The scheduler: pure filters and weighers over host views, then claims until one sticks.

One scheduler places every kind of resource: an instance on a compute host, a volume on
a storage host (a request with ``volume_gb``). ``place(request, hosts)`` keeps the hosts
of the request's role, filters (up, room for vCPU/RAM/disk or block storage under each
host's allocation ratios, the image fits the root disk, the host carries every network
type and physical network of the instance's NICs, e.g. no VLAN network on a host whose
kernel lacks 802.1Q) and weighs (an instance: most free RAM first, then most free vCPUs;
a volume: most free block storage, as Cinder's capacity weigher; then host id, so the
ranking is deterministic). ``schedule`` sends a ``Claim`` to
each ranked host in turn: the host actor is the single writer of its capacity, so a
``conflict`` only means someone else took the room first and the next host is tried.

Errors: ``NoValidHost`` (its message is the instance fault, as Nova words it).
"""

from __future__ import annotations

import collections
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import structlog

from actors.client import ActorClient
from actors.host import KIND, Claim, Release, Resources, shortfall
from actors.host_views import HostView
from actors.instance import Place
from actors.runtime import Origin, request_envelope
from actors.volume_messages import PlaceVolume
from bus.errors import BusError
from bus.protocol import Bus
from bus.replies import reply_envelope
from schemas import Reply

log = structlog.get_logger(__name__)

GIB = 1024**3
CLAIM_TIMEOUT = 10.0
#: the reasons a filter gives, keyed for counting
DOWN, NO_CAPACITY, NO_NETWORK = "down", "capacity", "network"

HostsReader = Callable[[], Awaitable[Sequence[HostView]]]


class PlacementRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What one instance needs. ``image_size`` (bytes, 0: unknown) sizes a root disk of
    0 GiB (as Nova does for such flavors) and must fit in the root disk otherwise."""

    instance_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_size: int = 0
    #: the network types (flat, vlan, vxlan) and physical networks of its NICs
    network_types: tuple[str, ...] = ()
    physical_networks: tuple[str, ...] = ()
    #: block storage a volume needs (GiB); such a request goes to storage hosts only
    volume_gb: int = 0

    @property
    def needs(self) -> Resources:
        """What a host must have free: the flavor, its root disk at least the image (or,
        for a volume, its size in block storage)."""
        if self.volume_gb:
            return Resources(volume_gb=self.volume_gb)
        image_gb = math.ceil(self.image_size / GIB)
        return Resources(vcpus=self.vcpus, ram_mb=self.ram_mb,
                         disk_gb=max(self.disk_gb, image_gb))


class NoValidHost(Exception):
    """No host could take the instance; ``reasons`` says why, per host or in total."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        detail = "; ".join(self.reasons) or "there are no hosts"
        super().__init__(f"No valid host was found. {detail}")


# -- pure ----------------------------------------------------------------------------------


def image_problem(request: PlacementRequest) -> str | None:
    """Why the image can never fit the flavor's root disk (None: it can)."""
    if request.disk_gb and request.image_size > request.disk_gb * GIB:
        return (f"image of {request.image_size} bytes is larger than the"
                f" {request.disk_gb} GiB root disk")
    return None


def network_problem(request: PlacementRequest, host: HostView) -> str | None:
    """Why ``host`` cannot carry the request's networks (None: it can, or none asked)."""
    if not request.network_types and not request.physical_networks:
        return None
    caps = host.capacity.networks
    if caps is None:
        return "no network driver"
    for kind in request.network_types:
        if not getattr(caps, kind, False):
            return f"no {kind} networks ({caps.missing.get(kind, 'unsupported')})"
    for physnet in request.physical_networks:
        if physnet not in caps.physical_networks:
            return f"no physical network {physnet}"
    return None


def rejection(request: PlacementRequest, host: HostView) -> str | None:
    """Why ``host`` cannot take ``request`` (None: it passes every filter)."""
    if not host.up:
        return DOWN
    if network_problem(request, host) is not None:
        return NO_NETWORK
    if shortfall(host.free, request.needs) is not None:
        return NO_CAPACITY
    return None


def serves(request: PlacementRequest, host: HostView) -> bool:
    """Whether ``host`` has the request's role: storage for a volume, compute else."""
    if request.volume_gb:
        return host.capacity.storage is not None
    return host.capacity.compute


def weigh(host: HostView) -> tuple[int, int, str]:
    """Sort key: most free RAM, then most free vCPUs, then host id (on storage hosts,
    whose RAM and vCPUs are none, most free block storage)."""
    room = host.free
    if not host.capacity.compute:
        return (-room.volume_gb, 0, host.id)
    return (-room.ram_mb, -room.vcpus, host.id)


def filter_hosts(
    request: PlacementRequest, hosts: Sequence[HostView]
) -> tuple[list[HostView], list[str]]:
    """The hosts that pass, and (when some do not) why the others did not."""
    problem = image_problem(request)
    if problem is not None:
        return [], [problem]
    passing: list[HostView] = []
    refused: Counter[str] = Counter()
    for host in hosts:
        if not serves(request, host):
            continue
        why = rejection(request, host)
        if why is None:
            passing.append(host)
        else:
            refused[why] += 1
    reasons = []
    if refused[DOWN]:
        reasons.append(f"{refused[DOWN]} host(s) down")
    if refused[NO_NETWORK]:
        reasons.append(f"{refused[NO_NETWORK]} host(s) unable to carry {_networks(request)}")
    if refused[NO_CAPACITY]:
        reasons.append(f"{refused[NO_CAPACITY]} host(s) without room for {_need(request)}")
    return passing, reasons


def _networks(request: PlacementRequest) -> str:
    kinds = "/".join(request.network_types) or "any"
    physnets = ", ".join(request.physical_networks)
    return f"{kinds} networks" + (f" on physical network(s) {physnets}" if physnets else "")


def _need(request: PlacementRequest) -> str:
    n = request.needs
    if request.volume_gb:
        return f"{n.volume_gb} GiB of block storage"
    return f"{n.vcpus} vCPUs, {n.ram_mb} MiB RAM, {n.disk_gb} GiB disk"


def place(request: PlacementRequest, hosts: Sequence[HostView]) -> list[str]:
    """The ids of the hosts that can take ``request``, best first."""
    passing, _ = filter_hosts(request, hosts)
    return [h.id for h in sorted(passing, key=weigh)]


# -- claiming ------------------------------------------------------------------------------


async def schedule(
    client: ActorClient, read_hosts: HostsReader, request: PlacementRequest,
    *, timeout: float = CLAIM_TIMEOUT, correlation_id: str | None = None,
) -> str:
    """Claim room on the best host that accepts; its id, or NoValidHost with the reasons.

    A claim that gets no answer may still have been recorded: the host is sent a Release
    for the instance (idempotent, queued behind the claim) before the next host is tried.
    """
    hosts = await read_hosts()
    passing, reasons = filter_hosts(request, hosts)
    claim = Claim(instance_id=request.instance_id, **msgspec.structs.asdict(request.needs))
    for host in sorted(passing, key=weigh):
        refusal = await _try_claim(client, host.id, claim, timeout, correlation_id)
        if refusal is None:
            log.info("instance_placed", instance_id=request.instance_id, host=host.id)
            return host.id
        reasons.append(f"{host.id}: {refusal}")
    log.info("no_valid_host", instance_id=request.instance_id, reasons=reasons)
    raise NoValidHost(reasons)


async def _try_claim(
    client: ActorClient, host_id: str, claim: Claim, timeout: float,
    correlation_id: str | None,
) -> str | None:
    """None when the host accepted the claim, otherwise why not."""
    try:
        reply = await client.call(KIND, host_id, claim, timeout=timeout,
                                  correlation_id=correlation_id)
    except BusError as exc:
        log.warning("claim_unanswered", host=host_id, instance_id=claim.instance_id,
                    error=repr(exc))
        await client.cast(KIND, host_id, Release(instance_id=claim.instance_id),
                          timeout=timeout, correlation_id=correlation_id)
        return f"no answer to the claim ({type(exc).__name__})"
    if reply.ok:
        return None
    log.info("claim_refused", host=host_id, instance_id=claim.instance_id,
             code=reply.error_type, reason=reply.error)
    return reply.error or reply.error_type or "refused"


# -- as the boot saga's effect -----------------------------------------------------------------


class Placement:
    """Carries out the instance's ``Place`` and the volume's ``PlaceVolume`` effects: rank
    the hosts from the hosts view, and send a ``Claim`` to the best one not excluded, as
    command ``request@host``, whose answer goes to the asking actor. With no candidate,
    it is answered ``no_valid_host`` with the reasons, as Nova words its fault.

    The hosts view lags the claims by a moment, so placements made at the same time would
    all pick the same "emptiest" host. As Nova's scheduler consumes its host states, the
    claims this process sent in the last ``recent`` seconds are counted as used when
    weighing, never when filtering (the host actor decides whether each claim fits).
    Placements share one read of the view for ``view_ttl`` seconds; a placement that
    finds no host in a view that old reads it afresh before it answers no valid host.
    """

    def __init__(self, bus: Bus, read_hosts: HostsReader, *, timeout: float = CLAIM_TIMEOUT,
                 recent: float = 2.0, view_ttl: float = 0.25):
        self.bus = bus
        self.read_hosts = read_hosts
        self.timeout = timeout
        self.recent = recent
        self.view_ttl = view_ttl
        self._view: Sequence[HostView] = ()
        self._view_at = -math.inf
        #: claims sent lately, oldest first, and their running sum per host
        self._sent: collections.deque[tuple[float, str, Resources]] = collections.deque()
        self._pending_sum: dict[str, Resources] = {}

    def _note_sent(self, host: str, need: Resources) -> None:
        self._sent.append((time.monotonic(), host, need))
        self._pending_sum[host] = self._pending_sum.get(host, Resources()).plus(need)

    def _pending(self) -> dict[str, Resources]:
        """What this process claimed lately, per host."""
        cutoff = time.monotonic() - self.recent
        while self._sent and self._sent[0][0] < cutoff:
            _, host, need = self._sent.popleft()
            left = self._pending_sum[host].plus(need, -1)
            if left == Resources():
                del self._pending_sum[host]
            else:
                self._pending_sum[host] = left
        return self._pending_sum

    async def _hosts(self, fresh: bool) -> Sequence[HostView]:
        now = time.monotonic()
        if fresh or now - self._view_at >= self.view_ttl:
            self._view, self._view_at = await self.read_hosts(), now
        return self._view

    async def _candidates(self, request: PlacementRequest, exclude: Sequence[str]
                          ) -> tuple[list[HostView], list[str]]:
        """The hosts that pass the filters, and why the others did not."""
        for fresh in (False, True):
            if fresh and time.monotonic() - self._view_at < 0.01:
                break  # just read: reading again would tell the same
            hosts = [h for h in await self._hosts(fresh) if h.id not in exclude]
            passing, reasons = filter_hosts(request, hosts)
            if passing:
                break
        return passing, reasons

    async def __call__(self, origin: Origin, place: Place | PlaceVolume) -> None:
        if isinstance(place, PlaceVolume):
            request = PlacementRequest(instance_id=place.volume_id, vcpus=0, ram_mb=0,
                                       disk_gb=0, volume_gb=place.size_gb)
        else:
            request = PlacementRequest(instance_id=place.instance_id, vcpus=place.vcpus,
                                       ram_mb=place.ram_mb, disk_gb=place.disk_gb,
                                       image_size=place.image_size,
                                       network_types=place.network_types,
                                       physical_networks=place.physical_networks)
        passing, reasons = await self._candidates(request, place.exclude)
        if not passing:
            error = str(NoValidHost(reasons))
            log.info("no_valid_host", consumer=request.instance_id, reasons=reasons)
            reply = Reply(command_id=f"{place.request}@", ok=False,
                          error_type="no_valid_host", error=error)
            await self.bus.send(reply_envelope(origin.message, origin.kind, origin.actor_id,
                                               reply))
            return
        pending = self._pending()  # only for weighing: the view may count them already
        best = min(passing, key=lambda h: weigh(msgspec.structs.replace(
            h, used=h.used.plus(pending[h.id]))) if h.id in pending else weigh(h))
        self._note_sent(best.id, request.needs)
        claim = Claim(instance_id=request.instance_id, **msgspec.structs.asdict(request.needs))
        await self.bus.send(request_envelope(origin, KIND, best.id, claim,
                                             f"{place.request}@{best.id}", self.timeout))
