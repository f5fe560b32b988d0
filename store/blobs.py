"""Image data: the ImageStore seam, the directory store and an in-memory fake.

Images are blobs beside the event log, not in it: the log records an image's size and
hashes; the bytes live here. Every put streams: hashes (md5 for Glance's ``checksum``,
sha512 for ``os_hash_value``) are computed while the data is written, at most
``WRITE_BUFFER`` bytes are held at a time, and the data only appears under its image id
once complete (an exclusive hard link of a finished temp file, so two racing puts of one
id cannot both win and a crash never leaves a half-written image).

ImageStoreError
├── ImageNotFound          no data stored for that image id
├── ImageDataExists        the image already has data (Glance answers 409)
├── ImageTooLarge          the upload went past max_size; nothing was kept (413)
├── InvalidImageId         an id that cannot name a file
└── ImageStoreUnavailable  the disk failed, or the fake's injected fault (retryable)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import threading
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, Protocol, TypeVar

import msgspec
import structlog

from schemas.images import IMAGE_ID_PATTERN, ImageFileInfo

log = structlog.get_logger(__name__)

#: bytes per chunk that open() yields
CHUNK_SIZE = 64 * 1024
#: bytes a put gathers before handing them to the writer thread
WRITE_BUFFER = 1024 * 1024
PARTIAL_DIR = ".partial"
META_DIR = ".meta"
_ID = re.compile(IMAGE_ID_PATTERN)
_P = ParamSpec("_P")
_T = TypeVar("_T")


class ImageStoreError(Exception):
    """Base of every image-store error."""

    retryable = False

    def __init__(self, image_id: str, message: str) -> None:
        super().__init__(f"image {image_id}: {message}")
        self.image_id = image_id


class ImageNotFound(ImageStoreError):
    """No data is stored for this image."""

    def __init__(self, image_id: str) -> None:
        super().__init__(image_id, "no data stored")


class ImageDataExists(ImageStoreError):
    """The image already has data; image data is written once."""

    def __init__(self, image_id: str) -> None:
        super().__init__(image_id, "data already stored")


class ImageTooLarge(ImageStoreError):
    """The upload went past ``limit`` bytes; nothing was kept."""

    def __init__(self, image_id: str, limit: int) -> None:
        super().__init__(image_id, f"data exceeds the limit of {limit} bytes")
        self.limit = limit


class InvalidImageId(ImageStoreError):
    """The id does not match IMAGE_ID_PATTERN (1-200 of letters, digits, '-', '_')."""

    def __init__(self, image_id: str) -> None:
        super().__init__(image_id, "not a valid image id")


class ImageStoreUnavailable(ImageStoreError):
    """The storage failed while reading or writing (disk error, injected fault)."""

    retryable = True

    def __init__(self, image_id: str, reason: str) -> None:
        super().__init__(image_id, f"storage failed: {reason}")
        self.reason = reason


class ImageStore(Protocol):
    """Write-once image data addressed by image id, streamed in and out."""

    async def put(
        self, image_id: str, chunks: AsyncIterable[bytes], max_size: int | None = None
    ) -> ImageFileInfo:
        """Store the image's data from ``chunks``; its size and hashes computed on the way.

        Raises ImageDataExists if the image already has data (before reading ``chunks``
        when it can tell), ImageTooLarge past ``max_size``. On any failure, cancellation
        included, nothing is left behind; errors raised by ``chunks`` propagate as they are.
        """
        ...

    async def open(self, image_id: str) -> ImageReader:
        """A reader over the image's data in chunks; ImageNotFound right away if missing."""
        ...

    async def info(self, image_id: str) -> ImageFileInfo:
        """Size and hashes of the stored data; ImageNotFound if missing."""
        ...

    async def delete(self, image_id: str) -> None:
        """Remove the image's data; deleting a missing image is not an error."""
        ...


def check_image_id(image_id: str) -> None:
    """Raise InvalidImageId unless ``image_id`` is safe to use as a file name."""
    if not _ID.fullmatch(image_id):
        raise InvalidImageId(image_id)


