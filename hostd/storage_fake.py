"""An in-memory StorageBackend with the qemu-img backend's semantics and injectable faults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from hostd.storage import (
    GIB,
    StorageError,
    VolumeNotFound,
    VolumeSizeError,
    volume_file_name,
)
from schemas.hostd import DiskFormat, StorageCapacity, VolumeFormat
from schemas.storage import VolumeFile


class _Volume:
    __slots__ = ("data", "size_gb")

    def __init__(self, size_gb: int, data: bytes = b"") -> None:
        self.size_gb = size_gb
        self.data = data


class FakeStorageBackend:
    """Volumes in a dict (their written bytes only; the rest reads as zeros). The paths it
    hands out name no real file (``<root>/volume-<id>``), which a fake or test hypervisor
    does not open.

    Faults: ``fail_create`` are volume ids whose create raises StorageError; ``delay`` is
    how long every operation takes (a slow backend).
    """

    def __init__(self, *, capacity_gb: int = 1000, format: VolumeFormat = "raw",
                 root: str = "/fake-storage", fail_create: Iterable[str] = (),
                 delay: float = 0.0) -> None:
        self.capacity_gb = capacity_gb
        self._format: VolumeFormat = format
        self.root = root
        self.fail_create = frozenset(fail_create)
        self.delay = delay
        self._volumes: dict[str, _Volume] = {}

    @property
    def format(self) -> VolumeFormat:
        return self._format

    async def create(self, volume_id: str, size_gb: int) -> VolumeFile:
        await self._call()
        return self._make(volume_id, size_gb, b"")

    async def create_from_image(self, volume_id: str, size_gb: int, image_path: str,
                                image_format: DiskFormat) -> VolumeFile:
        await self._call()
        if volume_id in self._volumes:
            return self._file(volume_id)
        data = await asyncio.to_thread(Path(image_path).read_bytes)
        if len(data) > size_gb * GIB:
            raise VolumeSizeError(f"Image virtual size is {-(-len(data) // GIB)}GB and"
                                  f" doesn't fit in a volume of size {size_gb}GB.")
        return self._make(volume_id, size_gb, data)

    async def extend(self, volume_id: str, size_gb: int) -> VolumeFile:
        await self._call()
        volume = self._get(volume_id)
        if size_gb < volume.size_gb:
            raise VolumeSizeError(f"New size for extend must be greater than current size."
                                  f" (current: {volume.size_gb}, extended: {size_gb}).")
        volume.size_gb = size_gb
        return self._file(volume_id)

    async def delete(self, volume_id: str) -> None:
        await self._call()
        self._volumes.pop(volume_id, None)

    async def get(self, volume_id: str) -> VolumeFile | None:
        await self._call()
        return self._file(volume_id) if volume_id in self._volumes else None

    async def list_volumes(self) -> list[str]:
        await self._call()
        return sorted(self._volumes)

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        await self._call()
        volume = self._get(volume_id)
        end = min(offset + length, volume.size_gb * GIB)
        if end <= offset:
            return b""
        head = volume.data[offset:end]
        return head + bytes(end - offset - len(head))

    async def capacity(self) -> StorageCapacity:
        await self._call()
        return StorageCapacity(total_gb=self.capacity_gb, format=self._format, backend="fake")

    # internals

    async def _call(self) -> None:
        await asyncio.sleep(self.delay)

    def _make(self, volume_id: str, size_gb: int, data: bytes) -> VolumeFile:
        if size_gb < 1:
            raise VolumeSizeError(f"a volume is at least 1 GiB, not {size_gb}")
        if volume_id in self.fail_create:
            raise StorageError(f"injected create failure for {volume_id}")
        if volume_id not in self._volumes:
            self._volumes[volume_id] = _Volume(size_gb, data)
        return self._file(volume_id)

    def _get(self, volume_id: str) -> _Volume:
        volume = self._volumes.get(volume_id)
        if volume is None:
            raise VolumeNotFound(volume_id)
        return volume

    def _file(self, volume_id: str) -> VolumeFile:
        return VolumeFile(volume_id=volume_id, path=f"{self.root}/{volume_file_name(volume_id)}",
                          format=self._format, size_gb=self._volumes[volume_id].size_gb)
