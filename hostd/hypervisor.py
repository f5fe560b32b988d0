"""The Hypervisor seam: define, run and observe domains; its errors and observation fan-out.

HypervisorError            base; ``retryable`` says whether trying again may help
├── DomainNotFound         the hypervisor does not know the domain
├── DomainStateError       the operation is not valid in the domain's current state
└── HypervisorUnavailable  the hypervisor cannot be reached or did not answer (retryable)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import structlog

from schemas.hostd import (
    Capacity,
    DomainSpec,
    DomainState,
    Observation,
    ShutdownOutcome,
    VolumeDisk,
)

log = structlog.get_logger(__name__)

#: Observations a subscriber may fall behind by before the oldest are dropped.
OBSERVATION_BACKLOG = 1000


class HypervisorError(Exception):
    """Base of every hypervisor error."""

    retryable = False

    def __init__(self, message: str, *, uuid: str | None = None) -> None:
        super().__init__(message)
        self.uuid = uuid


class DomainNotFound(HypervisorError):
    """No domain with this uuid is defined on the host."""

    def __init__(self, uuid: str) -> None:
        super().__init__(f"domain {uuid} not found", uuid=uuid)


class DomainStateError(HypervisorError):
    """The domain is in a state where the operation makes no sense (e.g. soft reboot
    of a shut-off domain)."""


class HypervisorUnavailable(HypervisorError):
    """The hypervisor connection failed or a call ran past its timeout."""

    retryable = True


class Hypervisor(Protocol):
    """One host's hypervisor. Every method is safe to call concurrently from the loop.

    Domains are addressed by uuid (the instance id). ``define``, ``start``, ``destroy``
    and ``undefine`` are idempotent; acting on an unknown uuid raises DomainNotFound,
    except ``undefine`` (nothing to do) and ``state`` (``missing``).
    """

    async def define(self, spec: DomainSpec) -> None:
        """Define a persistent domain, or update the definition of the same uuid."""
        ...

    async def start(self, uuid: str) -> None:
        """Boot the domain; a running domain is left alone."""
        ...

    async def shutdown(self, uuid: str, timeout: float) -> ShutdownOutcome:
        """Ask the guest to power off (ACPI), wait up to ``timeout`` seconds for it to
        be shut off, then destroy it; say which of these happened."""
        ...

    async def reboot(self, uuid: str, *, hard: bool = False) -> None:
        """Soft: ask the running guest to reboot (DomainStateError if not running).
        Hard: power off at once if running, then boot from the current definition."""
        ...

    async def destroy(self, uuid: str) -> None:
        """Power off at once (pulling the plug); a shut-off domain is left alone."""
        ...

    async def undefine(self, uuid: str) -> None:
        """Destroy if running, then forget the domain; an unknown uuid is no error."""
        ...

    async def state(self, uuid: str) -> DomainState:
        """The domain's power state, ``missing`` if the hypervisor does not know it."""
        ...

    async def list_domains(self) -> dict[str, DomainState]:
        """Every domain on the host (also those Orrery did not define), by uuid."""
        ...

    async def managed_domains(self) -> dict[str, DomainState]:
        """The domains Orrery defined (the only ones a reconcile may remove), by uuid."""
        ...

    async def capacity(self) -> Capacity:
        """What the host offers in total (not what is free)."""
        ...

    async def attach_disk(self, uuid: str, disk: VolumeDisk) -> None:
        """Attach a volume's disk: live when the domain runs, and to its persistent
        definition always. The same disk on the same device again is no error; another
        file on that device is DomainStateError."""
        ...

    async def detach_disk(self, uuid: str, device: str) -> None:
        """Detach the disk on ``device`` live and from the persistent definition; a
        device with no disk is no error."""
        ...

    async def disks(self, uuid: str) -> dict[str, str]:
        """The volume disks of the domain's persistent definition: device -> file."""
        ...

    def observe(self) -> ObservationStream:
        """Subscribe to lifecycle observations from now on, until the stream is closed."""
        ...

    async def close(self) -> None:
        """Release the connection; every open observation stream ends."""
        ...


class ObservationStream:
    """One subscriber's observations, in the order the hypervisor reported them.

    Iterate with ``async for``, or ``await next_observation(timeout)``. A subscriber
    that falls more than OBSERVATION_BACKLOG behind loses the oldest ones (logged):
    observations are hints, the periodic reconcile is the truth.
    """

    def __init__(self, hub: ObservationHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Observation | None] = asyncio.Queue(OBSERVATION_BACKLOG)
        self._closed = False

    def _put(self, item: Observation | None) -> None:
        if self._queue.full():
            dropped = self._queue.get_nowait()
            log.warning("observation_dropped", uuid=getattr(dropped, "uuid", None))
        self._queue.put_nowait(item)

    async def next_observation(self, timeout: float) -> Observation:
        """The next observation; TimeoutError if none comes within ``timeout`` seconds,
        StopAsyncIteration once the stream is closed."""
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> AsyncIterator[Observation]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Observation]:
        while (item := await self._queue.get()) is not None:
            yield item
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop receiving; a waiting iteration ends."""
        if not self._closed:
            self._closed = True
            self._hub.unsubscribe(self)
            self._put(None)


class ObservationHub:
    """Fans observations out to every open stream. Call ``publish`` on the event loop."""

    def __init__(self) -> None:
        self._streams: set[ObservationStream] = set()

    def subscribe(self) -> ObservationStream:
        stream = ObservationStream(self)
        self._streams.add(stream)
        return stream

    def unsubscribe(self, stream: ObservationStream) -> None:
        self._streams.discard(stream)

    def publish(self, observation: Observation) -> None:
        log.debug(
            "domain_observed", uuid=observation.uuid, lifecycle=observation.event,
            detail=observation.detail, state=observation.state,
        )
        for stream in list(self._streams):
            stream._put(observation)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()
