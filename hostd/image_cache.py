"""The host's image cache: each image fetched once into a local directory, verified by sha512.

A spawn needs the image on the host's disk. ``ImageCache.ensure`` streams it from
``fetch`` (the gateway's ``GET /image/v2/images/{id}/file`` in production) into a temp
file, hashing as it writes, and only a download whose sha512 matches is renamed to
``<root>/<image_id>``. Concurrent ensures of one image share one download; a cached image
is re-hashed once per process (a restarted hostd trusts nothing on disk) and never
refetched while it matches. One hostd owns one cache directory.

ImageCacheError
├── ImageCorrupt      the data's sha512 is not the expected one; the download was removed
├── ImageMissing      the origin does not have the image (a fetch raises it; not retryable)
└── ImageFetchFailed  fetching failed or stalled, or the local disk failed (retryable)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

import structlog

from schemas.images import IMAGE_ID_PATTERN

log = structlog.get_logger(__name__)

#: how the cache gets an image's bytes: image id -> its data in chunks
Fetch = Callable[[str], AsyncIterator[bytes]]
#: bytes gathered before one write (and hash update) in the worker thread
WRITE_BUFFER = 1024 * 1024
#: seconds a fetch may go without producing a chunk before it counts as stalled
IDLE_TIMEOUT = 60.0
PARTIAL_DIR = ".partial"
#: how long a verified image is trusted to still be on disk before it is looked at again
RECHECK_SECONDS = 10.0
_ID = re.compile(IMAGE_ID_PATTERN)
_P = ParamSpec("_P")
_T = TypeVar("_T")


class ImageCacheError(Exception):
    """Base of every image-cache error."""

    retryable = False

    def __init__(self, image_id: str, message: str) -> None:
        super().__init__(f"image {image_id}: {message}")
        self.image_id = image_id


class ImageCorrupt(ImageCacheError):
    """The fetched data does not hash to the expected sha512."""

    def __init__(self, image_id: str, expected: str, actual: str) -> None:
        super().__init__(image_id, f"sha512 {actual} is not the expected {expected}")
        self.expected = expected
        self.actual = actual


class ImageMissing(ImageCacheError):
    """The origin has no data for this image (deleted, or never uploaded)."""

    def __init__(self, image_id: str, reason: str = "the image store has no data for it") -> None:
        super().__init__(image_id, reason)


class ImageFetchFailed(ImageCacheError):
    """The image could not be brought to the host: fetch error, stall or disk failure."""

    retryable = True

    def __init__(self, image_id: str, reason: str) -> None:
        super().__init__(image_id, f"fetch failed: {reason}")
        self.reason = reason


class _Flight:
    """The lock that makes one image's ensures take turns, and how many hold or wait."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class ImageCache:
    """Images cached as ``<root>/<image_id>``; downloads in progress in ``<root>/.partial``."""

    def __init__(self, root: Path, fetch: Fetch, *, idle_timeout: float = IDLE_TIMEOUT,
                 recheck_after: float = RECHECK_SECONDS) -> None:
        self.root = root
        self._fetch = fetch
        self._idle_timeout = idle_timeout
        self._recheck_after = recheck_after
        self._flights: dict[str, _Flight] = {}
        self._verified: dict[str, str] = {}
        #: when each verified image was last seen on disk (monotonic seconds)
        self._seen: dict[str, float] = {}

    def path(self, image_id: str) -> Path:
        """Where the image lives once ensured (ValueError for an id that is not a file name)."""
        if not _ID.fullmatch(image_id):
            raise ValueError(f"not a valid image id: {image_id!r}")
        return self.root / image_id

    def known(self, image_id: str, sha512: str) -> bool:
        """Whether the image was verified in the cache lately (no IO): ``ensure`` will then
        most likely find it without fetching."""
        return (self._verified.get(image_id) == sha512.lower()
                and time.monotonic() - self._seen.get(image_id, -math.inf)
                < self._recheck_after)

    async def ensure(self, image_id: str, sha512: str) -> Path:
        """The local path of the image, fetching and verifying it first unless cached."""
        path = self.path(image_id)
        sha512 = sha512.lower()
        async with self._turn(image_id):
            if await self._cached(image_id, path, sha512):
                return path
            await self._download(image_id, path, sha512)
        return path

    async def evict(self, image_id: str) -> None:
        """Drop the image from the cache; the next ensure fetches it again."""
        path = self.path(image_id)
        async with self._turn(image_id):
            self._verified.pop(image_id, None)
            self._seen.pop(image_id, None)
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def sweep_partials(self) -> int:
        """Remove downloads a crashed hostd left half-done; call at start. Returns how many."""
        removed = await asyncio.to_thread(_sweep, self.root / PARTIAL_DIR)
        if removed:
            log.info("image_cache_swept", partials=removed)
        return removed

    @contextlib.asynccontextmanager
    async def _turn(self, image_id: str) -> AsyncIterator[None]:
        flight = self._flights.setdefault(image_id, _Flight())
        flight.users += 1
        try:
            async with flight.lock:
                yield
        finally:
            flight.users -= 1
            if not flight.users:
                del self._flights[image_id]

    async def _cached(self, image_id: str, path: Path, sha512: str) -> bool:
        if self._verified.get(image_id) == sha512:
            if time.monotonic() - self._seen.get(image_id, -math.inf) < self._recheck_after:
                return True
            # one stat of a local file: cheaper on the loop than a hop to a thread
            if os.path.exists(path):  # noqa: ASYNC240
                self._seen[image_id] = time.monotonic()
                return True
            del self._verified[image_id]
        actual = await asyncio.to_thread(_hash_file, path)
        if actual is None:
            return False
        if actual == sha512:
            self._verified[image_id] = sha512
            self._seen[image_id] = time.monotonic()
            log.info("image_cache_verified", image_id=image_id)
            return True
        log.warning("image_cache_mismatch", image_id=image_id, expected=sha512, actual=actual)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        return False

    async def _download(self, image_id: str, path: Path, sha512: str) -> None:
        partial = await _on_disk(image_id, _Partial, self.root / PARTIAL_DIR, image_id)
        try:
            await self._stream(image_id, partial)
            actual = partial.digest.hexdigest()
            if actual != sha512:
                log.error("image_corrupt", image_id=image_id, expected=sha512, actual=actual)
                raise ImageCorrupt(image_id, sha512, actual)
            await _on_disk(image_id, partial.finish, path)
        except BaseException:
            await asyncio.to_thread(partial.discard)
            raise
        self._verified[image_id] = sha512
        self._seen[image_id] = time.monotonic()
        log.info("image_fetched", image_id=image_id, size=partial.size)

    async def _stream(self, image_id: str, partial: _Partial) -> None:
        chunks = self._fetch(image_id)
        buffer = bytearray()
        try:
            while (chunk := await self._next(image_id, chunks)) is not None:
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    data, buffer = buffer, bytearray()
                    await _on_disk(image_id, partial.write, data)
            await _on_disk(image_id, partial.write, buffer)
        finally:
            await self._close(image_id, chunks)

    async def _close(self, image_id: str, chunks: AsyncIterator[bytes]) -> None:
        """Close the fetch's iterator if it can be closed; its failure is only logged."""
        aclose = getattr(chunks, "aclose", None)
        if aclose is None:
            return
        try:
            async with asyncio.timeout(self._idle_timeout):
                await aclose()
        except Exception as exc:
            log.warning("image_fetch_close_failed", image_id=image_id, error=repr(exc))

    async def _next(self, image_id: str, chunks: AsyncIterator[bytes]) -> bytes | None:
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await anext(chunks)
        except StopAsyncIteration:
            return None
        except ImageMissing:
            log.warning("image_missing_at_origin", image_id=image_id)
            raise
        except TimeoutError as exc:
            log.warning("image_fetch_stalled", image_id=image_id, idle_timeout=self._idle_timeout)
            raise ImageFetchFailed(image_id, "stalled") from exc
        except Exception as exc:
            log.warning("image_fetch_failed", image_id=image_id, error=repr(exc))
            raise ImageFetchFailed(image_id, repr(exc)) from exc


