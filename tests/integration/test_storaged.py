"""The storage daemon on the in-process bus with qemu-img files: it reports block storage
capacity to its host actor, and answers the storage.* commands with schemas.storage's
Reply conventions (the file as JSON, bad_request, not_found, image_error, deadline)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from bus.envelopes import command_envelope
from bus.memory import MemoryBus
from bus.protocol import Delivery
from bus.routing import HOST_KIND, Names
from hostd.image_cache import ImageCache
from hostd.image_fetch import directory_fetch
from hostd.storage_qemu import QemuImgBackend
from hostd.storaged import StorageDaemon
from schemas import CommandEnvelope, Reply
from schemas.hostd import Capacity, CapacityReport, ImageRef
from schemas.storage import (
    VOLUME_FILE_DECODER,
    CreateVolumeFile,
    DeleteVolumeFile,
    ExtendVolumeFile,
    StorageCommand,
)

VID = "3f1d2c4b-0000-4000-8000-000000000001"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[StorageDaemon]:
    images = tmp_path / "images"
    images.mkdir()
    cache = ImageCache(tmp_path / "cache", directory_fetch(images))
    bus = MemoryBus(Names(prefix="t", shards=2))
    backend = QemuImgBackend(tmp_path / "volumes", format="qcow2", capacity_gb=7)
    yield StorageDaemon(bus, backend, "s1", images=cache, heartbeat_every=0.2)
    await bus.close()


def envelope(command: StorageCommand, timeout: float = 30.0) -> CommandEnvelope:
    return command_envelope(HOST_KIND, "s1", command, timeout=timeout)


async def test_commands_answer_with_the_file_or_the_reason(daemon: StorageDaemon) -> None:
    """create answers the file (qcow2, 1 GiB) and again the same; extend answers 3 GiB;
    a shrink is bad_request; delete answers ok twice; extending a gone volume is
    not_found."""
    made = await daemon.handle(envelope(CreateVolumeFile(volume_id=VID, size_gb=1)),
                               CreateVolumeFile(volume_id=VID, size_gb=1))
    assert made.ok and made.result
    found = VOLUME_FILE_DECODER.decode(made.result)
    assert (found.format, found.size_gb) == ("qcow2", 1) and Path(found.path).name.endswith(VID)
    again = await daemon.handle(envelope(CreateVolumeFile(volume_id=VID, size_gb=1)),
                                CreateVolumeFile(volume_id=VID, size_gb=1))
    assert again.result == made.result
    grown = await daemon.handle(envelope(ExtendVolumeFile(volume_id=VID, size_gb=3)),
                                ExtendVolumeFile(volume_id=VID, size_gb=3))
    assert VOLUME_FILE_DECODER.decode(grown.result or "").size_gb == 3
    shrink = await daemon.handle(envelope(ExtendVolumeFile(volume_id=VID, size_gb=2)),
                                 ExtendVolumeFile(volume_id=VID, size_gb=2))
    assert (shrink.ok, shrink.error_type) == (False, "bad_request")
    for _ in range(2):
        gone = await daemon.handle(envelope(DeleteVolumeFile(volume_id=VID)),
                                   DeleteVolumeFile(volume_id=VID))
        assert gone.ok and gone.result is None
    missing = await daemon.handle(envelope(ExtendVolumeFile(volume_id=VID, size_gb=4)),
                                  ExtendVolumeFile(volume_id=VID, size_gb=4))
    assert (missing.ok, missing.error_type) == (False, "not_found")


async def test_a_volume_from_an_image_is_filled_from_the_cache(daemon: StorageDaemon,
                                                               tmp_path: Path) -> None:
    """The image's bytes come through the host's verified cache; an image whose bytes do
    not match its sha512 is image_error and leaves no volume."""
    data = os.urandom(8192)
    (tmp_path / "images" / "img-1").write_bytes(data)
    good = ImageRef(image_id="img-1", sha512=hashlib.sha512(data).hexdigest(), size=len(data),
                    disk_format="raw")
    command = CreateVolumeFile(volume_id=VID, size_gb=1, image=good)
    reply = await daemon.handle(envelope(command), command)
    assert reply.ok, reply.error
    assert await daemon.backend.read(VID, 0, len(data)) == data
    bad = CreateVolumeFile(volume_id="other-1", size_gb=1, image=msgspec.structs.replace(
        good, sha512="00" * 64))
    refused = await daemon.handle(envelope(bad), bad)
    assert (refused.ok, refused.error_type) == (False, "image_error")
    assert await daemon.backend.get("other-1") is None


async def test_a_command_past_its_deadline_is_refused(daemon: StorageDaemon) -> None:
    command = CreateVolumeFile(volume_id=VID, size_gb=1)
    late = msgspec.structs.replace(envelope(command), deadline=dt.datetime.now(dt.UTC)
                                   - dt.timedelta(seconds=1))
    reply = await daemon.handle(late, command)
    assert (reply.ok, reply.error_type) == (False, "deadline_exceeded")
    assert await daemon.backend.get(VID) is None


async def test_it_reports_block_storage_to_its_host_actor(daemon: StorageDaemon) -> None:
    """The capacity report the host actor gets: no CPUs or memory, 7 GiB of qcow2."""
    reports: list[Capacity] = []

    async def host_actor(delivery: Delivery) -> None:
        msg = msgspec.json.decode(delivery.body, type=CommandEnvelope)
        if msg.type == "host.report_capacity":
            reports.append(msgspec.json.decode(msg.body, type=CapacityReport).capacity)
        if msg.reply_to:
            await daemon.bus.reply(msg.reply_to, Reply(command_id=msg.command_id, ok=True))

    sub = await daemon.bus.consume_commands("host", host_actor)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(10):
            await daemon.reported.wait()
    finally:
        daemon.shutdown()
        await task
        await sub.cancel()
    (capacity,) = reports
    assert (capacity.vcpus, capacity.ram_mb, capacity.compute) == (0, 0, False)
    assert capacity.storage is not None
    assert (capacity.storage.total_gb, capacity.storage.format) == (7, "qcow2")