class _Digest:
    """Size, md5 and sha512 of the bytes seen so far."""

    def __init__(self) -> None:
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha512 = hashlib.sha512()

    def update(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        self._md5.update(data)
        self._sha512.update(data)

    def info(self) -> ImageFileInfo:
        return ImageFileInfo(
            size=self.size, checksum=self._md5.hexdigest(), os_hash_value=self._sha512.hexdigest()
        )


async def _pump(
    image_id: str,
    chunks: AsyncIterable[bytes],
    max_size: int | None,
    flush: Callable[[bytearray], Awaitable[None]],
) -> None:
    """Feed ``chunks`` to ``flush`` in batches of about WRITE_BUFFER bytes, minding max_size."""
    buffer = bytearray()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise ImageTooLarge(image_id, max_size)
        buffer += chunk
        if len(buffer) >= WRITE_BUFFER:
            data, buffer = buffer, bytearray()
            await flush(data)
    if buffer:
        await flush(buffer)


class ImageReader:
    """The chunks of one stored image, in order; closes its file when done or on aclose().

    ``size`` is known before the first chunk (for Content-Length). Reads run in a worker
    thread unless ``threaded`` is false (in-memory data). ``fail_after`` is fault injection
    for the fake: reading past that many bytes raises ImageStoreUnavailable.
    """

    def __init__(
        self,
        image_id: str,
        file: BinaryIO,
        size: int,
        *,
        chunk_size: int = CHUNK_SIZE,
        threaded: bool = True,
        fail_after: int | None = None,
    ) -> None:
        self.image_id = image_id
        self.size = size
        self._file = file
        self._chunk_size = chunk_size
        self._threaded = threaded
        self._fail_after = fail_after
        self._delivered = 0

    def __aiter__(self) -> ImageReader:
        return self

    async def __anext__(self) -> bytes:
        if self._file.closed:
            raise StopAsyncIteration
        chunk = await self._read()
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._delivered += len(chunk)
        if self._fail_after is not None and self._delivered > self._fail_after:
            await self.aclose()
            raise ImageStoreUnavailable(self.image_id, "injected read fault")
        return chunk

    async def _read(self) -> bytes:
        if not self._threaded:
            return self._file.read(self._chunk_size)
        try:
            return await asyncio.to_thread(self._file.read, self._chunk_size)
        except OSError as exc:
            await self.aclose()
            raise ImageStoreUnavailable(self.image_id, str(exc)) from exc

    async def aclose(self) -> None:
        """Close the underlying file; safe to call more than once."""
        if self._file.closed:
            return
        if self._threaded:
            await asyncio.to_thread(self._file.close)
        else:
            self._file.close()

    async def __aenter__(self) -> ImageReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _PartialFile:
    """One upload in progress: a temp file hashed as it is written, linked into place at
    commit. Every method blocks (call it in a thread); a lock orders them, so a discard
    after a cancelled await still waits for the write that was running."""

    def __init__(self, root: Path, image_id: str) -> None:
        self.root = root
        self.image_id = image_id
        self.final = root / image_id
        self.meta = root / META_DIR / image_id
        self.path = root / PARTIAL_DIR / f"{image_id}.{uuid.uuid4().hex}"
        self.digest = _Digest()
        self._lock = threading.Lock()
        self._committed = False
        if self.final.exists():
            raise ImageDataExists(image_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("xb")

    def write(self, data: bytearray) -> None:
        with self._lock:
            self._file.write(data)
            self.digest.update(data)

    def commit(self) -> ImageFileInfo:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            info = self.digest.info()
            try:
                os.link(self.path, self.final)
            except FileExistsError:
                raise ImageDataExists(self.image_id) from None
            self._committed = True
            _write_meta(self.meta, info)
            self.path.unlink()
            _fsync_dir(self.root)
            return info

    def discard(self) -> None:
        """Remove what this upload wrote, its committed data included (a cancelled commit)."""
        with self._lock:
            with contextlib.suppress(OSError):
                self._file.close()
            doomed = [self.path, self.final, self.meta] if self._committed else [self.path]
            for path in doomed:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)


def _write_meta(meta: Path, info: ImageFileInfo) -> None:
    meta.parent.mkdir(parents=True, exist_ok=True)
    temp = meta.with_name(f"{meta.name}.{uuid.uuid4().hex}.tmp")
    temp.write_bytes(msgspec.json.encode(info))
    os.replace(temp, meta)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_data(root: Path, image_id: str) -> tuple[BinaryIO, int]:
    try:
        file = (root / image_id).open("rb")
    except FileNotFoundError:
        raise ImageNotFound(image_id) from None
    return file, os.fstat(file.fileno()).st_size


def _read_info(root: Path, image_id: str) -> ImageFileInfo:
    """The sidecar info; recomputed from the data (and saved) when missing or stale."""
    file, size = _open_data(root, image_id)
    with file:
        meta = root / META_DIR / image_id
        try:
            info = msgspec.json.decode(meta.read_bytes(), type=ImageFileInfo)
            if info.size == size:
                return info
        except (FileNotFoundError, msgspec.DecodeError):
            pass
        digest = _Digest()
        while chunk := file.read(WRITE_BUFFER):
            digest.update(chunk)
    _write_meta(meta, digest.info())
    return digest.info()


def _remove(root: Path, image_id: str) -> bool:
    try:
        (root / image_id).unlink()
    except FileNotFoundError:
        return False
    finally:
        (root / META_DIR / image_id).unlink(missing_ok=True)
    return True


class DirectoryImageStore:
    """Images as files ``<root>/<image_id>``; hashes in ``<root>/.meta``, uploads in
    progress in ``<root>/.partial``. Several processes may share one root."""

    def __init__(self, root: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = root
        self._chunk_size = chunk_size

    async def put(
        self, image_id: str, chunks: AsyncIterable[bytes], max_size: int | None = None
    ) -> ImageFileInfo:
        check_image_id(image_id)
        partial = await _blocking(image_id, _PartialFile, self.root, image_id)

        async def write(data: bytearray) -> None:
            await _blocking(image_id, partial.write, data)

        try:
            await _pump(image_id, chunks, max_size, write)
            info = await _blocking(image_id, partial.commit)
        except BaseException as exc:
            await asyncio.to_thread(partial.discard)
            log.info("image_put_aborted", image_id=image_id, reason=type(exc).__name__)
            raise
        log.info("image_stored", image_id=image_id, size=info.size)
        return info

    async def open(self, image_id: str) -> ImageReader:
        check_image_id(image_id)
        file, size = await _blocking(image_id, _open_data, self.root, image_id)
        return ImageReader(image_id, file, size, chunk_size=self._chunk_size)

    async def info(self, image_id: str) -> ImageFileInfo:
        check_image_id(image_id)
        return await _blocking(image_id, _read_info, self.root, image_id)

    async def delete(self, image_id: str) -> None:
        check_image_id(image_id)
        if await _blocking(image_id, _remove, self.root, image_id):
            log.info("image_deleted", image_id=image_id)


async def _blocking(
    image_id: str, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``func`` in a thread, turning an unexpected OSError into ImageStoreUnavailable."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except OSError as exc:
        raise ImageStoreUnavailable(image_id, str(exc)) from exc


class MemoryImageStore:
    """Images in a dict: the fake for tests. Faults are injected by constructor: a put that
    writes more than ``fail_writes_after`` bytes, or a read that hands out more than
    ``fail_reads_after``, raises ImageStoreUnavailable (as a failing disk would)."""

    def __init__(
        self,
        *,
        fail_writes_after: int | None = None,
        fail_reads_after: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._images: dict[str, tuple[bytes, ImageFileInfo]] = {}
        self._fail_writes_after = fail_writes_after
        self._fail_reads_after = fail_reads_after
        self._chunk_size = chunk_size

    async def put(
        self, image_id: str, chunks: AsyncIterable[bytes], max_size: int | None = None
    ) -> ImageFileInfo:
        check_image_id(image_id)
        if image_id in self._images:
            raise ImageDataExists(image_id)
        data = bytearray()
        digest = _Digest()

        async def keep(batch: bytearray) -> None:
            limit = self._fail_writes_after
            if limit is not None and len(data) + len(batch) > limit:
                raise ImageStoreUnavailable(image_id, "injected write fault")
            data.extend(batch)
            digest.update(batch)

        await _pump(image_id, chunks, max_size, keep)
        if image_id in self._images:
            raise ImageDataExists(image_id)
        self._images[image_id] = (bytes(data), digest.info())
        return digest.info()

    async def open(self, image_id: str) -> ImageReader:
        data, _ = self._get(image_id)
        return ImageReader(
            image_id,
            io.BytesIO(data),
            len(data),
            chunk_size=self._chunk_size,
            threaded=False,
            fail_after=self._fail_reads_after,
        )

    async def info(self, image_id: str) -> ImageFileInfo:
        return self._get(image_id)[1]

    async def delete(self, image_id: str) -> None:
        check_image_id(image_id)
        self._images.pop(image_id, None)

    def _get(self, image_id: str) -> tuple[bytes, ImageFileInfo]:
        check_image_id(image_id)
        try:
            return self._images[image_id]
        except KeyError:
            raise ImageNotFound(image_id) from None
