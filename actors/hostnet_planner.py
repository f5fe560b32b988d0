"""The host network planner: tells each hostd what its network should be, from the log.

hostd never reads the log, so a worker does it for it (as the scheduler reads the hosts
view for placements). The planner

- answers ``hostnet.desired`` (kind ``hostnet``, actor id = host name) with the host's
  desired network read from the ``networking`` and ``hosts`` views (`actors.hostnet`
  decides what it is), and the log position it was read at;
- follows the log (the bus's event exchange, a durable queue shared by every worker's
  planner) for the events that change what a host carries: ports created, bound,
  unbound, updated, deleted or given addresses; subnets created, changed or deleted;
  networks deleted; hosts registered, changed, down or up. It notes which networks,
  ports and hosts they touch and, a moment later (``settle``: a burst of events becomes
  one round), waits until the views have folded them and pushes ``hostd.network_delta``
  with only what they touched (`actors.hostnet.delta_for`: those networks without their
  static DHCP entries, those ports, and their DHCP entries to the host that serves
  them) to the hosts that carry a touched network now, the hosts it last told about
  one, and the hosts an event names (where a deleted port was). A round reads the
  touched ports by id and which hosts carry a network from the ``net_carriers`` view,
  so its cost follows what changed, not how many ports a network has.

Before pushing it binds each touched network's DHCP port to the host that serves its
DHCP (Neutron shows the DHCP port on its agent's host); hostd reports it plugged once its
server runs, so the port goes ACTIVE. Pushes are hints: hostd pulls the whole set again
every reconcile period, so a lost push, or one skipped because this planner's memory of
what it sent is out of date (another worker's planner pushed since), heals then.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import structlog

from actors.client import ActorClient
from actors.host_views import TABLE as HOSTS_VIEW, read_hosts
from actors.hostnet import (
    DHCP_OWNER,
    HostInfo,
    NetworkFacts,
    NetworkLite,
    delta_for,
    desired_for,
    dhcp_server,
)
from actors.net_carriers import PROJECTION_NAME as CARRIERS_VIEW, carried_by, carriers_of
from actors.network import dhcp_port_id
from actors.network_views import (
    PROJECTION_NAME,
    PortView,
    Where,
    read_networks,
    read_ports,
    read_subnets,
)
from actors.port import KIND as PORT_KIND, BindPort
from bus.envelopes import command_envelope
from bus.errors import BadMessage, BusError
from bus.protocol import Bus, Delivery, Subscription
from bus.replies import answer
from bus.routing import HOST_KIND
from schemas import COMMAND_DECODER, ENCODER, EVENT_DECODER, CommandEnvelope, Reply, stream_kind
from schemas.hostd import HOSTNET_KIND, DesiredNetwork, SyncNetwork, SyncNetworkDelta
from schemas.hostnet import DesiredHostNetwork

log = structlog.get_logger(__name__)

#: the events that change what some host should carry
PATTERNS = (
    "port.created", "port.updated", "port.deleted", "port.bound", "port.unbound",
    "port.ip_bound", "port.ip_released", "subnet.created", "subnet.updated",
    "subnet.deleted", "network.deleted", "host.registered", "host.inventory_changed",
    "host.down", "host.up",
)
#: the events after which a port is no longer on the host it was bound to
GONE = ("port.deleted", "port.unbound")
#: the durable event queue the planners of every worker share
QUEUE = "hostnet-planner"
#: how long a pushed desired set may wait in a host's queue (the next pull replaces it)
PUSH_DEADLINE = 60.0
_QUERY = msgspec.json.Decoder(DesiredNetwork)


class _Touch(msgspec.Struct, kw_only=True):
    """The fields of a networking event that say what it touches (all optional)."""

    port_id: str | None = None
    subnet_id: str | None = None
    network_id: str | None = None
    host_id: str | None = None


_TOUCH = msgspec.json.Decoder(_Touch)


@dataclass
class Touched:
    """What the events since the last round touched, and the log position they reach."""

    networks: set[str] = field(default_factory=set)
    ports: set[str] = field(default_factory=set)
    subnets: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    #: ports deleted or unbound, by the host they were bound to
    gone: dict[str, set[str]] = field(default_factory=dict)
    position: int = 0

    def __bool__(self) -> bool:
        return bool(self.networks or self.ports or self.subnets or self.hosts)


class ViewStore(Protocol):
    """What the planner reads: the views, and how far they have folded the log."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...

    async def wait_for_projection(self, name: str, position: int, timeout: float) -> bool:
        ...

    async def projection_checkpoint(self, name: str) -> int:
        ...


