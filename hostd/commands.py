"""Carrying out the hostd wire commands (``hostd.spawn`` …) on a Hypervisor, one Reply each.

Every command is idempotent and bounded by its envelope's deadline. Commands for one
instance run one at a time in arrival order; different instances run concurrently.

Reply conventions:

- interim: a spawn with an image the host had to fetch sends ``Reply(ok=True, partial=True,
  result="image_ready")`` through the ``interim`` callback once the image is in the cache,
  before it boots. An image already cached earns no interim answer: the final one says
  as much (the actor records both steps from it), one message and one append fewer.
- ok: ``ok=True`` and ``result`` carries the domain's state right after the command
  (a ``DomainState`` value, e.g. ``running``); for ``hostd.state`` that is the answer.
  A volume detach from a domain that is gone is ok (``missing``): its disks went with it.
- failure: ``ok=False``, ``error_type`` one of ``not_found`` (no such domain),
  ``conflict`` (wrong state, e.g. soft reboot of a shut-off domain), ``bad_request``
  (inconsistent command), ``hypervisor_error``, ``unavailable`` (retryable),
  ``image_error`` (the image could not be cached: retryable when fetching failed, not when
  it is corrupt or missing), ``network_error`` (the host could not build a network or
  plug a port; retryable when the kernel call failed) and ``deadline_exceeded``
  (retryable when it ran out mid-operation), ``error`` the text.

A body that does not decode is no Reply: the handler raises BadMessage (dead letter).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import structlog

from bus.errors import BadMessage
from hostd.hypervisor import (
    DomainNotFound,
    DomainStateError,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
)
from hostd.image_cache import ImageCache, ImageCacheError
from hostd.netsync import NetworkSync
from hostd.network import HostNetworkError
from schemas import CommandEnvelope, Reply
from schemas.hostd import (
    HOSTD_COMMAND_DECODER,
    AttachVolume,
    DestroyDomain,
    DetachVolume,
    DomainState,
    GetDomainState,
    HostdCommand,
    ImageRef,
    InstanceCommand,
    RebootDomain,
    SpawnDomain,
    StartDomain,
    StopDomain,
)

log = structlog.get_logger(__name__)

#: where interim Replies go (the daemon sends them to the caller)
Interim = Callable[[Reply], Awaitable[None]]
#: the ``result`` of the interim Reply a spawn sends once its image is cached
IMAGE_READY = "image_ready"
#: when the last command per instance ended is kept this long (s) once DONE_KEPT are kept
DONE_WINDOW = 60.0
DONE_KEPT = 4096


class CommandFailed(Exception):
    """A command that cannot be carried out, with the Reply's error type."""

    def __init__(self, error_type: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


def decode_command(msg: CommandEnvelope) -> HostdCommand:
    """The command in ``msg``'s body; BadMessage if it does not decode or its tag lies."""
    try:
        command = HOSTD_COMMAND_DECODER.decode(msg.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"undecodable {msg.type} body: {exc}") from exc
    tag = type(command).__struct_config__.tag
    if tag != msg.type:
        raise BadMessage(f"envelope type {msg.type!r} but body is {tag!r}")
    return command


def _error_type(exc: HypervisorError) -> str:
    if isinstance(exc, DomainNotFound):
        return "not_found"
    if isinstance(exc, DomainStateError):
        return "conflict"
    if isinstance(exc, HypervisorUnavailable):
        return "unavailable"
    return "hypervisor_error"


async def _no_interim(_reply: Reply) -> None:
    return None


class HostCommands:
    """Runs decoded hostd commands against one hypervisor; with ``images``, a spawn's image
    is brought into that cache first (without, ``spec.image_path`` is used as given).
    With ``network``, a spawn's networks are ensured and its ports plugged before the
    domain is defined, and a destroy unplugs the ports it names."""

    def __init__(self, hypervisor: Hypervisor, images: ImageCache | None = None,
                 network: NetworkSync | None = None) -> None:
        self.hypervisor = hypervisor
        self.images = images
        self.network = network
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._done: dict[str, dt.datetime] = {}

    def busy(self, instance_id: str) -> bool:
        """Whether a command for this instance is running or waiting to run."""
        return instance_id in self._users

    def caused(self, instance_id: str, at: dt.datetime) -> bool:
        """Whether a change of this instance's domain seen ``at`` happened while our own
        commands for it ran (their Replies report it)."""
        done = self._done.get(instance_id)
        return self.busy(instance_id) or (done is not None and at <= done)

    async def handle(self, msg: CommandEnvelope, command: InstanceCommand,
                     interim: Interim = _no_interim) -> Reply:
        """Carry out ``command`` before ``msg.deadline``; the Reply says how it went
        (progress on the way goes to ``interim``)."""
        remaining = (msg.deadline - dt.datetime.now(dt.UTC)).total_seconds()
        if remaining <= 0:
            return self._failed(msg, CommandFailed(
                "deadline_exceeded", f"command {msg.command_id} arrived after its deadline"))
        try:
            async with self._serialised(command.instance_id):
                async with asyncio.timeout(remaining):
                    state = await self._apply(msg, command, interim)
        except CommandFailed as exc:
            return self._failed(msg, exc)
        except HypervisorError as exc:
            return self._failed(msg, CommandFailed(_error_type(exc), str(exc),
                                                   retryable=exc.retryable))
        except HostNetworkError as exc:
            return self._failed(msg, CommandFailed("network_error", str(exc),
                                                   retryable=exc.retryable))
        except TimeoutError:
            return self._failed(msg, CommandFailed(
                "deadline_exceeded", f"{msg.type} ran past its deadline", retryable=True))
        log.info("hostd_command_done", type=msg.type, instance_id=command.instance_id,
                 state=state)
        return Reply(command_id=msg.command_id, ok=True, result=state.value)

    async def _apply(self, msg: CommandEnvelope, command: InstanceCommand,
                     interim: Interim) -> DomainState:
        hv = self.hypervisor
        uuid = command.instance_id
        match command:
            case SpawnDomain(spec=spec, image=image):
                if spec.uuid != uuid:
                    raise CommandFailed("bad_request",
                                        f"spec uuid {spec.uuid} is not instance {uuid}")
                await self._plug(command)
                if image is not None and self.images is not None:
                    cached = self.images.known(image.image_id, image.sha512)
                    path = await self._ensure_image(image)
                    spec = msgspec.structs.replace(spec, image_path=str(path),
                                                   image_format=image.disk_format)
                    if not cached:
                        await interim(Reply(command_id=msg.command_id, ok=True,
                                            partial=True, result=IMAGE_READY))
                await hv.define(spec)
                await hv.start(uuid)
            case StopDomain(timeout=timeout):
                outcome = await hv.shutdown(uuid, timeout)
                log.info("domain_stopped", instance_id=uuid, outcome=outcome)
            case StartDomain():
                await hv.start(uuid)
            case RebootDomain(hard=hard):
                await hv.reboot(uuid, hard=hard)
            case DestroyDomain(ports=ports):
                await hv.undefine(uuid)
                if self.network is not None:
                    await self.network.unplug(ports)
            case AttachVolume(disk=disk):
                await hv.attach_disk(uuid, disk)
                log.info("volume_attached", instance_id=uuid, volume_id=command.volume_id,
                         device=disk.device)
            case DetachVolume(device=device):
                try:
                    await hv.detach_disk(uuid, device)
                except DomainNotFound:  # the domain went: so did its disks
                    return DomainState.MISSING
                log.info("volume_detached", instance_id=uuid, volume_id=command.volume_id,
                         device=device)
            case GetDomainState():
                pass
        return await hv.state(uuid)

    async def _plug(self, spawn: SpawnDomain) -> None:
        """The spawn's networks and ports on this host (each step idempotent)."""
        if not spawn.ports and not spawn.networks:
            return
        if self.network is None:
            raise CommandFailed("network_error", "this host has no network driver")
        await self.network.plug(spawn.networks, spawn.ports)

    async def _ensure_image(self, image: ImageRef) -> str:
        assert self.images is not None
        try:
            path = await self.images.ensure(image.image_id, image.sha512)
        except ValueError as exc:
            raise CommandFailed("image_error", f"image {image.image_id}: {exc}") from exc
        except ImageCacheError as exc:
            raise CommandFailed("image_error", f"image could not be brought to the host: {exc}",
                                retryable=exc.retryable) from exc
        return str(path)

    @asynccontextmanager
    async def _serialised(self, instance_id: str) -> AsyncIterator[None]:
        """One command per instance at a time; the lock is dropped when nobody holds it."""
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        self._users[instance_id] = self._users.get(instance_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[instance_id] -= 1
            if not self._users[instance_id]:
                del self._users[instance_id], self._locks[instance_id]
                self._remember_done(instance_id)

    def _remember_done(self, instance_id: str) -> None:
        now = dt.datetime.now(dt.UTC)
        self._done[instance_id] = now
        if len(self._done) > DONE_KEPT:
            horizon = now - dt.timedelta(seconds=DONE_WINDOW)
            self._done = {k: v for k, v in self._done.items() if v > horizon}

    @staticmethod
    def _failed(msg: CommandEnvelope, exc: CommandFailed) -> Reply:
        log.warning("hostd_command_failed", type=msg.type, error_type=exc.error_type,
                    reason=str(exc), retryable=exc.retryable)
        return Reply(command_id=msg.command_id, ok=False, error_type=exc.error_type,
                     error=str(exc), retryable=exc.retryable)
