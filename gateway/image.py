"""Glance v2 subset under ``/image``: create, patch, upload, download, list, show, delete.

Writes are commands to the ``image`` actor (correlation id = the request id) that wait
for the ``images`` projection, so the next read sees them; reads come from that table.
Image data streams between the request and the `ImageStore` chunk by chunk, never whole
in memory. Access is Glance's: a private image is visible to its owner project only
(admin sees all), a public one to everyone; what one cannot see is 404, what one can see
but not change is 403; changes need the member role.

Store errors map once, here: ImageDataExists 409, ImageTooLarge 413,
ImageStoreUnavailable 503, ImageNotFound (data missing) 204 on download as Glance.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.image import (
    CreateImage,
    DeleteImage,
    FailUpload,
    FinishUpload,
    ImageFields,
    StartUpload,
    UpdateImage,
)
from actors.image_views import COLUMNS, PROJECTION_NAME
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate, require
from gateway.commands import command as actor_command
from gateway.errors import ApiError, ErrorCode
from gateway.image_docs import (
    PATCH_MEDIA_TYPE,
    apply_patch,
    fields_from,
    image_doc,
    list_filters,
    read_only_check,
    schema_doc,
)
from gateway.json import decode, json_response, read_body
from schemas.images import IMAGE_ID_PATTERN
from store.blobs import (
    ImageDataExists,
    ImageNotFound,
    ImageStore,
    ImageStoreError,
    ImageStoreUnavailable,
    ImageTooLarge,
)
from store.protocol import ProjectionStore

log = structlog.get_logger("orrery.gateway.image")

Doc = dict[str, Any]
Row = tuple[Any, ...]
CHUNK = 64 * 1024
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request", "forbidden": "forbidden"}
_PROPS = msgspec.json.Decoder(dict[str, str])
_ID_RE = re.compile(IMAGE_ID_PATTERN)


class ImageApi:
    """The image `ServiceApi`: every route under ``/image``."""

    service = "image"

    def __init__(self, store: ProjectionStore, client: ActorClient, images: ImageStore, *,
                 wait_timeout: float = 10.0, size_cap: int | None = 1 << 40,
                 idle_timeout: float = 60.0) -> None:
        self.store = store
        self.client = client
        self.images = images
        self.wait_timeout = wait_timeout
        self.size_cap = size_cap
        self.idle_timeout = idle_timeout

    def register(self, router: ServiceRouter) -> None:
        router.post("/v2/images", self.create)
        router.get("/v2/images", self.list_images)
        router.get("/v2/images/{id}", self.show)
        router.patch("/v2/images/{id}", self.update)
        router.delete("/v2/images/{id}", self.delete)
        router.put("/v2/images/{id}/file", self.upload, max_body="unlimited")
        router.get("/v2/images/{id}/file", self.download)
        router.get("/v2/schemas/image", self.schema)
        router.get("/v2/schemas/images", self.schemas)

    # -- writes ------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        require(context, "member")
        body = decode(await read_body(request), dict[str, Any])
        image_id = str(body.pop("id", None) or uuid.uuid4())
        if not _ID_RE.fullmatch(image_id):
            raise ApiError("bad_request", f"Invalid image id: {image_id!r}.")
        read_only_check(body)
        fields = fields_from(body)
        _may_publish(context, fields)
        if await self._find(image_id):
            raise ApiError("conflict", f"Image with identifier {image_id} already exists!")
        await self._command(request, context, image_id,
                            CreateImage(owner=context.project_id or "", fields=fields))
        return json_response(await self._doc(request, image_id), status=201,
                             headers={"Location": _self(request, image_id)})

    async def update(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        row = await self._writable(request, context)
        media = request.content_type
        if media != PATCH_MEDIA_TYPE:
            raise ApiError("unsupported_media_type",
                           f"Unsupported Content-Type {media!r}: use {PATCH_MEDIA_TYPE}.")
        ops = decode(await read_body(request), list[dict[str, Any]])
        fields = apply_patch(_fields_of(row), ops)
        _may_publish(context, fields)
        await self._command(request, context, row[0], UpdateImage(fields=fields))
        return json_response(await self._doc(request, row[0]))

    async def delete(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        row = await self._writable(request, context)
        await self._command(request, context, row[0], DeleteImage())
        try:
            await self.images.delete(row[0])
        except ImageStoreError as exc:  # the record is gone; the data is an orphan to sweep
            log.warning("image_data_delete_failed", image_id=row[0], error=str(exc))
        return web.Response(status=204)

    async def upload(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        row = await self._writable(request, context)
        image_id = row[0]
        if row[3] != "queued":
            raise ApiError("conflict", f"Image status transition from {row[3]} to saving "
                                       "is not allowed")
        await self._command(request, context, image_id, StartUpload())
        try:
            info = await self.images.put(image_id, self._chunks(request), self.size_cap)
        except BaseException as exc:
            await asyncio.shield(self._fail(request, context, image_id, exc))
            raise _upload_error(exc) from exc
        await self._command(request, context, image_id, FinishUpload(
            size=info.size, checksum=info.checksum, os_hash_algo=info.os_hash_algo,
            os_hash_value=info.os_hash_value))
        log.info("image_uploaded", image_id=image_id, size=info.size)
        return web.Response(status=204, content_type="application/octet-stream")

    async def _chunks(self, request: web.Request) -> AsyncIterator[bytes]:
        """The request body chunk by chunk; 408 when the client stalls past idle_timeout."""
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await request.content.read(CHUNK)
            except TimeoutError:
                raise ApiError("request_timeout") from None
            if not chunk:
                return
            yield chunk

    async def _fail(self, request: web.Request, context: AuthContext, image_id: str,
                    exc: BaseException) -> None:
        """Back to queued after a failed upload, so the client can PUT again."""
        log.info("image_upload_failed", image_id=image_id, reason=type(exc).__name__)
        try:
            await self._command(request, context, image_id,
                                FailUpload(reason=type(exc).__name__))
        except ApiError as error:
            log.warning("image_upload_reset_failed", image_id=image_id, error=error.message)

    # -- reads ---------------------------------------------------------------------------

    async def show(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        row = await self._visible(request, context)
        return json_response(image_doc(request, row))

    async def download(self, request: web.Request) -> web.StreamResponse:
        context = await authenticate(request)
        row = await self._visible(request, context)
        if row[3] != "active":
            return web.Response(status=204)
        try:
            reader = await self.images.open(row[0])
        except ImageNotFound:
            return web.Response(status=204)
        except ImageStoreUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from exc
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream", "Content-MD5": row[11] or ""})
        response.content_length = reader.size
        async with reader:
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in reader:
                    await response.write(chunk)
        await response.write_eof()
        return response

    async def list_images(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        where, args = list_filters(request.query)
        if not context.is_admin:
            args.append(context.project_id or "")
            where.append(f"(visibility = 'public' OR owner = ${len(args)})")
        limit = _limit(request.query)
        marker = request.query.get("marker")
        if marker:
            where, args = await self._after(request, context, marker, where, args)
        sql = f"SELECT {COLUMNS} FROM images"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.store.query(
            sql + f" ORDER BY created_at DESC, id DESC LIMIT {limit + 1}", *args)
        body: Doc = {"images": [image_doc(request, r) for r in rows[:limit]],
                     "first": "/v2/images", "schema": "/v2/schemas/images"}
        if len(rows) > limit:
            body["next"] = _next_link(request.query, rows[limit - 1][0], limit)
        return json_response(body)

    async def _after(self, request: web.Request, context: AuthContext, marker: str,
                     where: list[str], args: list[Any]) -> tuple[list[str], list[Any]]:
        found = await self._find(marker)
        if found is None or not _sees(context, found):
            raise ApiError("bad_request", f"marker {marker} could not be found.")
        args = [*args, found[16], marker]
        n = len(args)
        return [*where, f"(created_at < ${n - 1} OR (created_at = ${n - 1} AND id < ${n}))"], args

    async def schema(self, request: web.Request) -> web.Response:
        await authenticate(request)
        return json_response(schema_doc())

    async def schemas(self, request: web.Request) -> web.Response:
        await authenticate(request)
        return json_response({"name": "images", "properties": {
            "images": {"type": "array", "items": schema_doc()},
            "schema": {"type": "string"}, "first": {"type": "string"},
            "next": {"type": "string"}}, "links": [
            {"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"}]})

    # -- plumbing ------------------------------------------------------------------------

    async def _find(self, image_id: str) -> Row | None:
        rows = await self.store.query(f"SELECT {COLUMNS} FROM images WHERE id = $1", image_id)
        return rows[0] if rows else None

    async def _visible(self, request: web.Request, context: AuthContext) -> Row:
        image_id = request.match_info["id"]
        row = await self._find(image_id)
        if row is None or not _sees(context, row):
            raise ApiError("not_found", f"No image found with ID {image_id}")
        return row

    async def _writable(self, request: web.Request, context: AuthContext) -> Row:
        row = await self._visible(request, context)
        require(context, "member")
        if not context.is_admin and row[1] != context.project_id:
            raise ApiError("forbidden", "You are not permitted to modify an image owned by "
                                        "another project.")
        return row

    async def _doc(self, request: web.Request, image_id: str) -> Doc:
        row = await self._find(image_id)
        if row is None:
            raise ApiError("not_found", f"No image found with ID {image_id}")
        return image_doc(request, row)

    async def _command(self, request: web.Request, context: AuthContext, image_id: str,
                       command: msgspec.Struct) -> None:
        await actor_command(self.client, self.store, request, "image", image_id, command,
                            codes=_CODES, projection=PROJECTION_NAME, what="image",
                            wait_timeout=self.wait_timeout, project_id=context.project_id,
                            user_id=context.user_id)


def _sees(context: AuthContext, row: Row) -> bool:
    return context.is_admin or row[4] == "public" or row[1] == context.project_id


def _may_publish(context: AuthContext, fields: ImageFields) -> None:
    if fields.visibility == "public" and not context.is_admin:
        raise ApiError("forbidden", "You are not authorized to publicize an image.")


def _fields_of(row: Row) -> ImageFields:
    return ImageFields(
        name=row[2], visibility=row[4], protected=bool(row[5]), disk_format=row[6],
        container_format=row[7], min_disk=row[8], min_ram=row[9],
        properties=_PROPS.decode(row[14]), tags=tuple(msgspec.json.decode(row[15])))


def _self(request: web.Request, image_id: str) -> str:
    return f"{request.scheme}://{request.host}/image/v2/images/{image_id}"


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit():
        raise ApiError("bad_request", f"limit param must be an integer, not {text!r}")
    return max(1, min(int(text), MAX_LIMIT))


def _next_link(query: Mapping[str, str], last_id: str, limit: int) -> str:
    params = {k: v for k, v in query.items() if k not in ("marker", "limit")}
    return "/v2/images?" + urlencode({**params, "limit": limit, "marker": last_id})


def _upload_error(exc: BaseException) -> BaseException:
    match exc:
        case ApiError():
            return exc
        case ImageDataExists():
            return ApiError("conflict", "Image data already exists for this image.")
        case ImageTooLarge():
            return ApiError("too_large", f"Image exceeds the storage quota of {exc.limit} "
                                         "bytes.")
        case ImageStoreUnavailable():
            return ApiError("unavailable", "The image store failed; try the upload again.")
    return exc
