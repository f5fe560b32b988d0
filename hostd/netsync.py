"""Keeping a host's network equal to what the log says: pulls, pushes, and the spawns between.

The control plane tells hostd everything its host should carry (``hostd.network``, a
``DesiredHostNetwork`` read from the log's views at a log position) when a change of the
log touches the host, and answers the same when hostd asks (``hostnet.desired``, at start
and every reconcile period). A pull makes the host exactly that through the driver's
``reconcile``: networks and ports built, DHCP servers and flood lists updated, and
Orrery's devices nobody wants any more removed (a deleted port's tap, a network no port
of this host is on, whatever was left behind). A push changes only what differs from the
set applied before it (ensure what is new or changed, remove what went), so its cost
follows the change, not the number of networks on the host; the pulls catch anything a
push missed, and a push after a failed one is a full reconcile. A desired set older (by
log position) than the last one applied is ignored: pushes may overtake each other.

A spawn plugs its ports before the log says they are bound here (the binding and the
spawn go out together), so a desired set read a moment earlier would remove them. Ports
a spawn plugged are therefore *pending* until a desired set includes them, and kept
(with their network) until then, for at most ``pending_grace`` seconds. After that, once
a desired set has included them, or when a push names them gone (deleted or unbound from
this host), their absence removes them. A spawn on a network
the host already carries keeps the carried spec (with its DHCP and peers); on a new one
it builds the spawn's segment, and the next desired set brings the rest.

After a successful apply hostd reports each DHCP port it serves as plugged (the port
goes ACTIVE; a repeat records nothing). If the control plane does not answer a pull,
nothing is changed: nothing is removed on a guess.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import structlog

from bus.envelopes import command_envelope
from bus.errors import BusError
from bus.protocol import Bus
from hostd.network import HostNetwork, HostNetworkError
from schemas.hostd import (
    HOSTNET_KIND,
    PORT_ACTOR_KIND,
    DesiredNetwork,
    DhcpPortPlugged,
    SyncNetwork,
)
from schemas.hostnet import DesiredHostNetwork, NetworkSpec, PortSpec

log = structlog.get_logger(__name__)

_SYNC = msgspec.json.Decoder(SyncNetwork)
#: how long a report that a DHCP port is plugged may wait for its port actor
REPORT_DEADLINE = 60.0


class PendingPort(msgspec.Struct, frozen=True, kw_only=True):
    """A port a spawn plugged that no desired set has included yet."""

    port: PortSpec
    network: NetworkSpec
    since: float


class NetworkSync:
    """One host's network against the control plane's desired set (see the module)."""

    def __init__(self, bus: Bus, network: HostNetwork, host: str, *,
                 call_timeout: float = 10.0, pending_grace: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.network = network
        self.host = host
        self.call_timeout = call_timeout
        self.pending_grace = pending_grace
        self.clock = clock
        #: the last desired set applied, and the log position it was read at
        self.desired: DesiredHostNetwork | None = None
        self.position = -1
        #: rounds applied (pulls and pushes), for tests and logs
        self.applied = 0
        self._pending: dict[str, PendingPort] = {}
        #: what the host was last made to match (desired set plus pending ports)
        self._target: DesiredHostNetwork | None = None
        self._lock = asyncio.Lock()
        self._applied = asyncio.Condition()

    # -- from the control plane ---------------------------------------------------------

    async def pull(self) -> bool:
        """Ask for the desired set and apply it; False when nobody answered (skipped)."""
        env = command_envelope(HOSTNET_KIND, self.host, DesiredNetwork(),
                               timeout=self.call_timeout)
        try:
            reply = await self.bus.call(env, timeout=self.call_timeout)
        except (BusError, TimeoutError) as exc:
            log.warning("network_sync_skipped", host=self.host, reason=f"no answer: {exc!r}")
            return False
        if not reply.ok or reply.result is None:
            log.warning("network_sync_skipped", host=self.host,
                        reason=f"answered {reply.error_type}: {reply.error}")
            return False
        try:
            sync = _SYNC.decode(reply.result)
        except msgspec.DecodeError as exc:
            log.warning("network_sync_skipped", host=self.host, reason=f"bad answer: {exc}")
            return False
        await self.apply(sync, full=True)
        return True

    async def apply(self, sync: SyncNetwork, *, full: bool = False) -> tuple[str, ...] | None:
        """Make the host match ``sync.desired`` (plus pending spawns): everything
        (``full``, or after a failure) or what changed since the last set; the devices
        and DHCP servers removed, or None when ``sync`` is older than what was applied.
        A driver error is raised after everything else was done."""
        async with self._lock:
            if sync.position < self.position:
                log.info("network_sync_stale", host=self.host, position=sync.position,
                         applied=self.position)
                return None
            for port_id in sync.gone_ports:
                self._pending.pop(port_id, None)
            target, before = self._with_pending(sync.desired), self._target
            self._target = None  # until it is all done: a failure means a full one next
            try:
                if full or before is None:
                    removed = await self.network.reconcile(target)
                else:
                    removed = await self._converge(before, target)
            finally:
                self.desired, self.position = sync.desired, sync.position
            self._target = target
            self.applied += 1
        async with self._applied:
            self._applied.notify_all()
        log.info("network_synced", host=self.host, position=sync.position,
                 networks=len(target.networks), ports=len(target.ports),
                 pending=len(self._pending), removed=list(removed))
        await self._report_dhcp(sync.desired)
        return removed

    async def _converge(self, old: DesiredHostNetwork,
                        new: DesiredHostNetwork) -> tuple[str, ...]:
        """Ensure what ``new`` adds or changes over ``old``, remove what it drops."""
        failures: list[HostNetworkError] = []
        old_nets = {n.network_id: n for n in old.networks}
        new_nets = {n.network_id: n for n in new.networks}
        old_ports = {p.port_id: p for p in old.ports}
        new_ports = {p.port_id: p for p in new.ports}
        for network_id, spec in new_nets.items():
            if old_nets.get(network_id) != spec:
                await _attempt(failures, self.network.ensure_network(spec))
        for port_id, port in new_ports.items():
            if old_ports.get(port_id) != port:
                await _attempt(failures, self.network.ensure_port(port))
        removed: list[str] = []
        for port_id in old_ports.keys() - new_ports.keys():
            await _attempt(failures, self.network.remove_port(port_id,
                                                              old_ports[port_id].device))
            removed.append(old_ports[port_id].device)
        for network_id in old_nets.keys() - new_nets.keys():
            await _attempt(failures, self.network.remove_network(network_id))
            removed.append(f"network:{network_id}")
        if failures:
            raise failures[0]
        return tuple(removed)

    async def wait_for(self, check: Callable[[DesiredHostNetwork], bool]) -> None:
        """Return once a desired set for which ``check`` holds has been applied."""
        async with self._applied:
            await self._applied.wait_for(
                lambda: self.desired is not None and check(self.desired))

    def _with_pending(self, desired: DesiredHostNetwork) -> DesiredHostNetwork:
        """``desired`` plus the pending ports (and their networks) it does not have yet;
        pending ports it has, or past their grace, stop being pending."""
        now = self.clock()
        listed = {p.port_id for p in desired.ports}
        self._pending = {k: p for k, p in self._pending.items()
                         if k not in listed and now - p.since < self.pending_grace}
        return _merged(desired, self._pending.values())

    async def _report_dhcp(self, desired: DesiredHostNetwork) -> None:
        """Tell each DHCP port this host serves that it is plugged here (a hint: the
        next round tells it again if this is lost or came before the port's binding)."""
        for spec in desired.networks:
            if spec.dhcp is None or not spec.dhcp.port_id:
                continue
            env = command_envelope(PORT_ACTOR_KIND, spec.dhcp.port_id,
                                   DhcpPortPlugged(host_id=self.host), timeout=REPORT_DEADLINE)
            try:
                async with asyncio.timeout(self.call_timeout):
                    await self.bus.send(env)
            except (BusError, TimeoutError) as exc:
                log.warning("dhcp_port_report_failed", network_id=spec.network_id,
                            reason=repr(exc))

    # -- from spawns and destroys -------------------------------------------------------

    async def plug(self, networks: Iterable[NetworkSpec], ports: Iterable[PortSpec]) -> None:
        """Build a spawn's networks (keeping a carried network as it is) and plug its
        ports; they are pending until a desired set includes them. A new network is
        built without DHCP and peers: which host serves its DHCP, and who its peers are,
        only the desired set says."""
        networks = [msgspec.structs.replace(n, dhcp=None, peers=()) for n in networks]
        async with self._lock:
            carried = {n.network_id: n for n in (self.desired.networks if self.desired
                                                  else ())}
            by_id: dict[str, NetworkSpec] = {}
            for spec in networks:
                current = carried.get(spec.network_id)
                by_id[spec.network_id] = current or spec
                await self.network.ensure_network(current or spec)
            listed = {p.port_id for p in self.desired.ports} if self.desired else set()
            for port in ports:
                await self.network.ensure_port(port)
                network = by_id.get(port.network_id) or carried.get(port.network_id)
                if port.port_id not in listed and network is not None:
                    self._pending[port.port_id] = PendingPort(port=port, network=network,
                                                              since=self.clock())
            if self._target is not None:  # the host has them now: a push diffs from here
                self._target = _merged(self._target, self._pending.values())

    async def unplug(self, port_ids: Iterable[str]) -> None:
        """Unplug a destroyed domain's ports (the next desired set agrees)."""
        async with self._lock:
            gone = set(port_ids)
            for port_id in gone:
                self._pending.pop(port_id, None)
                await self.network.remove_port(port_id)
            if self._target is not None:
                self._target = msgspec.structs.replace(self._target, ports=tuple(
                    p for p in self._target.ports if p.port_id not in gone))


async def _attempt(failures: list[HostNetworkError], step: Awaitable[None]) -> None:
    """One step of a push; a HostNetworkError is logged and kept for the end."""
    try:
        await step
    except HostNetworkError as exc:
        log.warning("network_sync_step_failed", network_id=exc.network_id,
                    error=type(exc).__name__, reason=str(exc))
        failures.append(exc)


def _merged(desired: DesiredHostNetwork, pending: Iterable[PendingPort]) -> DesiredHostNetwork:
    """``desired`` plus the ``pending`` ports (and their networks) it lacks."""
    ports = {p.port_id for p in desired.ports}
    extra = [p for p in pending if p.port.port_id not in ports]
    if not extra:
        return desired
    nets = {n.network_id for n in desired.networks}
    extra_nets = {p.network.network_id: p.network for p in extra
                  if p.network.network_id not in nets}
    return DesiredHostNetwork(networks=(*desired.networks, *extra_nets.values()),
                              ports=(*desired.ports, *(p.port for p in extra)))
