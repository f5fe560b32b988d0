"""The host daemon: reports capacity, heartbeats, serves ``compute.<host>``, observes, reconciles.

hostd never writes the log: it tells the ``host`` actor what it measured (capacity at
start, then a beat every ``heartbeat_every`` seconds), answers the commands routed to
its host queue with Replies (see hostd.commands for their conventions), forwards each
lifecycle observation of an instance's domain to that instance actor
(``instance.observed``), and reconciles after the capacity report and then every
``reconcile_every`` seconds: its domains (see hostd.reconcile) and, with a network
driver, its network (see hostd.netsync), which the control plane also pushes
(``hostd.network``) when the log changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import msgspec
import structlog

from bus.errors import BadMessage, BusError
from bus.protocol import Bus, Delivery
from bus.replies import answer, parse_actor_address
from bus.routing import HOST_KIND
from hostd.commands import HostCommands, decode_command
from hostd.hypervisor import Hypervisor, HypervisorError, ObservationStream
from hostd.image_cache import ImageCache
from hostd.netsync import NetworkSync
from hostd.network import HostNetwork, HostNetworkError
from hostd.reconcile import Reconciler, is_instance_id, observed_envelope
from hostd.reporting import CapacityReporter
from schemas import COMMAND_DECODER, CommandEnvelope, Reply
from schemas.hostd import (
    Capacity,
    InstanceObserved,
    Observation,
    SyncNetwork,
    SyncNetworkDelta,
)

log = structlog.get_logger(__name__)

class Redeliver(Exception):
    """A cast command failed in a way worth retrying: let the bus deliver it again."""


#: lifecycle events forwarded to instance actors (defined/undefined change no power state;
#: a missing domain is for the reconcile to report)
FORWARDED_EVENTS = frozenset({"started", "stopped", "suspended", "resumed", "shutdown",
                              "crashed", "pmsuspended", "rebooted"})


class HostDaemon:
    """One host's daemon. ``run()`` until ``shutdown()`` (idempotent) or cancellation.

    ``images``: the cache spawns with an image boot from (None: ``spec.image_path`` as
    given). A managed domain no instance claims is removed after ``orphan_grace`` s.
    ``network``: the driver that builds networks and plugs ports (None: no networking;
    a spawn with ports fails). Its capabilities go with every capacity report.
    """

    def __init__(
        self, bus: Bus, hypervisor: Hypervisor, host: str, *, heartbeat_every: float = 5.0,
        call_timeout: float = 10.0, prefetch: int = 32, images: ImageCache | None = None,
        reconcile_every: float = 60.0, orphan_grace: float = 300.0,
        network: HostNetwork | None = None,
    ) -> None:
        if heartbeat_every <= 0 or call_timeout <= 0 or reconcile_every <= 0:
            raise ValueError("heartbeat_every, call_timeout, reconcile_every must be positive")
        self.bus = bus
        self.hypervisor = hypervisor
        self.host = host
        self.heartbeat_every = heartbeat_every
        self.call_timeout = call_timeout
        self.prefetch = prefetch
        self.images = images
        self.reconcile_every = reconcile_every
        self.network = network
        self.sync = None if network is None else NetworkSync(
            bus, network, host, call_timeout=call_timeout)
        self.commands = HostCommands(hypervisor, images, self.sync)
        self.reconciler = Reconciler(bus, hypervisor, host, orphan_grace=orphan_grace,
                                     call_timeout=call_timeout, busy=self.commands.busy)
        self.reporter = CapacityReporter(bus, host, self._capacity,
                                         heartbeat_every=heartbeat_every,
                                         call_timeout=call_timeout, errors=(HypervisorError,))
        self.reported = self.reporter.reported
        #: rounds of reconciliation finished (skipped ones not counted)
        self.reconciled = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Consume the host queue, report capacity, beat; return after ``shutdown()``."""
        log.info("hostd_starting", host=self.host, heartbeat_every=self.heartbeat_every,
                 reconcile_every=self.reconcile_every,
                 orphan_grace=self.reconciler.orphan_grace, image_cache=self.images is not None)
        if self.images is not None:
            await self.images.sweep_partials()
        observations = self.hypervisor.observe()
        try:
            sub = await self.bus.consume_host(self.host, self._on_delivery,
                                              prefetch=self.prefetch)
        except BaseException:
            observations.close()
            raise
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.reporter.report(), name="hostd-report"),
                         tg.create_task(self.reporter.beat_loop(), name="hostd-beat"),
                         tg.create_task(self._forward(observations), name="hostd-observe"),
                         tg.create_task(self._reconcile_loop(), name="hostd-reconcile")]
                if self.sync is not None:
                    tasks.append(tg.create_task(self._network_loop(self.sync),
                                                name="hostd-network"))
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            observations.close()
            with contextlib.suppress(BusError, TimeoutError):
                async with asyncio.timeout(self.call_timeout):
                    await sub.cancel()
            log.info("hostd_stopped", host=self.host)

    def shutdown(self) -> None:
        """Ask ``run()`` to stop consuming and beating (the hypervisor stays open)."""
        self._stop.set()

    # -- telling the host actor ------------------------------------------------------------

    async def _capacity(self) -> Capacity:
        capacity = await self.hypervisor.capacity()
        if self.network is not None:
            capacity = msgspec.structs.replace(
                capacity, networks=await self.network.capabilities())
        return capacity

    # -- observing and reconciling ----------------------------------------------------------

    async def _forward(self, observations: ObservationStream) -> None:
        """Tell each instance actor what happened to its domain, in the order seen."""
        async for observation in observations:
            if not self._worth_forwarding(observation):
                continue
            observed = InstanceObserved(
                host=self.host, state=observation.state, event=observation.event,
                detail=observation.detail, observed_at=observation.observed_at)
            try:
                async with asyncio.timeout(self.call_timeout):
                    await self.bus.send(observed_envelope(observation.uuid, observed))
            except (BusError, TimeoutError) as exc:  # a hint only: the reconcile is the truth
                log.warning("observation_not_sent", instance_id=observation.uuid,
                            lifecycle=observation.event, reason=repr(exc))
                continue
            log.info("domain_observed_sent", instance_id=observation.uuid,
                     lifecycle=observation.event, detail=observation.detail,
                     state=observation.state)

    def _worth_forwarding(self, observation: Observation) -> bool:
        """Lifecycle changes of instance domains that no command of ours is causing (the
        command's Reply reports those)."""
        return (observation.event in FORWARDED_EVENTS and is_instance_id(observation.uuid)
                and not self.commands.caused(observation.uuid, observation.observed_at))

    async def _reconcile_loop(self) -> None:
        await self.reported.wait()
        while True:
            try:
                if await self.reconciler.run_once() is not None:
                    self.reconciled += 1
            except (BusError, TimeoutError) as exc:
                log.warning("reconcile_failed", host=self.host, reason=repr(exc))
            await asyncio.sleep(self.reconcile_every)

    async def _network_loop(self, sync: NetworkSync) -> None:
        """Ask for the host's desired network after the capacity report, then every
        ``reconcile_every`` seconds (pushes come in between)."""
        await self.reported.wait()
        while True:
            try:
                await sync.pull()
            except HostNetworkError as exc:
                log.warning("network_sync_failed", host=self.host, error=type(exc).__name__,
                            reason=str(exc))
            await asyncio.sleep(self.reconcile_every)

    # -- serving compute.<host> ------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        msg = self._envelope(delivery)
        command = decode_command(msg)
        if isinstance(command, SyncNetwork | SyncNetworkDelta):
            await self._on_sync(msg, command)
            return
        structlog.contextvars.bind_contextvars(
            correlation_id=msg.correlation_id, instance_id=command.instance_id)

        async def interim(reply: Reply) -> None:
            await self._interim(msg, reply)

        try:
            reply = await self.commands.handle(msg, command, interim)
            if msg.reply_to:
                await answer(self.bus, msg, reply)
            elif reply.retryable and reply.error_type != "deadline_exceeded":
                raise Redeliver(f"{msg.type} failed, worth retrying: {reply.error}")
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id", "instance_id")

    async def _on_sync(self, msg: CommandEnvelope,
                       command: SyncNetwork | SyncNetworkDelta) -> None:
        """A pushed desired network, whole or a delta. Past its deadline or failing, it
        is logged and dropped: the next pull carries the whole desired set again."""
        if self.sync is None:
            log.warning("network_sync_ignored", host=self.host, reason="no network driver")
            return
        if dt.datetime.now(dt.UTC) > msg.deadline:
            log.info("network_sync_expired", host=self.host, position=command.position)
            return
        try:
            if isinstance(command, SyncNetworkDelta):
                await self.sync.apply_delta(command)
            else:
                await self.sync.apply(command)
        except HostNetworkError as exc:
            log.warning("network_sync_failed", host=self.host, error=type(exc).__name__,
                        reason=str(exc))

    async def _interim(self, msg: CommandEnvelope, reply: Reply) -> None:
        """Send an interim Reply, only to an actor caller: a plain call's reply queue takes
        one answer, the final one. Losing it is logged, not fatal (the final one follows)."""
        if not msg.reply_to or parse_actor_address(msg.reply_to) is None:
            return
        try:
            async with asyncio.timeout(self.call_timeout):
                await answer(self.bus, msg, reply)
        except (BusError, TimeoutError) as exc:
            log.warning("interim_reply_not_sent", result=reply.result, reason=repr(exc))

    def _envelope(self, delivery: Delivery) -> CommandEnvelope:
        try:
            msg = COMMAND_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable command: {exc}") from exc
        if msg.kind != HOST_KIND or msg.actor_id != self.host:
            raise BadMessage(f"command for {msg.kind}:{msg.actor_id} reached host {self.host}")
        return msg