class _Partial:
    """A download in progress: a temp file and the sha512 of what was written.

    Every method blocks (call it in a thread); a lock orders them, so a discard after a
    cancelled await waits for the write or finish still running in its thread."""

    def __init__(self, directory: Path, image_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{image_id}.{uuid.uuid4().hex}"
        self.digest = hashlib.sha512()
        self.size = 0
        self._lock = threading.Lock()
        self._file: BinaryIO = self.path.open("xb")

    def write(self, data: bytearray) -> None:
        with self._lock:
            self._file.write(data)
            self.digest.update(data)
            self.size += len(data)

    def finish(self, final: Path) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.path, final)

    def discard(self) -> None:
        """Remove the temp file (a finished download stays: it was verified)."""
        with self._lock:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


async def _on_disk(
    image_id: str, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``func`` in a thread, a local disk failure becoming ImageFetchFailed."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except OSError as exc:
        raise ImageFetchFailed(image_id, f"local disk: {exc}") from exc


def _hash_file(path: Path) -> str | None:
    """The sha512 of a file, or None if there is no such file."""
    digest = hashlib.sha512()
    try:
        with path.open("rb") as file:
            while chunk := file.read(WRITE_BUFFER):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _sweep(directory: Path) -> int:
    removed = 0
    for path in directory.glob("*") if directory.is_dir() else ():
        path.unlink(missing_ok=True)
        removed += 1
    return removed
