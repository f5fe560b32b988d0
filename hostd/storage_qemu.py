"""The StorageBackend on ``qemu-img``: each volume a raw or qcow2 file in one directory.

Files are ``<root>/volume-<id>``; their format and size are read back with ``qemu-img
info``, so a directory with both formats (after the configured one changed) keeps
working. A new file is made as ``<name>.partial`` and renamed once complete, so a crash
never leaves a half-made volume under its real name; `sweep_partials` removes leftovers.
qemu-img runs as a subprocess started from a worker thread (never blocking the loop)
under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import structlog

from hostd.storage import (
    GIB,
    StorageError,
    StorageUnavailable,
    VolumeNotFound,
    VolumeSizeError,
    volume_file_name,
)
from schemas.hostd import DiskFormat, StorageCapacity, VolumeFormat
from schemas.storage import VolumeFile

log = structlog.get_logger(__name__)

PARTIAL = ".partial"


class QemuImgBackend:
    """Volumes as files made and resized with ``qemu-img`` in ``root``.

    ``capacity_gb`` overrides what the host reports (default: the size of the file
    system ``root`` is on); ``timeout`` bounds every qemu-img run (an image copy
    included), ``qemu_img`` is the tool's path.
    """

    def __init__(self, root: Path, *, format: VolumeFormat = "raw",
                 capacity_gb: int | None = None, timeout: float = 600.0,
                 qemu_img: str = "qemu-img") -> None:
        if format not in ("raw", "qcow2"):
            raise ValueError(f"volume format must be raw or qcow2, not {format!r}")
        self.root = root
        self._format: VolumeFormat = format
        self.capacity_gb = capacity_gb
        self.timeout = timeout
        self.qemu_img = qemu_img
        root.mkdir(parents=True, exist_ok=True)

    @property
    def format(self) -> VolumeFormat:
        return self._format

    # -- the protocol ------------------------------------------------------------------------

    async def create(self, volume_id: str, size_gb: int) -> VolumeFile:
        _positive(size_gb)
        path = self._path(volume_id)
        if path.exists():
            return await self._info(volume_id)
        partial = self._partial(path)
        await self._run("create", "-q", "-f", self._format, str(partial), f"{size_gb}G")
        os.replace(partial, path)
        log.info("volume_file_created", volume_id=volume_id, size_gb=size_gb,
                 format=self._format)
        # what qemu-img was just told (an info would cost a second run of the tool)
        return VolumeFile(volume_id=volume_id, path=str(path), format=self._format,
                          size_gb=size_gb)

    async def create_from_image(self, volume_id: str, size_gb: int, image_path: str,
                                image_format: DiskFormat) -> VolumeFile:
        _positive(size_gb)
        path = self._path(volume_id)
        if path.exists():
            return await self._info(volume_id)
        image = await self._qemu_info(image_path, image_format)
        virtual = int(image["virtual-size"])
        if virtual > size_gb * GIB:
            raise VolumeSizeError(f"Image virtual size is {-(-virtual // GIB)}GB and doesn't"
                                  f" fit in a volume of size {size_gb}GB.")
        partial = self._partial(path)
        await self._run("convert", "-q", "-f", image_format, "-O", self._format, image_path,
                        str(partial))
        await self._run("resize", "-q", "-f", self._format, str(partial), f"{size_gb}G")
        os.replace(partial, path)
        log.info("volume_file_created", volume_id=volume_id, size_gb=size_gb,
                 format=self._format, image_bytes=virtual)
        return await self._info(volume_id)

    async def extend(self, volume_id: str, size_gb: int) -> VolumeFile:
        _positive(size_gb)
        current = await self._info(volume_id)
        if size_gb < current.size_gb:
            raise VolumeSizeError(f"New size for extend must be greater than current size."
                                  f" (current: {current.size_gb}, extended: {size_gb}).")
        if size_gb == current.size_gb:
            return current
        await self._run("resize", "-q", "-f", current.format, current.path, f"{size_gb}G")
        log.info("volume_file_extended", volume_id=volume_id, size_gb=size_gb)
        return msgspec.structs.replace(current, size_gb=size_gb)

    async def delete(self, volume_id: str) -> None:
        path = self._path(volume_id)
        for victim in (path, self._partial(path)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        log.info("volume_file_deleted", volume_id=volume_id)

    async def get(self, volume_id: str) -> VolumeFile | None:
        if not self._path(volume_id).exists():
            return None
        return await self._info(volume_id)

    async def list_volumes(self) -> list[str]:
        return sorted(p.name.removeprefix("volume-") for p in self.root.glob("volume-*")
                      if not p.name.endswith(PARTIAL))

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        found = await self._info(volume_id)
        if found.format == "raw":
            return await asyncio.to_thread(_read_range, Path(found.path), offset, length)
        with tempfile.TemporaryDirectory(dir=self.root) as scratch:
            flat = Path(scratch) / "flat.raw"
            await self._run("convert", "-q", "-f", found.format, "-O", "raw", found.path,
                            str(flat))
            return await asyncio.to_thread(_read_range, flat, offset, length)

    async def capacity(self) -> StorageCapacity:
        total = self.capacity_gb
        if total is None:
            fs = await asyncio.to_thread(os.statvfs, self.root)
            total = fs.f_blocks * fs.f_frsize // GIB
        return StorageCapacity(total_gb=total, format=self._format, backend="qemu-img")

    async def sweep_partials(self) -> int:
        """Remove files a crash left half-made; how many."""
        removed = 0
        for partial in self.root.glob(f"volume-*{PARTIAL}"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
                removed += 1
        return removed

    # -- qemu-img ----------------------------------------------------------------------------

    def _path(self, volume_id: str) -> Path:
        return self.root / volume_file_name(volume_id)

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL)

    async def _info(self, volume_id: str) -> VolumeFile:
        path = self._path(volume_id)
        if not path.exists():
            raise VolumeNotFound(volume_id)
        info = await self._qemu_info(str(path))
        fmt = info.get("format")
        return VolumeFile(volume_id=volume_id, path=str(path),
                          format="qcow2" if fmt == "qcow2" else "raw",
                          size_gb=int(info["virtual-size"]) // GIB)

    async def _qemu_info(self, path: str, fmt: str | None = None) -> dict[str, Any]:
        args = ["info", "--output=json", *(("-f", fmt) if fmt else ()), path]
        out = await self._run(*args)
        try:
            info: dict[str, Any] = json.loads(out)
        except ValueError as exc:
            raise StorageError(f"qemu-img info {path}: unreadable output") from exc
        return info

    async def _run(self, *args: str) -> str:
        """``qemu-img <args>``; its stdout, or StorageError with its stderr.

        It runs from a worker thread with subprocess (vfork), not the loop's own child
        watcher: uvloop forks the whole process for a child, which in a big daemon costs
        more than the tool itself (tens of ms for a qemu-img create of a few ms)."""
        try:
            done = await asyncio.to_thread(
                subprocess.run, [self.qemu_img, *args], capture_output=True,
                timeout=self.timeout, check=False)
        except FileNotFoundError as exc:
            raise StorageUnavailable(f"{self.qemu_img} is not installed") from exc
        except subprocess.TimeoutExpired:
            raise StorageUnavailable(f"qemu-img {args[0]} ran past {self.timeout:g} s")\
                from None
        if done.returncode != 0:
            raise StorageError(f"qemu-img {args[0]} failed:"
                               f" {done.stderr.decode(errors='replace')}".strip())
        return done.stdout.decode(errors="replace")


def _positive(size_gb: int) -> None:
    if size_gb < 1:
        raise VolumeSizeError(f"a volume is at least 1 GiB, not {size_gb}")


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)
