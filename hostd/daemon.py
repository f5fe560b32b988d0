"""The host daemon: reports capacity, heartbeats, and serves ``compute.<host>`` commands.

hostd never writes the log: it tells the ``host`` actor what it measured (capacity at
start, then a beat every ``heartbeat_every`` seconds) and answers the commands routed to
its host queue with Replies (see hostd.commands for their conventions).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid

import msgspec
import structlog

from bus.errors import BadMessage, BusError
from bus.protocol import Bus, Delivery
from bus.replies import answer
from bus.routing import HOST_KIND
from hostd.commands import HostCommands, decode_command
from hostd.hypervisor import Hypervisor, HypervisorError
from schemas import COMMAND_DECODER, ENCODER, CommandEnvelope
from schemas.hostd import HOST_ACTOR_KIND, Capacity, CapacityReport, HostBeat

log = structlog.get_logger(__name__)

#: the longest pause between attempts to deliver the start-up capacity report
MAX_REPORT_BACKOFF = 30.0


class Redeliver(Exception):
    """A cast command failed in a way worth retrying: let the bus deliver it again."""


def host_envelope(host: str, command: msgspec.Struct, *, timeout: float) -> CommandEnvelope:
    """Wrap ``command`` for the ``host`` actor named ``host``, due within ``timeout`` s."""
    return CommandEnvelope(
        command_id=str(uuid.uuid4()),
        kind=HOST_ACTOR_KIND,
        actor_id=host,
        type=type(command).__struct_config__.tag,  # type: ignore[arg-type]
        body=msgspec.Raw(ENCODER.encode(command)),
        correlation_id=f"req-{uuid.uuid4()}",
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout),
    )


class HostDaemon:
    """One host's daemon. ``run()`` until ``shutdown()`` (idempotent) or cancellation."""

    def __init__(
        self, bus: Bus, hypervisor: Hypervisor, host: str, *, heartbeat_every: float = 5.0,
        call_timeout: float = 10.0, prefetch: int = 32,
    ) -> None:
        if heartbeat_every <= 0 or call_timeout <= 0:
            raise ValueError("heartbeat_every and call_timeout must be positive")
        self.bus = bus
        self.hypervisor = hypervisor
        self.host = host
        self.heartbeat_every = heartbeat_every
        self.call_timeout = call_timeout
        self.prefetch = prefetch
        self.commands = HostCommands(hypervisor)
        self.reported = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Consume the host queue, report capacity, beat; return after ``shutdown()``."""
        log.info("hostd_starting", host=self.host, heartbeat_every=self.heartbeat_every)
        sub = await self.bus.consume_host(self.host, self._on_delivery, prefetch=self.prefetch)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._report(), name="hostd-report"),
                         tg.create_task(self._beat_loop(), name="hostd-beat")]
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            with contextlib.suppress(BusError, TimeoutError):
                async with asyncio.timeout(self.call_timeout):
                    await sub.cancel()
            log.info("hostd_stopped", host=self.host)

    def shutdown(self) -> None:
        """Ask ``run()`` to stop consuming and beating (the hypervisor stays open)."""
        self._stop.set()

    # -- telling the host actor ------------------------------------------------------------

    async def _report(self) -> None:
        """Report capacity once, retrying (with backoff) until the host actor answers."""
        backoff = min(0.5, self.heartbeat_every)
        while True:
            try:
                capacity = await self._capacity()
                now = dt.datetime.now(dt.UTC)
                env = host_envelope(self.host, CapacityReport(capacity=capacity, at=now),
                                    timeout=self.call_timeout)
                reply = await self.bus.call(env, timeout=self.call_timeout)
            except (HypervisorError, BusError, TimeoutError) as exc:
                log.warning("capacity_report_failed", host=self.host, reason=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REPORT_BACKOFF)
                continue
            log.info("capacity_reported", host=self.host, ok=reply.ok, error=reply.error,
                     vcpus=capacity.vcpus, ram_mb=capacity.ram_mb, disk_gb=capacity.disk_gb)
            self.reported.set()
            return

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                await self._beat()
            except (HypervisorError, BusError, TimeoutError) as exc:
                log.warning("heartbeat_failed", host=self.host, reason=str(exc))

    async def _beat(self) -> None:
        """One beat (cast, stale after one period); none if the hypervisor does not answer."""
        capacity = await self._capacity()
        now = dt.datetime.now(dt.UTC)
        env = host_envelope(self.host, HostBeat(capacity=capacity, at=now),
                            timeout=max(self.heartbeat_every, 1.0))
        async with asyncio.timeout(self.call_timeout):
            await self.bus.send(env)

    async def _capacity(self) -> Capacity:
        async with asyncio.timeout(self.call_timeout):
            return await self.hypervisor.capacity()

    # -- serving compute.<host> ------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        msg = self._envelope(delivery)
        command = decode_command(msg)
        structlog.contextvars.bind_contextvars(
            correlation_id=msg.correlation_id, instance_id=command.instance_id)
        try:
            reply = await self.commands.handle(msg, command)
            if msg.reply_to:
                await answer(self.bus, msg, reply)
            elif reply.retryable and reply.error_type != "deadline_exceeded":
                raise Redeliver(f"{msg.type} failed, worth retrying: {reply.error}")
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id", "instance_id")

    def _envelope(self, delivery: Delivery) -> CommandEnvelope:
        try:
            msg = COMMAND_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable command: {exc}") from exc
        if msg.kind != HOST_KIND or msg.actor_id != self.host:
            raise BadMessage(f"command for {msg.kind}:{msg.actor_id} reached host {self.host}")
        return msg
