"""The ImageStore contract, run against the directory store and the in-memory fake."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from store.blobs import (
    CHUNK_SIZE,
    DirectoryImageStore,
    ImageDataExists,
    ImageNotFound,
    ImageStore,
    ImageStoreUnavailable,
    ImageTooLarge,
    InvalidImageId,
    MemoryImageStore,
)

MIB = 1024 * 1024
#: odd sizes, so chunk edges never line up with the store's buffers
ODD_SIZES = (1, 4093, 65_537, 7, 300_001, 12_345)


class SourceBroke(Exception):
    """What a client disconnecting mid-upload looks like to the store."""


@pytest.fixture(params=["directory", "memory"])
def image_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """An empty image store of each implementation."""
    if request.param == "directory":
        return DirectoryImageStore(tmp_path / "images")
    return MemoryImageStore()


def odd_chunks(data: bytes, sizes: Iterable[int] = ODD_SIZES) -> list[bytes]:
    """``data`` cut into chunks whose sizes cycle through ``sizes``."""
    chunks: list[bytes] = []
    offset, cycle = 0, list(sizes)
    while offset < len(data):
        size = cycle[len(chunks) % len(cycle)]
        chunks.append(data[offset : offset + size])
        offset += size
    return chunks


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An upload body: the chunks, yielding to the loop between them as a socket would."""
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def broken_after(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    """An upload body that sends ``data`` and then fails with ``error``."""
    for chunk in odd_chunks(data):
        yield chunk
    raise error


async def read_all(store: ImageStore, image_id: str) -> bytes:
    """Every byte of the stored image, through open()."""
    async with await store.open(image_id) as reader:
        return b"".join([chunk async for chunk in reader])


async def test_round_trip_is_byte_identical(image_store: ImageStore) -> None:
    """A multi-MB random image uploaded in odd-sized chunks reads back byte for byte."""
    data = os.urandom(3 * MIB + 12_345)
    await image_store.put("img-1", stream(odd_chunks(data)))
    assert await read_all(image_store, "img-1") == data


async def test_hashes_and_size_are_hashlibs(image_store: ImageStore) -> None:
    """put returns size, md5 checksum and sha512 equal to hashlib's; info returns the same."""
    data = os.urandom(2 * MIB + 1)
    info = await image_store.put("img-1", stream(odd_chunks(data)))
    assert info.size == len(data)
    assert info.checksum == hashlib.md5(data).hexdigest()
    assert info.os_hash_algo == "sha512"
    assert info.os_hash_value == hashlib.sha512(data).hexdigest()
    assert await image_store.info("img-1") == info


async def test_empty_image_is_stored(image_store: ImageStore) -> None:
    """An upload of no bytes is a valid image of size 0 with the empty hashes."""
    info = await image_store.put("empty", stream([]))
    assert (info.size, info.os_hash_value) == (0, hashlib.sha512(b"").hexdigest())
    assert await read_all(image_store, "empty") == b""


async def test_open_yields_bounded_chunks_and_knows_the_size(image_store: ImageStore) -> None:
    """open() knows the size before the first chunk and yields chunks of at most 64 KiB."""
    data = os.urandom(CHUNK_SIZE * 3 + 10)
    await image_store.put("img-1", stream([data]))
    reader = await image_store.open("img-1")
    sizes = [len(chunk) async for chunk in reader]
    assert reader.size == len(data)
    assert sizes == [CHUNK_SIZE] * 3 + [10]


async def test_reader_closed_early_stops(image_store: ImageStore) -> None:
    """A reader closed after one chunk yields nothing more (a client that hung up)."""
    await image_store.put("img-1", stream([os.urandom(CHUNK_SIZE * 4)]))
    reader = await image_store.open("img-1")
    assert len(await anext(reader)) == CHUNK_SIZE
    await reader.aclose()
    assert [chunk async for chunk in reader] == []


async def test_max_size_refuses_and_keeps_nothing(image_store: ImageStore) -> None:
    """Going past max_size raises ImageTooLarge and stores nothing; the id stays free."""
    data = os.urandom(2 * MIB)
    with pytest.raises(ImageTooLarge) as raised:
        await image_store.put("img-1", stream(odd_chunks(data)), max_size=MIB)
    assert raised.value.limit == MIB
    with pytest.raises(ImageNotFound):
        await image_store.open("img-1")
    await image_store.put("img-1", stream([data[:MIB]]), max_size=MIB)
    assert await read_all(image_store, "img-1") == data[:MIB]


async def test_duplicate_put_is_refused_without_reading(image_store: ImageStore) -> None:
    """A second put for an image with data raises ImageDataExists and keeps the first data."""
    first = os.urandom(100_000)
    await image_store.put("img-1", stream([first]))
    consumed: list[bytes] = []

    async def second() -> AsyncIterator[bytes]:
        consumed.append(b"x")
        yield b"x"

    with pytest.raises(ImageDataExists):
        await image_store.put("img-1", second())
    assert consumed == []
    assert await read_all(image_store, "img-1") == first


async def test_racing_puts_of_one_image_have_one_winner(image_store: ImageStore) -> None:
    """Two concurrent puts of one id: exactly one succeeds and its data is what is stored."""
    one, two = os.urandom(2 * MIB), os.urandom(2 * MIB)
    results = await asyncio.gather(
        image_store.put("img-1", stream(odd_chunks(one))),
        image_store.put("img-1", stream(odd_chunks(two))),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ImageDataExists)
    winner = one if not isinstance(results[0], BaseException) else two
    assert await read_all(image_store, "img-1") == winner


async def test_concurrent_puts_of_different_images(image_store: ImageStore) -> None:
    """Several images uploaded at once each read back as their own data."""
    images = {f"img-{n}": os.urandom(MIB + n * 777) for n in range(4)}
    infos = await asyncio.gather(
        *(image_store.put(i, stream(odd_chunks(d))) for i, d in images.items())
    )
    for (image_id, data), info in zip(images.items(), infos, strict=True):
        assert info.os_hash_value == hashlib.sha512(data).hexdigest()
        assert await read_all(image_store, image_id) == data


async def test_delete_is_idempotent_and_frees_the_id(image_store: ImageStore) -> None:
    """delete removes the data, deleting again or a missing image is fine, and the id can
    take new data."""
    await image_store.put("img-1", stream([b"old"]))
    await image_store.delete("img-1")
    await image_store.delete("img-1")
    await image_store.delete("never-stored")
    with pytest.raises(ImageNotFound):
        await image_store.open("img-1")
    await image_store.put("img-1", stream([b"new"]))
    assert await read_all(image_store, "img-1") == b"new"


async def test_missing_image_is_not_found(image_store: ImageStore) -> None:
    """open and info of an image without data raise ImageNotFound at the call."""
    with pytest.raises(ImageNotFound):
        await image_store.open("nope")
    with pytest.raises(ImageNotFound):
        await image_store.info("nope")


async def test_source_failure_propagates_and_keeps_nothing(image_store: ImageStore) -> None:
    """An upload body that breaks mid-stream raises its own error and stores nothing."""
    with pytest.raises(SourceBroke):
        await image_store.put("img-1", broken_after(os.urandom(2 * MIB), SourceBroke()))
    with pytest.raises(ImageNotFound):
        await image_store.open("img-1")


async def test_cancelled_put_keeps_nothing(image_store: ImageStore) -> None:
    """A put cancelled midway (request timeout, shutdown) leaves no data behind."""
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for chunk in odd_chunks(os.urandom(2 * MIB)):
            yield chunk
        sent.set()
        await asyncio.Event().wait()
        yield b""

    put = asyncio.create_task(image_store.put("img-1", stalls()))
    await sent.wait()
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    with pytest.raises(ImageNotFound):
        await image_store.open("img-1")


@pytest.mark.parametrize("image_id", ["", "../etc", ".meta", "a/b", "x" * 201, "é"])
async def test_ids_that_are_not_file_names_are_refused(
    image_store: ImageStore, image_id: str
) -> None:
    """An id that could escape or collide with the store's files raises InvalidImageId."""
    with pytest.raises(InvalidImageId):
        await image_store.put(image_id, stream([b"x"]))
    with pytest.raises(InvalidImageId):
        await image_store.open(image_id)
    with pytest.raises(InvalidImageId):
        await image_store.delete(image_id)


# --- the directory store's files ------------------------------------------------------


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_directory_store_keeps_the_image_at_root_slash_id(tmp_path: Path) -> None:
    """The data is the file <root>/<image_id>; after failures no temp file remains."""
    root = tmp_path / "images"
    store = DirectoryImageStore(root)
    data = os.urandom(MIB)
    await store.put("img-1", stream([data]))
    with pytest.raises(ImageTooLarge):
        await store.put("img-2", stream(odd_chunks(os.urandom(3 * MIB))), max_size=2 * MIB)
    with pytest.raises(SourceBroke):
        await store.put("img-3", broken_after(os.urandom(2 * MIB), SourceBroke()))
    await asyncio.gather(
        store.put("img-4", stream([data])),
        store.put("img-4", stream([data])),
        return_exceptions=True,
    )
    assert (root / "img-1").read_bytes() == data
    assert files_under(root) == {"img-1", ".meta/img-1", "img-4", ".meta/img-4"}
    await store.delete("img-1")
    assert files_under(root) == {"img-4", ".meta/img-4"}


async def test_directory_stores_share_a_root(tmp_path: Path) -> None:
    """Two stores on one root (two API processes) see each other's images; racing puts of
    one id through both still have one winner."""
    one, two = DirectoryImageStore(tmp_path), DirectoryImageStore(tmp_path)
    results = await asyncio.gather(
        one.put("img-1", stream(odd_chunks(os.urandom(MIB)))),
        two.put("img-1", stream(odd_chunks(os.urandom(MIB)))),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ImageDataExists) for r in results) == 1
    assert await one.info("img-1") == await two.info("img-1")


