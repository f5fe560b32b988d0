"""Webhook subscriptions under ``/events/v1/subscriptions``: per project, one actor each.

- ``POST /subscriptions`` ``{url, event_types, description, all_projects}`` → 201 with the
  subscription and its signing ``secret`` (``whsec_…``), shown this once only.
- ``GET /subscriptions`` (an admin adds ``?all_projects=true`` for every project's),
  ``GET /subscriptions/{id}``, ``PATCH /subscriptions/{id}`` (``url``, ``event_types``,
  ``description``, ``enabled``), ``DELETE /subscriptions/{id}`` → 204.
- ``GET /subscriptions/{id}/deliveries`` — every delivery attempt, newest first
  (``limit``, ``before`` from the previous page's ``next_before``).
- ``POST /subscriptions/{id}/replay`` ``{"from_position": N}`` → 202: the matching events
  from position N up to now are delivered again.

Writes need the member role, reads any role; a subscription of another project is not
found (admins see all). ``all_projects`` (admin only) subscribes to every project's
events and to those without a project, as an admin sees them in the feed. A URL is
checked syntactically, then by the injected ``check_destination`` (the webhooks
destination policy: resolved addresses, loopback, private ranges); a refusal is a 400 and
no event is appended.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
from aiohttp import web

from actors.client import ActorClient
from actors.subscription import (
    KIND,
    CreateSubscription,
    DeleteSubscription,
    ReplaySubscription,
    UpdateSubscription,
    check,
    new_secret,
)
from actors.subscription_views import (
    PROJECTION_NAME,
    SubscriptionView,
    read_subscription,
    read_subscriptions,
)
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate, require
from gateway.commands import command as actor_command
from gateway.errors import ApiError, ErrorCode
from gateway.json import json_response, read_json
from schemas import Reply
from store.protocol import ProjectionStore

#: why webhooks may not go to a URL (None: they may); resolves the URL's host
CheckDestination = Callable[[str], Awaitable[str | None]]
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request"}
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


class DeliveryLog(Protocol):
    """Where the deliverer records its attempts (webhooks' tables, injected)."""

    async def attempts(self, subscription_id: str, before: int | None,
                       limit: int) -> Sequence[Mapping[str, Any]]:
        """Attempts newest first; each has a ``seq`` to page on with ``before``."""
        ...


class NewSubscription(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    event_types: list[str]
    description: str = ""
    all_projects: bool = False


class SubscriptionChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None


class Replay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    from_position: int


def _doc(view: SubscriptionView, secret: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.structs.asdict(view)
    if secret is not None:
        doc["secret"] = secret
    return doc


def _int(request: web.Request, name: str, default: int | None, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ApiError("bad_request", f"{name} must be an integer from 1 to {high}.")
    return int(raw)


class SubscriptionsApi:
    """The webhook subscription half of the ``events`` service."""

    service = "events"

    def __init__(self, store: ProjectionStore, client: ActorClient,
                 check_destination: CheckDestination, deliveries: DeliveryLog, *,
                 wait_timeout: float = 10.0) -> None:
        self.store = store
        self.client = client
        self.check_destination = check_destination
        self.deliveries = deliveries
        self.wait_timeout = wait_timeout

    def register(self, router: ServiceRouter) -> None:
        router.post("/subscriptions", self.create)
        router.get("/subscriptions", self.list_subscriptions)
        router.get("/subscriptions/{id}", self.show)
        router.patch("/subscriptions/{id}", self.update)
        router.delete("/subscriptions/{id}", self.delete)
        router.get("/subscriptions/{id}/deliveries", self.list_deliveries)
        router.post("/subscriptions/{id}/replay", self.replay)

    async def create(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        require(context, "member")
        body = await read_json(request, NewSubscription)
        types = tuple(body.event_types)
        if problem := check(body.url, types, body.description):
            raise ApiError("bad_request", problem)
        if body.all_projects and not context.is_admin:
            raise ApiError("forbidden", "Only an admin may subscribe to all projects.")
        await self._destination(body.url)
        sid, secret = str(uuid.uuid4()), new_secret()
        command = CreateSubscription(
            project_id=context.project_id or "", url=body.url, event_types=types,
            secret=secret, description=body.description, all_projects=body.all_projects)
        await self._command(request, context, sid, context.project_id, command)
        view = await self._find(sid, context)
        return json_response(_doc(view, secret), status=201)

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        every = request.query.get("all_projects", "").lower() in ("1", "true", "yes")
        if every and not context.is_admin:
            raise ApiError("forbidden", "Only an admin may list every project's subscriptions.")
        found = await read_subscriptions(self.store, None if every else context.project_id)
        return json_response({"subscriptions": [_doc(v) for v in found]})

    async def show(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        return json_response(_doc(await self._find(request.match_info["id"], context)))

    async def update(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        require(context, "member")
        view = await self._find(request.match_info["id"], context)
        body = await read_json(request, SubscriptionChange)
        types = tuple(body.event_types) if body.event_types is not None else None
        if problem := check(body.url, types, body.description):
            raise ApiError("bad_request", problem)
        if body.url is not None:
            await self._destination(body.url)
        command = UpdateSubscription(url=body.url, event_types=types,
                                     description=body.description, enabled=body.enabled)
        await self._command(request, context, view.id, view.project_id, command)
        return json_response(_doc(await self._find(view.id, context)))

    async def delete(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        require(context, "member")
        view = await self._find(request.match_info["id"], context)
        await self._command(request, context, view.id, view.project_id, DeleteSubscription())
        return web.Response(status=204)

    async def replay(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        require(context, "member")
        view = await self._find(request.match_info["id"], context)
        body = await read_json(request, Replay)
        if body.from_position < 0:
            raise ApiError("bad_request", "from_position must be 0 or more.")
        reply = await self._command(request, context, view.id, view.project_id,
                                    ReplaySubscription(from_position=body.from_position))
        return json_response({"replay": {"subscription_id": view.id,
                                         "from_position": body.from_position,
                                         "until_position": reply.position}}, status=202)

    async def list_deliveries(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        view = await self._find(request.match_info["id"], context)
        limit = _int(request, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        before = _int(request, "before", None, 2**62)
        found = list(await self.deliveries.attempts(view.id, before, limit))
        more = found[-1]["seq"] if len(found) == limit else None
        return json_response({"deliveries": found, "next_before": more})

    async def _find(self, sid: str, context: AuthContext) -> SubscriptionView:
        view = await read_subscription(self.store, sid)
        if view is None or not context.sees_project(view.project_id):
            raise ApiError("not_found", f"Subscription {sid} could not be found.")
        return view

    async def _destination(self, url: str) -> None:
        if problem := await self.check_destination(url):
            raise ApiError("bad_request", problem)

    async def _command(self, request: web.Request, context: AuthContext, sid: str,
                       project_id: str | None, command: msgspec.Struct) -> Reply:
        return await actor_command(self.client, self.store, request, KIND, sid, command,
                                   codes=_CODES, projection=PROJECTION_NAME,
                                   what="subscriptions", wait_timeout=self.wait_timeout,
                                   project_id=project_id, user_id=context.user_id)
