"""Telling the ``host`` actor what a host offers: the start-up report, then heartbeats.

Shared by every host role (hostd for compute, storaged for volumes): a host is up once
its first capacity report is recorded and goes down when its beats stop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from bus.envelopes import command_envelope
from bus.errors import BusError
from bus.protocol import Bus
from schemas import CommandEnvelope
from schemas.hostd import HOST_ACTOR_KIND, Capacity, CapacityReport, HostBeat

log = structlog.get_logger(__name__)

#: the longest pause between attempts to deliver the start-up capacity report
MAX_REPORT_BACKOFF = 30.0


def host_envelope(host: str, command: msgspec.Struct, *, timeout: float) -> CommandEnvelope:
    """Wrap ``command`` for the ``host`` actor named ``host``, due within ``timeout`` s."""
    return command_envelope(HOST_ACTOR_KIND, host, command, timeout=timeout)


class CapacityReporter:
    """Reports ``measure()`` for ``host``: once at start (retried with backoff until the
    host actor answers; ``reported`` is set then), then a beat every ``heartbeat_every``
    seconds (cast, stale after one period). ``errors`` are what ``measure`` may raise
    besides a timeout; each is logged and the next attempt follows."""

    def __init__(self, bus: Bus, host: str, measure: Callable[[], Awaitable[Capacity]], *,
                 heartbeat_every: float, call_timeout: float,
                 errors: tuple[type[Exception], ...] = ()) -> None:
        self.bus = bus
        self.host = host
        self.measure = measure
        self.heartbeat_every = heartbeat_every
        self.call_timeout = call_timeout
        self.errors: tuple[type[Exception], ...] = (BusError, TimeoutError, *errors)
        self.reported = asyncio.Event()

    async def _capacity(self) -> Capacity:
        async with asyncio.timeout(self.call_timeout):
            return await self.measure()

    async def report(self) -> None:
        """Report capacity once, retrying (with backoff) until the host actor answers."""
        backoff = min(0.5, self.heartbeat_every)
        while True:
            try:
                capacity = await self._capacity()
                now = dt.datetime.now(dt.UTC)
                env = host_envelope(self.host, CapacityReport(capacity=capacity, at=now),
                                    timeout=self.call_timeout)
                reply = await self.bus.call(env, timeout=self.call_timeout)
            except self.errors as exc:
                log.warning("capacity_report_failed", host=self.host, reason=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REPORT_BACKOFF)
                continue
            log.info("capacity_reported", host=self.host, ok=reply.ok, error=reply.error,
                     vcpus=capacity.vcpus, ram_mb=capacity.ram_mb, disk_gb=capacity.disk_gb,
                     storage_gb=capacity.storage.total_gb if capacity.storage else None)
            self.reported.set()
            return

    async def beat_loop(self) -> None:
        """A beat every ``heartbeat_every`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                await self.beat()
            except self.errors as exc:
                log.warning("heartbeat_failed", host=self.host, reason=str(exc))

    async def beat(self) -> None:
        """One beat; none if the host cannot measure itself."""
        capacity = await self._capacity()
        now = dt.datetime.now(dt.UTC)
        env = host_envelope(self.host, HostBeat(capacity=capacity, at=now),
                            timeout=max(self.heartbeat_every, 1.0))
        async with asyncio.timeout(self.call_timeout):
            await self.bus.send(env)
