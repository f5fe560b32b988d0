"""The image cache's two origins: the image store's directory and the image API over HTTP."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from hostd.image_cache import ImageCache, ImageFetchFailed, ImageMissing
from hostd.image_fetch import directory_fetch, http_fetch
from store.blobs import DirectoryImageStore
from tests.support.serve import serving

MIB = 1024 * 1024
TOKEN = "gAAAA-host-token"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_directory_fetch_reads_what_the_image_store_wrote(tmp_path: Path) -> None:
    """An image put into a DirectoryImageStore is fetched byte for byte from its directory
    and cached under its sha512; an id the store does not have is ImageMissing."""
    store = DirectoryImageStore(tmp_path / "store")
    data = os.urandom(3 * MIB + 7)
    info = await store.put("img-1", _once(data))
    cache = ImageCache(tmp_path / "cache", directory_fetch(tmp_path / "store"))
    path = await cache.ensure("img-1", info.os_hash_value)
    assert path.read_bytes() == data
    with pytest.raises(ImageMissing) as raised:
        await cache.ensure("img-2", hashlib.sha512(b"x").hexdigest())
    assert not raised.value.retryable


class ImageApi:
    """A tiny stand-in for the gateway's ``GET /image/v2/images/{id}/file``."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.tokens: list[str] = []
        self.fail_with: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/image/v2/images/{id}/file", self.file)
        return app

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.tokens.append(request.headers.get("X-Auth-Token", ""))
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="broken")
        if request.headers.get("X-Auth-Token") != TOKEN:
            return web.Response(status=401, text="no token")
        data = self.images.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404, text="not found")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for start in range(0, len(data), MIB):
            await resp.write(data[start:start + MIB])
        await resp.write_eof()
        return resp


async def _token() -> str:
    return TOKEN


async def test_http_fetch_streams_the_image_with_a_token(tmp_path: Path) -> None:
    """http_fetch GETs the file with X-Auth-Token from the provider; the cache verifies it,
    and a second ensure does not fetch again."""
    data = os.urandom(5 * MIB + 3)
    api = ImageApi({"img-1": data})
    async with serving(api.app()) as base:
        cache = ImageCache(tmp_path, http_fetch(base + "/", _token))
        digest = hashlib.sha512(data).hexdigest()
        assert (await cache.ensure("img-1", digest)).read_bytes() == data
        await cache.ensure("img-1", digest)
    assert api.tokens == [TOKEN]


async def test_http_fetch_errors_say_whether_to_retry(tmp_path: Path) -> None:
    """404 is ImageMissing (not retryable); a 503 or a refused token is a retryable
    ImageFetchFailed; nothing is left in the cache."""
    api = ImageApi({"img-1": b"data"})
    digest = hashlib.sha512(b"data").hexdigest()
    async with serving(api.app()) as base:
        with pytest.raises(ImageMissing):
            await ImageCache(tmp_path, http_fetch(base, _token)).ensure("nope", digest)

        async def stale() -> str:
            return "expired"

        with pytest.raises(ImageFetchFailed, match="401") as refused:
            await ImageCache(tmp_path, http_fetch(base, stale)).ensure("img-1", digest)
        api.fail_with = 503
        with pytest.raises(ImageFetchFailed, match="503") as unavailable:
            await ImageCache(tmp_path, http_fetch(base, _token)).ensure("img-1", digest)
    assert refused.value.retryable and unavailable.value.retryable
    assert not (tmp_path / "img-1").exists()
