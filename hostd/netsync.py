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

Pushes are deltas (``hostd.network_delta``): only the networks and ports a change of the
log touched, and on a network this host serves DHCP for only those ports' static
entries, which the driver changes one by one (``update_dhcp_hosts``), so a push costs
what changed, not what the host carries. What was applied is kept by network, port and
DHCP entry (`hostd.netstate`); each entry of a delta is applied unless a newer one for
the same key was. A delta that cannot be applied on what is there (no set applied yet,
the last apply failed, this host is to serve a network's DHCP it does not serve yet, or
the network's DHCP-enabled subnets changed, which changes every entry) is answered by
a pull of the whole set instead.

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
from hostd.netstate import NetState, served_subnets
from hostd.network import HostNetwork, HostNetworkError
from schemas.hostd import (
    HOSTNET_KIND,
    PORT_ACTOR_KIND,
    DesiredNetwork,
    DhcpPortPlugged,
    SyncNetwork,
    SyncNetworkDelta,
)
from schemas.hostnet import (
    DesiredHostNetwork,
    NetworkChange,
    NetworkSpec,
    PortChange,
    PortSpec,
    port_device,
)

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
        #: what was applied (the last set and the deltas since), and the newest log
        #: position of any of it
        self.state: NetState | None = None
        self.position = -1
        #: rounds applied (pulls and pushes), for tests and logs
        self.applied = 0
        #: deltas answered with a pull instead, for tests and logs
        self.pulled_for_delta = 0
        self._pending: dict[str, PendingPort] = {}
        #: networks a spawn built that no desired set has (yet): a delta that says the
        #: host does not carry one removes it, once no pending port is on it
        self._spawned: set[str] = set()
        #: whether the host was made to match all of ``state`` (plus pending ports): a
        #: failure leaves it False, and the next push is then a full reconcile
        self._clean = False
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
            before = self._host_has() if self._clean and not full else None
            for port_id in sync.gone_ports:
                self._pending.pop(port_id, None)
            target = self._with_pending(sync.desired)
            self._clean = False  # until it is all done: a failure means a full one next
            try:
                if before is None:
                    removed = await self.network.reconcile(target)
                else:
                    removed = await self._converge(before, target)
            finally:
                self.state, self.position = NetState(sync.desired, sync.position), sync.position
                self._spawned = {p.network.network_id for p in self._pending.values()} \
                    - set(self.state.networks)
            self._clean = True
            self.applied += 1
        async with self._applied:
            self._applied.notify_all()
        log.info("network_synced", host=self.host, position=sync.position,
                 networks=len(target.networks), ports=len(target.ports),
                 pending=len(self._pending), removed=list(removed))
        await self._report_dhcp(sync.desired)
        return removed

    async def apply_delta(self, delta: SyncNetworkDelta) -> tuple[str, ...] | None:
        """Apply what ``delta`` changes (see the module): the devices removed, or None
        when it was answered with a pull (whose outcome ``pull`` logs). A driver error
        is raised after everything else was done."""
        async with self._lock:
            state = self.state
            whole = state is None or not self._clean or any(
                _needs_whole(state, change) for change in delta.networks)
            if not whole:
                assert state is not None
                self._clean = False
                removed = await self._apply_delta(state, delta)
                self._clean = True
                self.position = max(self.position, delta.position)
                self.applied += 1
        if whole:
            self.pulled_for_delta += 1
            log.info("network_delta_pulls", host=self.host, position=delta.position)
            await self.pull()
            return None
        async with self._applied:
            self._applied.notify_all()
        log.info("network_delta_applied", host=self.host, position=delta.position,
                 networks=len(delta.networks), ports=len(delta.ports), removed=list(removed))
        return removed

    async def _apply_delta(self, state: NetState, delta: SyncNetworkDelta) -> tuple[str, ...]:
        failures: list[HostNetworkError] = []
        removed: list[str] = []
        for port_id in delta.gone_ports:
            if self._pending.pop(port_id, None) is not None and port_id not in state.ports:
                await _attempt(failures, self.network.remove_port(port_id))
                removed.append(port_device(port_id))
        for change in delta.networks:
            removed += await self._network_change(state, change, delta.position, failures)
        for port in delta.ports:
            removed += await self._port_change(state, port, delta.position, failures)
        if failures:
            raise failures[0]
        return tuple(removed)

    async def _network_change(self, state: NetState, change: NetworkChange, position: int,
                              failures: list[HostNetworkError]) -> list[str]:
        network_id, spec = change.network_id, change.spec
        if spec is None:
            here = network_id in state.networks or network_id in self._spawned
            if not here or any(p.network.network_id == network_id
                               for p in self._pending.values()):
                return []  # not here, or kept for a spawn's port (as a full set does)
            if not state.fresh(f"net:{network_id}", position):
                return []
            self._spawned.discard(network_id)
            gone = state.drop_network(network_id)
            await _attempt(failures, self.network.remove_network(network_id))
            return [*(p.device for p in gone), f"network:{network_id}"]
        if state.fresh(f"net:{network_id}", position) and state.networks.get(network_id) != spec:
            self._spawned.discard(network_id)
            state.set_network(spec)
            await _attempt(failures, self.network.ensure_network(state.spec(network_id)))
        if spec.dhcp is not None and change.dhcp and network_id in state.entries:
            added, gone_entries = state.change_entries(network_id, change.dhcp, position)
            if added or gone_entries:
                await _attempt(failures, self.network.update_dhcp_hosts(
                    network_id, added, gone_entries))
        return []

    async def _port_change(self, state: NetState, change: PortChange, position: int,
                           failures: list[HostNetworkError]) -> list[str]:
        port_id = change.port_id
        if not state.fresh(f"port:{port_id}", position):
            return []
        if change.port is None:
            old = state.ports.pop(port_id, None)
            if old is None or port_id in self._pending:
                return []
            await _attempt(failures, self.network.remove_port(port_id, old.device))
            return [old.device]
        self._pending.pop(port_id, None)
        if state.ports.get(port_id) != change.port:
            state.ports[port_id] = change.port
            await _attempt(failures, self.network.ensure_port(change.port))
        return []

    def _host_has(self) -> DesiredHostNetwork:
        """What the host was made to match: the applied state plus the pending ports."""
        assert self.state is not None
        return _merged(self.state.desired(), self._pending.values())

    @property
    def desired(self) -> DesiredHostNetwork | None:
        """The desired set as applied (the last set and the deltas since), if any."""
        return None if self.state is None else self.state.desired()

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
            state = self.state
            by_id: dict[str, NetworkSpec] = {}
            for spec in networks:
                if state is not None and spec.network_id in state.networks:
                    by_id[spec.network_id] = state.networks[spec.network_id]
                    if not self._clean:  # built as carried only if the last apply was whole
                        await self.network.ensure_network(state.spec(spec.network_id))
                    continue
                by_id[spec.network_id] = spec
                await self.network.ensure_network(spec)
                self._spawned.add(spec.network_id)
            for port in ports:
                await self.network.ensure_port(port)
                network = by_id.get(port.network_id) or (
                    state.networks.get(port.network_id) if state is not None else None)
                if (state is None or port.port_id not in state.ports) and network is not None:
                    self._pending[port.port_id] = PendingPort(port=port, network=network,
                                                              since=self.clock())

    async def unplug(self, port_ids: Iterable[str]) -> None:
        """Unplug a destroyed domain's ports (the next desired set agrees)."""
        async with self._lock:
            gone = set(port_ids)
            for port_id in gone:
                self._pending.pop(port_id, None)
                await self.network.remove_port(port_id)


async def _attempt(failures: list[HostNetworkError], step: Awaitable[None]) -> None:
    """One step of a push; a HostNetworkError is logged and kept for the end."""
    try:
        await step
    except HostNetworkError as exc:
        log.warning("network_sync_step_failed", network_id=exc.network_id,
                    error=type(exc).__name__, reason=str(exc))
        failures.append(exc)


def _needs_whole(state: NetState, change: NetworkChange) -> bool:
    """Whether ``change`` makes this host serve a network's DHCP whose entries it does
    not have (it did not serve it, or the subnets that have entries changed)."""
    served = served_subnets(change.spec)
    return served is not None and served != served_subnets(state.networks.get(
        change.network_id))


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
