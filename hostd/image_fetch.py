"""Where a host's image cache gets image bytes: the image store's directory, or its HTTP API.

Both return a ``Fetch`` (image id -> async iterator of chunks) for ``ImageCache``. A fetch
raises ImageMissing when the origin has no data for the image; any other error is a
failed (retryable) fetch for the cache. hostd never imports ``store/``: the directory
layout of the image store (``<root>/<image_id>`` holds the data) is re-read here by path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import aiohttp
import structlog

from hostd.image_cache import Fetch, ImageMissing
from schemas.images import IMAGE_ID_PATTERN

log = structlog.get_logger(__name__)

#: bytes read (directory) or asked for (HTTP) per chunk
CHUNK_SIZE = 256 * 1024
#: seconds to connect to the image API, and to wait for its next bytes
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: an async function that returns a valid token for the image API
TokenProvider = Callable[[], Awaitable[str]]
_ID = re.compile(IMAGE_ID_PATTERN)


class ImageOriginError(Exception):
    """The origin answered, but not with the image's data (a retryable fetch failure)."""


def _check(image_id: str) -> None:
    if not _ID.fullmatch(image_id):
        raise ImageMissing(image_id, "not a valid image id")


def directory_fetch(root: Path, *, chunk_size: int = CHUNK_SIZE) -> Fetch:
    """Read images from an image store directory shared with the host (``<root>/<id>``)."""

    async def fetch(image_id: str) -> AsyncIterator[bytes]:
        _check(image_id)
        try:
            file: BinaryIO = await asyncio.to_thread((root / image_id).open, "rb")
        except FileNotFoundError:
            raise ImageMissing(image_id, f"no data file in {root}") from None
        try:
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(file.close)

    return fetch


def http_fetch(
    base_url: str, token_provider: TokenProvider, *, chunk_size: int = CHUNK_SIZE,
    connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
) -> Fetch:
    """Stream ``GET {base_url}/image/v2/images/{id}/file`` with an ``X-Auth-Token``.

    ``base_url`` is the gateway's root (``http://api:8080``). 404 (or 204, no data) is
    ImageMissing; any other non-200 answer is ImageOriginError.
    """
    base = base_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                    sock_read=read_timeout)

    async def fetch(image_id: str) -> AsyncIterator[bytes]:
        _check(image_id)
        async with asyncio.timeout(connect_timeout):
            token = await token_provider()
        url = f"{base}/image/v2/images/{image_id}/file"
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url, headers={"X-Auth-Token": token}) as resp:
            if resp.status in (404, 204):
                raise ImageMissing(image_id, f"GET {url} answered {resp.status}")
            if resp.status != 200:
                body = (await resp.text())[:200]
                raise ImageOriginError(f"GET {url} answered {resp.status}: {body}")
            log.debug("image_download_started", image_id=image_id,
                      size=resp.content_length)
            async for chunk in resp.content.iter_chunked(chunk_size):
                yield chunk

    return fetch
