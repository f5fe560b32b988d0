"""A write through an actor, as every API answers it: the command sent on behalf of the
request (its request id becomes the correlation id), a refusal turned into the service's
error, and the answer held until the projection the API reads has folded the write, so a
client that POSTs then GETs sees it."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from aiohttp import web

from actors.client import ActorClient
from bus.errors import CallTimeout
from gateway.errors import ApiError, ErrorCode
from gateway.middleware import REQUEST_ID
from schemas import Reply
from store.protocol import ProjectionStore


async def command(client: ActorClient, store: ProjectionStore, request: web.Request,
                  kind: str, actor_id: str, message: msgspec.Struct, *,
                  codes: Mapping[str, ErrorCode], projection: str, what: str,
                  wait_timeout: float, project_id: str | None = None,
                  user_id: str | None = None) -> Reply:
    """Send ``message`` to ``kind:actor_id`` and wait until ``projection`` shows what it
    recorded. A refusal is the ApiError ``codes`` maps its error type to (``internal``
    when unmapped); no answer in time is 504; a projection still behind after
    ``wait_timeout`` is 503 naming ``what`` projection."""
    try:
        reply = await client.call(kind, actor_id, message, correlation_id=request[REQUEST_ID],
                                  project_id=project_id, user_id=user_id)
    except CallTimeout as exc:
        raise ApiError("deadline_exceeded") from exc
    if not reply.ok:
        raise ApiError(codes.get(reply.error_type or "", "internal"), reply.error)
    if reply.position and not await store.wait_for_projection(projection, reply.position,
                                                              wait_timeout):
        raise ApiError("unavailable", f"The {what} projection is behind; try again.")
    return reply