async def test_directory_info_is_rebuilt_from_the_data(tmp_path: Path) -> None:
    """A crash between placing the data and writing its hashes: info recomputes them."""
    store = DirectoryImageStore(tmp_path)
    info = await store.put("img-1", stream([os.urandom(MIB)]))
    (tmp_path / ".meta" / "img-1").unlink()
    assert await store.info("img-1") == info
    assert (tmp_path / ".meta" / "img-1").exists()


# --- the fake's injected faults -------------------------------------------------------


async def test_fake_write_fault_keeps_nothing() -> None:
    """MemoryImageStore(fail_writes_after=N): a put past N bytes raises
    ImageStoreUnavailable, retryable, and stores nothing."""
    store = MemoryImageStore(fail_writes_after=MIB)
    with pytest.raises(ImageStoreUnavailable) as raised:
        await store.put("img-1", stream(odd_chunks(os.urandom(3 * MIB))))
    assert raised.value.retryable
    with pytest.raises(ImageNotFound):
        await store.open("img-1")


async def test_fake_read_fault_breaks_the_stream() -> None:
    """MemoryImageStore(fail_reads_after=N): reading an image larger than N fails midway
    after handing out at most N bytes; smaller images read whole."""
    store = MemoryImageStore(fail_reads_after=MIB)
    await store.put("small", stream([os.urandom(MIB // 2)]))
    await store.put("big", stream([os.urandom(2 * MIB)]))
    assert len(await read_all(store, "small")) == MIB // 2
    received = bytearray()
    with pytest.raises(ImageStoreUnavailable):
        async for chunk in await store.open("big"):
            received += chunk
    assert 0 < len(received) <= MIB
