"""The Hypervisor on libvirt: blocking calls on a small thread pool, events from libvirt's loop.

libvirt needs one event loop per process to deliver domain events (and keepalives of
remote connections). ``_ensure_event_thread`` registers libvirt's default event
implementation once and runs it on a daemon thread; callbacks arrive on that thread and
are handed to the asyncio loop with ``call_soon_threadsafe``.

Volume disks are attached with ``attachDeviceFlags`` (live when the domain runs, and to
its persistent definition) and detached with ``detachDeviceFlags``. A driver that cannot
hot-plug at all (``VIR_ERR_NO_SUPPORT``: libvirt's test driver, which implements no
device attach) gets the disk in its persistent definition only (``defineXML``), which
is what ``AFFECT_CONFIG`` alone does; it is logged, since the running guest sees the
disk only at its next boot.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt  # type: ignore[import-untyped]
import structlog

from hostd.domain_xml import (
    NAME_PREFIX,
    DomainType,
    build_domain_xml,
    disk_element,
    domain_type_for,
    volume_disk_xml,
    volume_disks,
    with_disk,
    without_disk,
)
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
T = TypeVar("T")

#: Seconds between state polls while waiting for a guest to honour an ACPI shutdown.
SHUTDOWN_POLL = 0.2

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.RUNNING,  # active but not yet scheduled
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # still shutting down
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
}
#: Lifecycle event -> (name, details by code, state after it; None: ask the domain).
_EVENTS: dict[int, tuple[str, tuple[str, ...], DomainState | None]] = {
    0: ("defined", ("added", "updated", "renamed", "from_snapshot"), None),
    1: ("undefined", ("removed", "renamed"), None),
    2: ("started", ("booted", "migrated", "restored", "from_snapshot", "wakeup"),
        DomainState.RUNNING),
    3: ("suspended", ("paused", "migrated", "ioerror", "watchdog", "restored",
                      "from_snapshot", "api_error", "postcopy", "postcopy_failed"),
        DomainState.PAUSED),
    4: ("resumed", ("unpaused", "migrated", "from_snapshot", "postcopy"), DomainState.RUNNING),
    5: ("stopped", ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                    "from_snapshot"), DomainState.SHUTOFF),
    6: ("shutdown", ("finished", "guest", "host"), None),
    7: ("pmsuspended", ("memory", "disk"), DomainState.PAUSED),
    8: ("crashed", ("panicked", "crashloaded"), DomainState.CRASHED),
}
_UNAVAILABLE = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_SYSTEM_ERROR,
}
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)
_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def _ensure_event_thread() -> None:
    """Start libvirt's process-wide event loop (once, before the first connection)."""
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we raise, not print
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        _event_thread.start()


def _run_events() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt_event_loop_failed")


def _translate(error: libvirt.libvirtError, uuid: str | None) -> HypervisorError:
    code = error.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN and uuid is not None:
        return DomainNotFound(uuid)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return DomainStateError(str(error), uuid=uuid)
    if code in _UNAVAILABLE:
        return HypervisorUnavailable(str(error), uuid=uuid)
    return HypervisorError(str(error), uuid=uuid)


def _is_active(dom: Any) -> bool:
    return bool(dom.isActive())


def _state_of(dom: Any) -> DomainState:
    return _STATES.get(dom.state()[0], DomainState.RUNNING)


