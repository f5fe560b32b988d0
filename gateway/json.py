"""JSON at the API edge: bounded body reads, msgspec decoding into Structs, JSON responses.

Request bodies decode straight into the schema's Struct; a Struct declared with
``forbid_unknown_fields=True`` refuses fields the OpenStack API does not know. Every
failure is an `ApiError` the middleware renders in the service's style:

- empty or malformed JSON -> ``bad_request`` "Malformed request body: ..."
- wrong shape, type or an unknown field -> ``bad_request`` "Invalid input: <msgspec's
  message, which names the field and its path>"
- over the route's body limit -> ``too_large``; not received in time -> ``request_timeout``
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import msgspec
from aiohttp import web

from gateway.errors import ApiError

__all__ = [
    "BODY_TIMEOUT_KEY",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "MAX_BODY_KEY",
    "decode",
    "json_response",
    "read_body",
    "read_json",
]

T = TypeVar("T")

#: Set by the middleware from the route's limit (None: exempt) and the gateway settings.
MAX_BODY_KEY = web.RequestKey[int | None]("orrery_max_body")
BODY_TIMEOUT_KEY = web.RequestKey("orrery_body_timeout", float)  # seconds for the whole body
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_BODY_TIMEOUT = 30.0

_ENCODER = msgspec.json.Encoder()


def json_response(
    body: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`body` (dicts, lists, Structs) encoded by msgspec as an ``application/json`` response."""
    return web.Response(
        body=_ENCODER.encode(body), status=status, content_type="application/json",
        headers=headers,
    )


_DECODERS: dict[object, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: object) -> msgspec.json.Decoder[Any]:
    """One Decoder per target type, built on first use (building one compiles the type)."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode(body: bytes, type_: type[T]) -> T:
    """`body` decoded into `type_`, or ApiError ``bad_request`` with a readable message."""
    if not body.strip():
        raise ApiError("bad_request", "Malformed request body: the body is empty.")
    try:
        return cast(T, _decoder(type_).decode(body))
    except msgspec.ValidationError as exc:
        raise ApiError("bad_request", f"Invalid input: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ApiError("bad_request", f"Malformed request body: {exc}") from exc


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the route's size limit and the body timeout.

    Reads the stream itself (not ``request.read()``), so a chunked body with no
    Content-Length is cut off as soon as it passes the limit.
    """
    limit = request.get(MAX_BODY_KEY, DEFAULT_MAX_BODY)
    timeout = request.get(BODY_TIMEOUT_KEY, DEFAULT_BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            return await _read_bounded(request, limit)
    except TimeoutError:
        raise ApiError("request_timeout") from None


async def _read_bounded(request: web.Request, limit: int | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if limit is not None and size > limit:
            raise ApiError("too_large", f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, type_: type[T]) -> T:
    """The request's JSON body decoded into `type_` (see the module docstring for errors)."""
    return decode(await read_body(request), type_)
