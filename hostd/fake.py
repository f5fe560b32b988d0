"""An in-memory hypervisor with the libvirt driver's semantics and injectable faults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import structlog

from hostd.hypervisor import (
    DomainNotFound,
    DomainStateError,
    HypervisorError,
    HypervisorUnavailable,
    ObservationHub,
    ObservationStream,
)
from schemas.hostd import (
    Capacity,
    DomainSpec,
    DomainState,
    Observation,
    ShutdownOutcome,
    VolumeDisk,
)

log = structlog.get_logger(__name__)

DEFAULT_CAPACITY = Capacity(vcpus=16, ram_mb=65536, disk_gb=1000)
_ACTIVE = (DomainState.RUNNING, DomainState.PAUSED)


class _Domain(msgspec.Struct, kw_only=True):
    spec: DomainSpec
    state: DomainState = DomainState.SHUTOFF
    managed: bool = True
    disks: dict[str, VolumeDisk] = {}


class FakeHypervisor:
    """Domains in a dict; passes the same contract suite as LibvirtHypervisor.

    Faults: ``fail_start`` / ``fail_define`` are uuids whose start / define raise a
    (non-retryable) HypervisorError; ``shutdown_delay`` is how long a guest takes to
    honour an ACPI shutdown, None for a guest that ignores it; ``fail_attach`` are
    volume files (paths) whose attach raises HypervisorError; ``attach_delay`` is how
    long an attach or detach takes.
    """

    def __init__(
        self,
        *,
        capacity: Capacity = DEFAULT_CAPACITY,
        fail_start: Iterable[str] = (),
        fail_define: Iterable[str] = (),
        shutdown_delay: float | None = 0.0,
        fail_attach: Iterable[str] = (),
        attach_delay: float = 0.0,
    ) -> None:
        self._capacity = capacity
        self._fail_start = frozenset(fail_start)
        self._fail_define = frozenset(fail_define)
        self._shutdown_delay = shutdown_delay
        self.fail_attach = set(fail_attach)
        self.attach_delay = attach_delay
        self._domains: dict[str, _Domain] = {}
        self._hub = ObservationHub()
        self._closed = False

    async def define(self, spec: DomainSpec) -> None:
        await self._call()
        if spec.uuid in self._fail_define:
            raise HypervisorError(f"injected define failure for {spec.uuid}", uuid=spec.uuid)
        known = self._domains.get(spec.uuid)
        if known is None:
            self._domains[spec.uuid] = _Domain(spec=spec)
            self._emit(spec.uuid, "defined", "added")
        elif known.spec != spec:
            known.spec = spec
            self._emit(spec.uuid, "defined", "updated")

    async def start(self, uuid: str) -> None:
        domain = await self._domain(uuid)
        if domain.state in _ACTIVE:
            return
        if uuid in self._fail_start:
            raise HypervisorError(f"injected start failure for {uuid}", uuid=uuid)
        self._set(uuid, DomainState.RUNNING, "started", "booted")

    async def shutdown(self, uuid: str, timeout: float) -> ShutdownOutcome:
        domain = await self._domain(uuid)
        if domain.state not in _ACTIVE:
            return ShutdownOutcome.ALREADY_OFF
        delay = self._shutdown_delay
        if delay is not None and delay <= timeout:
            await asyncio.sleep(delay)
            if domain.state in _ACTIVE:
                self._set(uuid, DomainState.SHUTOFF, "stopped", "shutdown")
            return ShutdownOutcome.GRACEFUL
        await asyncio.sleep(timeout)
        if domain.state in _ACTIVE:
            self._set(uuid, DomainState.SHUTOFF, "stopped", "destroyed")
        log.info("domain_shutdown_timed_out", uuid=uuid, timeout=timeout)
        return ShutdownOutcome.DESTROYED

    async def reboot(self, uuid: str, *, hard: bool = False) -> None:
        domain = await self._domain(uuid)
        if hard:
            if domain.state in _ACTIVE:
                self._set(uuid, DomainState.SHUTOFF, "stopped", "destroyed")
            self._set(uuid, DomainState.RUNNING, "started", "booted")
        elif domain.state is DomainState.RUNNING:
            self._emit(uuid, "rebooted", "")
        else:
            raise DomainStateError(f"domain {uuid} is {domain.state}, not running", uuid=uuid)

    async def destroy(self, uuid: str) -> None:
        domain = await self._domain(uuid)
        if domain.state is not DomainState.SHUTOFF:
            self._set(uuid, DomainState.SHUTOFF, "stopped", "destroyed")

    async def undefine(self, uuid: str) -> None:
        await self._call()
        domain = self._domains.get(uuid)
        if domain is None:
            return
        if domain.state is not DomainState.SHUTOFF:
            self._set(uuid, DomainState.SHUTOFF, "stopped", "destroyed")
        del self._domains[uuid]
        self._emit(uuid, "undefined", "removed")

    async def state(self, uuid: str) -> DomainState:
        await self._call()
        domain = self._domains.get(uuid)
        return DomainState.MISSING if domain is None else domain.state

    async def list_domains(self) -> dict[str, DomainState]:
        await self._call()
        return {uuid: domain.state for uuid, domain in self._domains.items()}

    async def managed_domains(self) -> dict[str, DomainState]:
        await self._call()
        return {uuid: d.state for uuid, d in self._domains.items() if d.managed}

    async def capacity(self) -> Capacity:
        await self._call()
        return self._capacity

    async def attach_disk(self, uuid: str, disk: VolumeDisk) -> None:
        domain = await self._domain(uuid)
        await asyncio.sleep(self.attach_delay)
        held = domain.disks.get(disk.device)
        if held is not None and held.path == disk.path:
            return
        if held is not None:
            raise DomainStateError(f"device {disk.device} of {uuid} holds {held.path}",
                                   uuid=uuid)
        if disk.path in self.fail_attach:
            raise HypervisorError(f"injected attach failure for {disk.path}", uuid=uuid)
        domain.disks = {**domain.disks, disk.device: disk}

    async def detach_disk(self, uuid: str, device: str) -> None:
        domain = await self._domain(uuid)
        await asyncio.sleep(self.attach_delay)
        domain.disks = {k: v for k, v in domain.disks.items() if k != device}

    async def disks(self, uuid: str) -> dict[str, str]:
        domain = await self._domain(uuid)
        return {dev: disk.path for dev, disk in domain.disks.items()}

    def observe(self) -> ObservationStream:
        return self._hub.subscribe()

    async def close(self) -> None:
        self._closed = True
        self._hub.close()

    # Behind Orrery's back: what a guest or an operator may do to a domain.

    def crash(self, uuid: str) -> None:
        """The guest crashes (as libvirt reports with on_crash=preserve)."""
        self._set(uuid, DomainState.CRASHED, "crashed", "panicked")

    def kill(self, uuid: str) -> None:
        """Someone destroys the domain outside Orrery (``virsh destroy``)."""
        self._set(uuid, DomainState.SHUTOFF, "stopped", "destroyed")

    def add_stranger(self, spec: DomainSpec, state: DomainState = DomainState.RUNNING) -> None:
        """Someone defines (and runs) a domain outside Orrery (``virsh define``)."""
        self._domains[spec.uuid] = _Domain(spec=spec, state=state, managed=False)
        self._emit(spec.uuid, "defined", "added")

    def spec_of(self, uuid: str) -> DomainSpec:
        """The definition the domain was last given (DomainNotFound if unknown)."""
        if uuid not in self._domains:
            raise DomainNotFound(uuid)
        return self._domains[uuid].spec

    # Internals.

    async def _call(self) -> None:
        """Every call yields to the loop, as a call into a real hypervisor would."""
        if self._closed:
            raise HypervisorUnavailable("hypervisor connection is closed")
        await asyncio.sleep(0)

    async def _domain(self, uuid: str) -> _Domain:
        await self._call()
        domain = self._domains.get(uuid)
        if domain is None:
            raise DomainNotFound(uuid)
        return domain

    def _set(self, uuid: str, state: DomainState, event: str, detail: str) -> None:
        self._domains[uuid].state = state
        self._emit(uuid, event, detail)

    def _emit(self, uuid: str, event: str, detail: str) -> None:
        state = self._domains[uuid].state if uuid in self._domains else DomainState.MISSING
        self._hub.publish(Observation(uuid=uuid, event=event, state=state, detail=detail))
