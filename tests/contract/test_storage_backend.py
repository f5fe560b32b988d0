"""The StorageBackend contract: the fake and qemu-img (raw and qcow2 files) behave the same."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import pytest

from hostd.storage import GIB, StorageBackend, StorageError, VolumeNotFound, VolumeSizeError
from hostd.storage_fake import FakeStorageBackend
from hostd.storage_qemu import QemuImgBackend


@pytest.fixture(params=["fake", "qemu-raw", "qemu-qcow2"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    """A fresh backend: the fake, or qemu-img making raw or qcow2 files in tmp_path."""
    if request.param == "fake":
        return FakeStorageBackend(capacity_gb=50)
    assert shutil.which("qemu-img"), "qemu-img must be installed (Debian's qemu-utils)"
    fmt = "raw" if request.param == "qemu-raw" else "qcow2"
    return QemuImgBackend(tmp_path / "volumes", format=fmt, capacity_gb=50)


def new_id() -> str:
    return str(uuid.uuid4())


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


def exists(path: str) -> bool:
    return os.path.exists(path)


async def test_create_makes_an_empty_volume_of_the_size(backend: StorageBackend) -> None:
    """create gives a file of size_gb GiB in the backend's format that reads as zeros."""
    vid = new_id()
    made = await backend.create(vid, 1)
    assert (made.volume_id, made.size_gb, made.format) == (vid, 1, backend.format)
    assert made.path.endswith(f"volume-{vid}")
    assert await backend.get(vid) == made
    assert await backend.read(vid, 0, 4096) == bytes(4096)
    assert await backend.read(vid, GIB - 10, 100) == bytes(10)  # the end is the end
    assert vid in await backend.list_volumes()


async def test_create_again_returns_the_same_volume(backend: StorageBackend) -> None:
    """A repeated create (a redelivered command) finds the volume and changes nothing."""
    vid = new_id()
    first = await backend.create(vid, 1)
    assert await backend.create(vid, 1) == first


async def test_create_from_image_holds_the_image_bytes(backend: StorageBackend,
                                                       tmp_path: Path) -> None:
    """The volume reads back the image's bytes from offset 0, then zeros, at its size."""
    image = tmp_path / "image.raw"
    payload = os.urandom(3 * 4096)
    image.write_bytes(payload)
    vid = new_id()
    made = await backend.create_from_image(vid, 1, str(image), "raw")
    assert made.size_gb == 1
    assert await backend.read(vid, 0, len(payload) + 512) == payload + bytes(512)


async def test_image_larger_than_the_volume_is_refused(backend: StorageBackend,
                                                       tmp_path: Path) -> None:
    """An image whose virtual size exceeds the volume: VolumeSizeError, no volume left."""
    image = tmp_path / "big.raw"
    sparse_file(image, GIB + 4096)  # 1 GiB and a bit
    vid = new_id()
    with pytest.raises(VolumeSizeError):
        await backend.create_from_image(vid, 1, str(image), "raw")
    assert await backend.get(vid) is None


async def test_extend_grows_and_keeps_the_data(backend: StorageBackend,
                                               tmp_path: Path) -> None:
    """extend to 2 GiB: size 2, the image's bytes still at offset 0; the same size again
    is a no-op; a smaller size is VolumeSizeError."""
    image = tmp_path / "image.raw"
    image.write_bytes(b"orrery!" * 100)
    vid = new_id()
    await backend.create_from_image(vid, 1, str(image), "raw")
    grown = await backend.extend(vid, 2)
    assert grown.size_gb == 2 and (await backend.get(vid)) == grown
    assert await backend.read(vid, 0, 700) == b"orrery!" * 100
    assert await backend.read(vid, 2 * GIB - 4, 100) == bytes(4)
    assert await backend.extend(vid, 2) == grown
    with pytest.raises(VolumeSizeError):
        await backend.extend(vid, 1)


async def test_delete_removes_and_is_idempotent(backend: StorageBackend) -> None:
    """delete removes the volume (get None, not listed, read VolumeNotFound); deleting an
    unknown volume is no error."""
    vid = new_id()
    made = await backend.create(vid, 1)
    await backend.delete(vid)
    assert await backend.get(vid) is None
    assert vid not in await backend.list_volumes()
    with pytest.raises(VolumeNotFound):
        await backend.read(vid, 0, 1)
    if isinstance(backend, QemuImgBackend):
        assert not exists(made.path)
    await backend.delete(vid)
    await backend.delete(new_id())


async def test_unknown_volume_cannot_be_extended(backend: StorageBackend) -> None:
    with pytest.raises(VolumeNotFound):
        await backend.extend(new_id(), 2)


async def test_zero_size_and_bad_ids_are_refused(backend: StorageBackend) -> None:
    """A volume of 0 GiB is VolumeSizeError; an id that is no safe name is StorageError."""
    with pytest.raises(VolumeSizeError):
        await backend.create(new_id(), 0)
    if isinstance(backend, QemuImgBackend):
        with pytest.raises(StorageError):
            await backend.create("../escape", 1)


async def test_capacity_reports_total_and_format(backend: StorageBackend) -> None:
    capacity = await backend.capacity()
    assert capacity.total_gb == 50 and capacity.format == backend.format


async def test_concurrent_creates_of_different_volumes(backend: StorageBackend) -> None:
    """Twenty volumes made at once all exist afterwards, each of its size."""
    ids = [new_id() for _ in range(20)]
    made = await asyncio.gather(*(backend.create(v, 1 + i % 2) for i, v in enumerate(ids)))
    assert [m.size_gb for m in made] == [1 + i % 2 for i in range(20)]
    assert set(ids) <= set(await backend.list_volumes())


async def test_qemu_backend_sweeps_partial_files(tmp_path: Path) -> None:
    """A half-made file (a crash mid-create) is not a volume and is swept at start."""
    backend = QemuImgBackend(tmp_path, capacity_gb=5)
    vid = new_id()
    (tmp_path / f"volume-{vid}.partial").write_bytes(b"half")
    assert await backend.list_volumes() == []
    assert await backend.get(vid) is None
    assert await backend.sweep_partials() == 1
    assert not exists(str(tmp_path / f"volume-{vid}.partial"))