class HostNetworkPlanner:
    """See the module. ``run()`` until cancelled (or ``shutdown()``)."""

    def __init__(self, store: ViewStore, bus: Bus, *, settle: float = 0.05,
                 wait_timeout: float = 10.0, call_timeout: float = 10.0) -> None:
        self.store = store
        self.bus = bus
        self.client = ActorClient(bus, timeout=call_timeout)
        self.settle = settle
        self.wait_timeout = wait_timeout
        self._touched = Touched()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        #: the networks this planner last told each host it carries
        self._sent: dict[str, set[str]] = {}
        #: rounds finished (for tests)
        self.rounds = 0

    async def run(self) -> None:
        subs: list[Subscription] = []
        try:
            subs.append(await self.bus.consume_commands(HOSTNET_KIND, self._on_query))
            subs.append(await self.bus.subscribe_events(QUEUE, PATTERNS, self._on_event))
            log.info("hostnet_planner_started")
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                while not self._stop.is_set():
                    await self._next_round(stopping)
            finally:
                stopping.cancel()
        finally:
            for sub in subs:
                with contextlib.suppress(BusError, TimeoutError):
                    async with asyncio.timeout(5):
                        await sub.cancel()

    def shutdown(self) -> None:
        self._stop.set()

    # -- the query -------------------------------------------------------------------------

    async def _on_query(self, delivery: Delivery) -> None:
        try:
            msg = COMMAND_DECODER.decode(delivery.body)
            _QUERY.decode(msg.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"not a hostnet.desired query: {exc}") from exc
        if dt.datetime.now(dt.UTC) > msg.deadline:
            return
        await answer(self.bus, msg, await self._answer(msg))

    async def _answer(self, msg: CommandEnvelope) -> Reply:
        position = await self.store.projection_checkpoint(PROJECTION_NAME)
        hosts = await self._hosts()
        desired = await self.desired(msg.actor_id, hosts, {})
        sync = SyncNetwork(desired=desired, position=position)
        return Reply(command_id=msg.command_id, ok=True, result=ENCODER.encode(sync).decode())

    # -- following the log -----------------------------------------------------------------

    async def _on_event(self, delivery: Delivery) -> None:
        try:
            event = EVENT_DECODER.decode(delivery.body)
            touch = _TOUCH.decode(event.data)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable event: {exc}") from exc
        t = self._touched
        if stream_kind(event.stream) == "host":
            t.hosts.add(event.stream.split(":", 1)[1])
        for value, into in ((touch.network_id, t.networks), (touch.port_id, t.ports),
                            (touch.subnet_id, t.subnets), (touch.host_id, t.hosts)):
            if value:
                into.add(value)
        if event.type in GONE and touch.host_id and touch.port_id:
            t.gone.setdefault(touch.host_id, set()).add(touch.port_id)
        t.position = max(t.position, event.position)
        self._wake.set()

    async def _next_round(self, stopping: asyncio.Future[Any]) -> None:
        waking = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waking.cancel()
        if self._stop.is_set():
            return
        await asyncio.sleep(self.settle)
        self._wake.clear()
        touched, self._touched = self._touched, Touched()
        if not touched:
            return
        try:
            await self.push(touched)
        except Exception as exc:  # a round lost is healed by the hosts' next pull
            log.warning("hostnet_round_failed", error=repr(exc))
        self.rounds += 1

    async def push(self, touched: Touched) -> list[str]:
        """One round: every host an event names, every host that carries a touched
        network, and every host this planner last told it carries one, is sent what the
        events touched (a named host may have plugged a port for a spawn before the log
        said so, which only a push can take back); the hosts sent to."""
        for view in (PROJECTION_NAME, HOSTS_VIEW, CARRIERS_VIEW):
            if not await self.store.wait_for_projection(view, touched.position,
                                                        self.wait_timeout):
                log.warning("hostnet_view_behind", view=view, position=touched.position)
        position = await self.store.projection_checkpoint(PROJECTION_NAME)
        hosts = await self._hosts()
        ports = await read_ports(self.store, Where().any_of("id", sorted(touched.ports))) \
            if touched.ports else []
        gone = touched.ports - {p.id for p in ports}
        nets = set(touched.networks) | {p.network_id for p in ports}
        nets |= await self._ids("SELECT network_id FROM net_subnets", "id", touched.subnets)
        nets |= await carried_by(self.store, sorted(touched.hosts))
        lites = await self._lites(nets)
        await self._bind_dhcp(lites.values(), hosts)
        views: dict[str, NetworkLite | None] = {n: lites.get(n) for n in nets}
        targets = set(touched.hosts) | set(touched.gone)
        targets |= {h for lite in lites.values() for h in lite.carriers}
        targets |= {h for h, sent in self._sent.items() if sent & nets}
        pushed = []
        for host in sorted(targets & set(hosts)):
            networks, port_changes = delta_for(host, views, ports, gone, hosts)
            sync = SyncNetworkDelta(position=position, networks=networks, ports=port_changes,
                                    gone_ports=tuple(sorted(touched.gone.get(host, ()))))
            await self.bus.send(command_envelope(HOST_KIND, host, sync, timeout=PUSH_DEADLINE))
            carried = {n.network_id for n in networks if n.spec is not None}
            self._sent[host] = (self._sent.get(host, set()) - nets) | carried
            pushed.append(host)
        log.info("hostnet_pushed", networks=len(nets), ports=len(touched.ports), hosts=pushed,
                 position=position, touched_position=touched.position,
                 touched_hosts=sorted(touched.hosts))
        return pushed

    async def _bind_dhcp(self, facts: Iterable[NetworkLite],
                         hosts: Mapping[str, HostInfo]) -> None:
        """Bind each network's DHCP port to the host that serves it (never unbound: its
        last server's host stays shown while no host carries the network)."""
        for f in facts:
            server = dhcp_server(f, hosts)
            port = f.dhcp_port
            if server is None or port is None or port.host_id == server:
                continue
            reply = await self.client.call(PORT_KIND, port.id, BindPort(
                host_id=server, device_id=port.device_id, device_owner=DHCP_OWNER))
            log.info("dhcp_port_bound", network_id=f.network.id, host=server, ok=reply.ok,
                     reason=reply.error)

    # -- reading the views -----------------------------------------------------------------

    async def desired(self, host: str, hosts: Mapping[str, HostInfo],
                      facts: dict[str, NetworkFacts]) -> DesiredHostNetwork:
        """What ``host`` should carry now (``facts`` is a cache, filled as needed)."""
        carried = await carried_by(self.store, [host])
        missing = carried - set(facts)
        if missing:
            facts.update(await self._facts(missing))
        return desired_for(host, (facts[n] for n in carried if n in facts), hosts)

    async def _hosts(self) -> dict[str, HostInfo]:
        """The compute hosts (a storage-only host carries no networks)."""
        return {h.id: HostInfo(id=h.id, up=h.up, underlay_ip=h.capacity.networks.underlay_ip
                               if h.capacity.networks else None)
                for h in await read_hosts(self.store) if h.capacity.compute}

    async def _ids(self, select: str, column: str, values: set[str]) -> set[str]:
        if not values:
            return set()
        where = Where().any_of(column, sorted(values))
        rows = await self.store.query(select + where.sql(), *where.args)
        return {r[0] for r in rows}

    async def _lites(self, network_ids: set[str]) -> dict[str, NetworkLite]:
        """The touched networks as a delta needs them: no port but the DHCP port."""
        if not network_ids:
            return {}
        ids = sorted(network_ids)
        nets = await read_networks(self.store, Where().any_of("id", ids))
        subnets = await read_subnets(self.store, Where().any_of("network_id", ids))
        bound = await carriers_of(self.store, ids)
        dhcp: dict[str, PortView] = {p.network_id: p for p in await read_ports(
            self.store, Where().any_of("id", [dhcp_port_id(n) for n in ids]))
            if p.device_owner == DHCP_OWNER}
        return {n.id: NetworkLite(
            network=n, subnets=tuple(s for s in subnets if s.network_id == n.id),
            carriers=bound.get(n.id, frozenset()), dhcp_port=dhcp.get(n.id)) for n in nets}

    async def _facts(self, network_ids: set[str]) -> dict[str, NetworkFacts]:
        if not network_ids:
            return {}
        ids = sorted(network_ids)
        nets = await read_networks(self.store, Where().any_of("id", ids))
        subnets = await read_subnets(self.store, Where().any_of("network_id", ids))
        ports = await read_ports(self.store, Where().any_of("network_id", ids))
        return {n.id: NetworkFacts(
            network=n, subnets=tuple(s for s in subnets if s.network_id == n.id),
            ports=tuple(p for p in ports if p.network_id == n.id)) for n in nets}
