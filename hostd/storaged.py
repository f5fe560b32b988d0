"""The storage host daemon: reports block storage capacity, heartbeats, serves volume files.

A storage host is a host like a compute host: it tells its ``host`` actor what it offers
(``Capacity.storage``, no CPUs or memory) at start and with every beat, so the scheduler
places volumes on it by free capacity and it goes down when its beats stop. It consumes
its host queue ``compute.<host>`` and carries out the ``storage.*`` commands (see
schemas.storage) on its StorageBackend, one at a time per volume, each bounded by its
envelope's deadline. It never writes the log. A volume made from an image is filled from
the host's image cache (verified by sha512), as hostd boots from its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import structlog

from bus.errors import BadMessage, BusError
from bus.protocol import Bus, Delivery
from bus.replies import answer
from bus.routing import HOST_KIND
from hostd.image_cache import ImageCache, ImageCacheError
from hostd.reporting import CapacityReporter
from hostd.storage import StorageBackend, StorageError, VolumeNotFound, VolumeSizeError
from schemas import COMMAND_DECODER, CommandEnvelope, Reply
from schemas.hostd import Capacity, ImageRef
from schemas.storage import (
    STORAGE_COMMAND_DECODER,
    CreateVolumeFile,
    DeleteVolumeFile,
    ExtendVolumeFile,
    StorageCommand,
    VolumeFile,
)

log = structlog.get_logger(__name__)
_ENCODER = msgspec.json.Encoder()


class _Failed(Exception):
    def __init__(self, error_type: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


def _failure(exc: StorageError) -> _Failed:
    if isinstance(exc, VolumeNotFound):
        return _Failed("not_found", str(exc))
    if isinstance(exc, VolumeSizeError):
        return _Failed("bad_request", str(exc))
    return _Failed("unavailable" if exc.retryable else "storage_error", str(exc),
                   retryable=exc.retryable)


class StorageDaemon:
    """One storage host. ``run()`` until ``shutdown()`` (idempotent) or cancellation.

    ``images``: the cache a volume made from an image is filled from (None: such a
    create fails with ``image_error``).
    """

    def __init__(self, bus: Bus, backend: StorageBackend, host: str, *,
                 heartbeat_every: float = 5.0, call_timeout: float = 10.0,
                 prefetch: int = 32, images: ImageCache | None = None) -> None:
        if heartbeat_every <= 0 or call_timeout <= 0:
            raise ValueError("heartbeat_every and call_timeout must be positive")
        self.bus = bus
        self.backend = backend
        self.host = host
        self.prefetch = prefetch
        self.call_timeout = call_timeout
        self.images = images
        self.reporter = CapacityReporter(bus, host, self._capacity,
                                         heartbeat_every=heartbeat_every,
                                         call_timeout=call_timeout, errors=(StorageError,))
        self.reported = self.reporter.reported
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def _capacity(self) -> Capacity:
        return Capacity(vcpus=0, ram_mb=0, disk_gb=0, storage=await self.backend.capacity())

    async def run(self) -> None:
        """Consume the host queue, report capacity, beat; return after ``shutdown()``."""
        log.info("storaged_starting", host=self.host, format=self.backend.format)
        if self.images is not None:
            await self.images.sweep_partials()
        sub = await self.bus.consume_host(self.host, self._on_delivery, prefetch=self.prefetch)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.reporter.report(), name="storaged-report"),
                         tg.create_task(self.reporter.beat_loop(), name="storaged-beat")]
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            with contextlib.suppress(BusError, TimeoutError):
                async with asyncio.timeout(self.call_timeout):
                    await sub.cancel()
            log.info("storaged_stopped", host=self.host)

    def shutdown(self) -> None:
        """Ask ``run()`` to stop consuming and beating."""
        self._stop.set()

    # -- serving compute.<host> ------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        msg = self._envelope(delivery)
        command = self._command(msg)
        structlog.contextvars.bind_contextvars(correlation_id=msg.correlation_id,
                                               volume_id=command.volume_id)
        try:
            reply = await self.handle(msg, command)
            if msg.reply_to:
                await answer(self.bus, msg, reply)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id", "volume_id")

    async def handle(self, msg: CommandEnvelope, command: StorageCommand) -> Reply:
        """Carry out ``command`` before ``msg.deadline``; the Reply says how it went."""
        remaining = (msg.deadline - dt.datetime.now(dt.UTC)).total_seconds()
        try:
            if remaining <= 0:
                raise _Failed("deadline_exceeded",
                              f"command {msg.command_id} arrived after its deadline")
            async with self._serialised(command.volume_id), asyncio.timeout(remaining):
                found = await self._apply(command)
        except StorageError as exc:
            return self._failed(msg, _failure(exc))
        except _Failed as exc:
            return self._failed(msg, exc)
        except TimeoutError:
            return self._failed(msg, _Failed("deadline_exceeded",
                                             f"{msg.type} ran past its deadline",
                                             retryable=True))
        log.info("storage_command_done", type=msg.type, volume_id=command.volume_id)
        result = None if found is None else _ENCODER.encode(found).decode()
        return Reply(command_id=msg.command_id, ok=True, result=result)

    async def _apply(self, command: StorageCommand) -> VolumeFile | None:
        backend = self.backend
        match command:
            case CreateVolumeFile(volume_id=vid, size_gb=size, image=None):
                return await backend.create(vid, size)
            case CreateVolumeFile(volume_id=vid, size_gb=size, image=image):
                assert image is not None
                path = await self._image(image)
                return await backend.create_from_image(vid, size, path, image.disk_format)
            case ExtendVolumeFile(volume_id=vid, size_gb=size):
                return await backend.extend(vid, size)
            case DeleteVolumeFile(volume_id=vid):
                await backend.delete(vid)
        return None

    async def _image(self, image: ImageRef) -> str:
        if self.images is None:
            raise _Failed("image_error", "this storage host has no image cache")
        try:
            return str(await self.images.ensure(image.image_id, image.sha512))
        except ValueError as exc:
            raise _Failed("image_error", f"image {image.image_id}: {exc}") from exc
        except ImageCacheError as exc:
            raise _Failed("image_error", f"image could not be brought to the host: {exc}",
                          retryable=exc.retryable) from exc

    @asynccontextmanager
    async def _serialised(self, volume_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(volume_id, asyncio.Lock())
        self._users[volume_id] = self._users.get(volume_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[volume_id] -= 1
            if not self._users[volume_id]:
                del self._users[volume_id], self._locks[volume_id]

    @staticmethod
    def _failed(msg: CommandEnvelope, exc: _Failed) -> Reply:
        log.warning("storage_command_failed", type=msg.type, error_type=exc.error_type,
                    reason=str(exc), retryable=exc.retryable)
        return Reply(command_id=msg.command_id, ok=False, error_type=exc.error_type,
                     error=str(exc), retryable=exc.retryable)

    def _envelope(self, delivery: Delivery) -> CommandEnvelope:
        try:
            msg = COMMAND_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable command: {exc}") from exc
        if msg.kind != HOST_KIND or msg.actor_id != self.host:
            raise BadMessage(f"command for {msg.kind}:{msg.actor_id} reached host {self.host}")
        return msg

    @staticmethod
    def _command(msg: CommandEnvelope) -> StorageCommand:
        try:
            command = STORAGE_COMMAND_DECODER.decode(msg.body)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"undecodable {msg.type} body: {exc}") from exc
        if type(command).__struct_config__.tag != msg.type:
            raise BadMessage(f"envelope type {msg.type!r} does not match its body")
        return command
