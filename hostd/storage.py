"""The StorageBackend seam: volumes as files a storage host makes, grows, fills and removes.

StorageError              base; ``retryable`` says whether trying again may help
├── VolumeNotFound        the backend has no such volume
├── VolumeSizeError       a shrink, or an image that does not fit the volume
└── StorageUnavailable    the backend did not answer in time (retryable)

Every operation is idempotent where that makes sense: creating a volume that exists
returns it (a file only appears complete: it is made under a temporary name and renamed),
deleting an unknown one is no error, extending to the current size changes nothing.
"""

from __future__ import annotations

import re
from typing import Protocol

from schemas.hostd import DiskFormat, StorageCapacity, VolumeFormat
from schemas.storage import VolumeFile

GIB = 1 << 30
_VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StorageError(Exception):
    """Base of every storage backend error."""

    retryable = False


class VolumeNotFound(StorageError):
    """The backend has no volume with this id."""

    def __init__(self, volume_id: str) -> None:
        super().__init__(f"volume {volume_id} not found")
        self.volume_id = volume_id


class VolumeSizeError(StorageError):
    """The requested size cannot be had (a shrink, or an image larger than the volume)."""


class StorageUnavailable(StorageError):
    """The backend (its tool, its directory) did not answer or is not there."""

    retryable = True


def check_volume_id(volume_id: str) -> str:
    """``volume_id`` if it is safe as a file name part, else StorageError."""
    if not _VOLUME_ID.match(volume_id):
        raise StorageError(f"invalid volume id {volume_id!r}")
    return volume_id


def volume_file_name(volume_id: str) -> str:
    """The file name of a volume, as Cinder's file drivers name them."""
    return f"volume-{check_volume_id(volume_id)}"


class StorageBackend(Protocol):
    """One storage host's volumes. Every method is safe to call concurrently from the loop
    for different volumes; the caller serialises calls for one volume."""

    @property
    def format(self) -> VolumeFormat:
        """The format new volumes are made in."""
        ...

    async def create(self, volume_id: str, size_gb: int) -> VolumeFile:
        """An empty volume of ``size_gb`` GiB (the existing one if it is there)."""
        ...

    async def create_from_image(self, volume_id: str, size_gb: int, image_path: str,
                                image_format: DiskFormat) -> VolumeFile:
        """A volume of ``size_gb`` GiB holding the image's bytes from offset 0, the rest
        zeros; VolumeSizeError if the image's virtual size is larger."""
        ...

    async def extend(self, volume_id: str, size_gb: int) -> VolumeFile:
        """Grow the volume to ``size_gb`` GiB; VolumeSizeError for a smaller size."""
        ...

    async def delete(self, volume_id: str) -> None:
        """Remove the volume; an unknown volume is no error."""
        ...

    async def get(self, volume_id: str) -> VolumeFile | None:
        """The volume, or None when the backend does not have it."""
        ...

    async def list_volumes(self) -> list[str]:
        """The ids of every volume the backend holds."""
        ...

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes the guest would read at ``offset`` (fewer at the end)."""
        ...

    async def capacity(self) -> StorageCapacity:
        """What the host offers for volumes in total (not what is free)."""
        ...