class LibvirtHypervisor:
    """A Hypervisor on one libvirt connection (``test:///default`` in tests).

    Note: every connection to ``test:///default`` in one process shares one set of
    domains; give each simulated host its own ``test:///<file.xml>`` to keep them apart.
    """

    def __init__(
        self, conn: Any, *, uri: str, domain_type: DomainType, instances_dir: str,
        call_timeout: float, executor: ThreadPoolExecutor,
    ) -> None:
        self._conn = conn
        self.uri = uri
        self.domain_type = domain_type
        self._instances_dir = instances_dir
        self._call_timeout = call_timeout
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._hub = ObservationHub()
        self._callbacks: list[int] = []
        self._closed = False

    @classmethod
    async def open(
        cls, uri: str = "test:///default", *, domain_type: DomainType | None = None,
        instances_dir: str = "/", call_timeout: float = 30.0, workers: int = 4,
    ) -> LibvirtHypervisor:
        """Connect to ``uri``; ``instances_dir`` is where disks live (its size is the
        host's disk capacity); every libvirt call fails after ``call_timeout`` seconds."""
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libvirt")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, _ensure_event_thread)
            opening = loop.run_in_executor(executor, libvirt.open, uri)
            conn = await asyncio.wait_for(opening, call_timeout)
        except (libvirt.libvirtError, TimeoutError) as exc:
            executor.shutdown(wait=False)
            raise HypervisorUnavailable(f"cannot connect to {uri}: {exc}") from exc
        hypervisor = cls(
            conn, uri=uri, domain_type=domain_type or domain_type_for(uri),
            instances_dir=instances_dir, call_timeout=call_timeout, executor=executor,
        )
        try:
            await hypervisor._run(None, hypervisor._register_callbacks)
        except HypervisorError:
            await hypervisor.close()
            raise
        log.info("hypervisor_connected", uri=uri, domain_type=hypervisor.domain_type)
        return hypervisor

    async def define(self, spec: DomainSpec) -> None:
        xml = build_domain_xml(spec, self.domain_type)
        await self._run(spec.uuid, self._conn.defineXML, xml)

    async def start(self, uuid: str) -> None:
        await self._run(uuid, self._start, uuid)

    async def shutdown(self, uuid: str, timeout: float) -> ShutdownOutcome:
        if not await self._run(uuid, self._request_shutdown, uuid):
            return ShutdownOutcome.ALREADY_OFF
        deadline = self._loop.time() + timeout
        while (left := deadline - self._loop.time()) > 0:
            await asyncio.sleep(min(SHUTDOWN_POLL, left))
            if await self.state(uuid) in (DomainState.SHUTOFF, DomainState.MISSING):
                return ShutdownOutcome.GRACEFUL
        if not await self._run(uuid, self._destroy, uuid):
            return ShutdownOutcome.GRACEFUL
        log.info("domain_shutdown_timed_out", uuid=uuid, timeout=timeout)
        return ShutdownOutcome.DESTROYED

    async def reboot(self, uuid: str, *, hard: bool = False) -> None:
        await self._run(uuid, self._hard_reboot if hard else self._soft_reboot, uuid)

    async def destroy(self, uuid: str) -> None:
        await self._run(uuid, self._destroy, uuid)

    async def undefine(self, uuid: str) -> None:
        await self._run(uuid, self._undefine, uuid)

    async def state(self, uuid: str) -> DomainState:
        return await self._run(uuid, self._state, uuid)

    async def list_domains(self) -> dict[str, DomainState]:
        return await self._run(None, self._list_domains)

    async def managed_domains(self) -> dict[str, DomainState]:
        return await self._run(None, self._list_domains, NAME_PREFIX)

    async def capacity(self) -> Capacity:
        return await self._run(None, self._capacity)

    async def attach_disk(self, uuid: str, disk: VolumeDisk) -> None:
        await self._run(uuid, self._attach_disk, uuid, disk)

    async def detach_disk(self, uuid: str, device: str) -> None:
        await self._run(uuid, self._detach_disk, uuid, device)

    async def disks(self, uuid: str) -> dict[str, str]:
        return await self._run(uuid, self._disks, uuid)

    def observe(self) -> ObservationStream:
        return self._hub.subscribe()

    async def close(self) -> None:
        if self._closed:
            return
        self._hub.close()
        try:
            await self._run(None, self._close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)
        log.info("hypervisor_closed", uri=self.uri)

    # The asyncio side: one way into the thread pool, with a timeout and error mapping.

    async def _run(self, uuid: str | None, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise HypervisorUnavailable("hypervisor connection is closed", uuid=uuid)
        job = self._loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.wait_for(job, self._call_timeout)
        except TimeoutError as exc:
            raise HypervisorUnavailable(
                f"libvirt call {getattr(fn, '__name__', fn)} timed out", uuid=uuid
            ) from exc
        except libvirt.libvirtError as exc:
            raise _translate(exc, uuid) from exc

    # The thread side: plain blocking libvirt calls.

    def _lookup(self, uuid: str) -> Any:
        return self._conn.lookupByUUIDString(uuid)

    def _start(self, uuid: str) -> None:
        dom = self._lookup(uuid)
        if _is_active(dom):
            return
        try:
            dom.create()
        except libvirt.libvirtError:
            if not _is_active(dom):  # a concurrent start won the race: that is fine
                raise

    def _request_shutdown(self, uuid: str) -> bool:
        """Send the ACPI request; False when the domain is not running at all."""
        dom = self._lookup(uuid)
        if not _is_active(dom):
            return False
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            if _is_active(dom):
                raise
        return True

    def _destroy(self, uuid: str) -> bool:
        """Power off; False when it was already off."""
        dom = self._lookup(uuid)
        if not _is_active(dom):
            return False
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise
            return False
        return True

    def _soft_reboot(self, uuid: str) -> None:
        dom = self._lookup(uuid)
        if _state_of(dom) is not DomainState.RUNNING:
            raise DomainStateError(f"domain {uuid} is not running", uuid=uuid)
        dom.reboot(0)

    def _hard_reboot(self, uuid: str) -> None:
        """As Nova does: power off, then boot again from the (possibly updated) definition."""
        self._destroy(uuid)
        self._lookup(uuid).create()

    def _undefine(self, uuid: str) -> None:
        try:
            self._destroy(uuid)
            dom = self._lookup(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        for flags in _UNDEFINE_FLAGS:
            try:
                dom.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                if code == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                if code not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    raise

    def _attach_disk(self, uuid: str, disk: VolumeDisk) -> None:
        dom = self._lookup(uuid)
        config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        held = volume_disks(config).get(disk.device)
        if held == disk.path:
            return
        if held is not None:
            raise DomainStateError(f"device {disk.device} of {uuid} holds {held}", uuid=uuid)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if _is_active(dom):
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            dom.attachDeviceFlags(volume_disk_xml(disk), flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            self._conn.defineXML(with_disk(config, disk))
            log.info("disk_attached_persistent_only", uuid=uuid, device=disk.device,
                     reason="the driver cannot attach devices")

    def _detach_disk(self, uuid: str, device: str) -> None:
        dom = self._lookup(uuid)
        config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        element = disk_element(config, device)
        live = disk_element(dom.XMLDesc(0), device) if _is_active(dom) else None
        if element is None and live is None:
            return
        flags = (libvirt.VIR_DOMAIN_AFFECT_CONFIG if element is not None else 0) | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if live is not None else 0)
        try:
            dom.detachDeviceFlags(element or live, flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            if element is not None:
                self._conn.defineXML(without_disk(config, device))
            log.info("disk_detached_persistent_only", uuid=uuid, device=device,
                     reason="the driver cannot detach devices")

    def _disks(self, uuid: str) -> dict[str, str]:
        return volume_disks(self._lookup(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def _state(self, uuid: str) -> DomainState:
        try:
            return _state_of(self._lookup(uuid))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState.MISSING
            raise

    def _list_domains(self, prefix: str = "") -> dict[str, DomainState]:
        """Every domain (or those whose name starts with ``prefix``) and its state."""
        found: dict[str, DomainState] = {}
        for dom in self._conn.listAllDomains(0):
            try:
                if prefix and not dom.name().startswith(prefix):
                    continue
                found[dom.UUIDString()] = _state_of(dom)
            except libvirt.libvirtError as exc:  # undefined while we listed
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return found

    def _capacity(self) -> Capacity:
        info = self._conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, ...]
        disk = os.statvfs(self._instances_dir)
        return Capacity(
            vcpus=int(info[2]), ram_mb=int(info[1]),
            disk_gb=disk.f_blocks * disk.f_frsize // 2**30,
        )

    def _register_callbacks(self) -> None:
        conn = self._conn
        self._callbacks = [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            ),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, None
            ),
        ]

    def _close(self) -> None:
        for callback in self._callbacks:
            try:
                self._conn.domainEventDeregisterAny(callback)
            except libvirt.libvirtError as exc:
                log.warning("libvirt_deregister_failed", error=str(exc))
        self._callbacks = []
        self._conn.close()

    # Event callbacks, on libvirt's event thread.

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name, details, state = _EVENTS.get(event, (f"event-{event}", (), None))
        why = details[detail] if 0 <= detail < len(details) else str(detail)
        if (name, why) == ("defined", "added"):
            state = DomainState.SHUTOFF
        elif state is None:  # ask, though it may have moved on since the event
            state = self._state_after(dom)
        self._deliver(Observation(uuid=dom.UUIDString(), event=name, state=state, detail=why))

    def _on_reboot(self, _conn: Any, dom: Any, _opaque: Any) -> None:
        self._deliver(Observation(uuid=dom.UUIDString(), event="rebooted",
                                  state=DomainState.RUNNING))

    def _state_after(self, dom: Any) -> DomainState:
        try:
            return _state_of(dom)
        except libvirt.libvirtError:
            return DomainState.MISSING

    def _deliver(self, observation: Observation) -> None:
        try:
            self._loop.call_soon_threadsafe(self._hub.publish, observation)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            log.debug("observation_after_loop_closed", uuid=observation.uuid)
