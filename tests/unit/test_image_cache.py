"""The host's image cache: one verified download per image, nothing corrupt kept."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostd.image_cache import Fetch, ImageCache, ImageCorrupt, ImageFetchFailed
from store.blobs import ImageStore, MemoryImageStore

MIB = 1024 * 1024


class Origin:
    """Where hosts fetch images from (the gateway in production): an image store whose
    fetches are counted and yield to the loop between chunks, as a socket would."""

    def __init__(self, store: ImageStore | None = None) -> None:
        self.store = store or MemoryImageStore()
        self.fetches: list[str] = []

    async def add(self, image_id: str, data: bytes) -> str:
        """Store an image at the origin; returns its sha512."""
        info = await self.store.put(image_id, _once(data))
        return info.os_hash_value

    async def fetch(self, image_id: str) -> AsyncIterator[bytes]:
        self.fetches.append(image_id)
        async with await self.store.open(image_id) as reader:
            async for chunk in reader:
                await asyncio.sleep(0)
                yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_concurrent_ensures_download_once(tmp_path: Path) -> None:
    """Five spawns needing one image at once: one fetch, one verified file, five same paths."""
    origin = Origin()
    data = os.urandom(3 * MIB + 5)
    digest = await origin.add("img-1", data)
    cache = ImageCache(tmp_path, origin.fetch)
    paths = await asyncio.gather(*(cache.ensure("img-1", digest) for _ in range(5)))
    assert origin.fetches == ["img-1"]
    assert set(paths) == {tmp_path / "img-1"}
    assert (tmp_path / "img-1").read_bytes() == data


async def test_cache_hit_does_not_fetch(tmp_path: Path) -> None:
    """Once cached, ensure returns the local path without calling fetch again; ``known``
    tells so beforehand (only for the right digest, and not after an eviction)."""
    origin = Origin()
    digest = await origin.add("img-1", os.urandom(MIB))
    cache = ImageCache(tmp_path, origin.fetch)
    assert not cache.known("img-1", digest)
    first = await cache.ensure("img-1", digest)
    assert cache.known("img-1", digest.upper()) and not cache.known("img-1", "ab" * 64)
    second = await cache.ensure("img-1", digest.upper())
    assert first == second
    assert origin.fetches == ["img-1"]
    await cache.evict("img-1")
    assert not cache.known("img-1", digest)


async def test_sha_mismatch_removes_the_download_and_raises(tmp_path: Path) -> None:
    """Data whose sha512 is not the expected one raises ImageCorrupt and leaves no file;
    a later ensure with good data succeeds."""
    origin = Origin()
    await origin.add("img-1", os.urandom(2 * MIB))
    cache = ImageCache(tmp_path, origin.fetch)
    expected = sha512(b"what the log says the image is")
    with pytest.raises(ImageCorrupt) as raised:
        await cache.ensure("img-1", expected)
    assert raised.value.expected == expected and not raised.value.retryable
    assert files_under(tmp_path) == set()
    good = await origin.add("img-2", b"fine")
    assert (await cache.ensure("img-2", good)).read_bytes() == b"fine"


async def test_restarted_cache_trusts_verified_files_without_fetching(tmp_path: Path) -> None:
    """A new cache over the same directory (hostd restarted) re-hashes the file it finds
    and uses it without a fetch when it matches."""
    origin = Origin()
    digest = await origin.add("img-1", os.urandom(MIB))
    await ImageCache(tmp_path, origin.fetch).ensure("img-1", digest)
    restarted = ImageCache(tmp_path, origin.fetch)
    assert await restarted.ensure("img-1", digest) == tmp_path / "img-1"
    assert origin.fetches == ["img-1"]


async def test_damaged_cache_file_is_fetched_again(tmp_path: Path) -> None:
    """A cached file damaged on disk no longer matches after a restart and is refetched."""
    origin = Origin()
    data = os.urandom(MIB)
    digest = await origin.add("img-1", data)
    await ImageCache(tmp_path, origin.fetch).ensure("img-1", digest)
    (tmp_path / "img-1").write_bytes(b"bit rot")
    await ImageCache(tmp_path, origin.fetch).ensure("img-1", digest)
    assert origin.fetches == ["img-1", "img-1"]
    assert (tmp_path / "img-1").read_bytes() == data


async def test_fetch_failing_midway_raises_retryable_and_keeps_nothing(tmp_path: Path) -> None:
    """An origin that breaks mid-download gives ImageFetchFailed (retryable), no file."""
    origin = Origin(MemoryImageStore(fail_reads_after=MIB))
    digest = await origin.add("img-1", os.urandom(2 * MIB))
    cache = ImageCache(tmp_path, origin.fetch)
    with pytest.raises(ImageFetchFailed) as raised:
        await cache.ensure("img-1", digest)
    assert raised.value.retryable
    assert files_under(tmp_path) == set()


async def test_stalled_fetch_times_out_and_is_closed(tmp_path: Path) -> None:
    """A fetch that stops sending fails after the idle timeout and its stream is closed."""
    closed = asyncio.Event()

    async def stalls(image_id: str) -> AsyncIterator[bytes]:
        try:
            yield b"first bytes"
            await asyncio.Event().wait()
        finally:
            closed.set()

    cache = ImageCache(tmp_path, stalls, idle_timeout=0.05)
    with pytest.raises(ImageFetchFailed, match="stalled"):
        await cache.ensure("img-1", sha512(b"anything"))
    assert closed.is_set()
    assert files_under(tmp_path) == set()


async def test_cancelled_download_hands_over_to_a_waiter(tmp_path: Path) -> None:
    """The caller downloading is cancelled: its temp file goes, and a caller waiting for
    the same image fetches it itself instead of waiting forever."""
    origin = Origin()
    data = os.urandom(2 * MIB)
    digest = await origin.add("img-1", data)
    started = asyncio.Event()

    async def first_call_stalls(image_id: str) -> AsyncIterator[bytes]:
        stall = not started.is_set()
        started.set()
        async for chunk in origin.fetch(image_id):
            yield chunk
            if stall:
                await asyncio.Event().wait()

    cache = ImageCache(tmp_path, first_call_stalls)
    downloading = asyncio.create_task(cache.ensure("img-1", digest))
    await started.wait()
    waiting = asyncio.create_task(cache.ensure("img-1", digest))
    await asyncio.sleep(0)
    downloading.cancel()
    assert (await waiting).read_bytes() == data
    with pytest.raises(asyncio.CancelledError):
        await downloading
    assert origin.fetches == ["img-1", "img-1"]
    assert files_under(tmp_path) == {"img-1"}


async def test_evict_makes_the_next_ensure_fetch(tmp_path: Path) -> None:
    """After evict the file is gone and ensure fetches the image again."""
    origin = Origin()
    digest = await origin.add("img-1", b"data")
    cache = ImageCache(tmp_path, origin.fetch)
    await cache.ensure("img-1", digest)
    await cache.evict("img-1")
    assert not (tmp_path / "img-1").exists()
    await cache.ensure("img-1", digest)
    assert origin.fetches == ["img-1", "img-1"]


async def test_sweep_removes_downloads_a_crash_left(tmp_path: Path) -> None:
    """sweep_partials removes half-done downloads and leaves cached images alone."""
    origin = Origin()
    digest = await origin.add("img-1", b"data")
    cache = ImageCache(tmp_path, origin.fetch)
    await cache.ensure("img-1", digest)
    (tmp_path / ".partial" / "img-2.0123").write_bytes(b"half")
    assert await cache.sweep_partials() == 1
    assert files_under(tmp_path) == {"img-1"}
    assert await ImageCache(tmp_path / "fresh", origin.fetch).sweep_partials() == 0


@pytest.mark.parametrize("image_id", ["", "../etc", ".partial", "a/b"])
async def test_ids_that_are_not_file_names_are_refused(tmp_path: Path, image_id: str) -> None:
    """An id that could escape the cache directory is refused before any fetch."""
    origin = Origin()
    fetch: Fetch = origin.fetch
    with pytest.raises(ValueError):
        await ImageCache(tmp_path, fetch).ensure(image_id, sha512(b""))
    assert origin.fetches == []


async def test_an_image_removed_behind_the_cache_is_fetched_again(tmp_path: Path) -> None:
    """A verified image is trusted to stay on disk for ``recheck_after`` seconds; once
    that has passed, an image someone deleted is fetched again instead of handed out."""
    origin = Origin()
    digest = await origin.add("img-1", b"disk")
    cache = ImageCache(tmp_path, origin.fetch, recheck_after=0.0)
    path = await cache.ensure("img-1", digest)
    path.unlink()
    assert await cache.ensure("img-1", digest) == path
    assert path.read_bytes() == b"disk"
    assert origin.fetches == ["img-1", "img-1"]
