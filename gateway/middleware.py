"""The gateway's one middleware: request ids, body limits, microversions, per-service errors.

For every request it

1. makes a request id ``req-<uuid4>``, stores it as ``request[REQUEST_ID]`` and binds it
   into structlog's contextvars as ``correlation_id`` while the handler runs (it becomes
   the correlation id of the commands the request sends);
2. finds the service whose root the path is under (longest root wins) and stores it as
   ``request[SERVICE]`` (None outside every service);
3. refuses a declared Content-Length over the route's body limit with 413 (`read_body`
   enforces the same limit on chunked bodies) and records the limit for it;
4. negotiates the microversion of a microversioned service: ``request[API_VERSION]``;
5. renders `ApiError`, aiohttp's own HTTP errors (404 of an unknown path, 405) and
   unexpected exceptions (500, logged) in the service's error style.

The keys are typed ``web.RequestKey``s (aiohttp 3.14 warns on string keys).
`on_prepare` (an ``on_response_prepare`` signal, so streamed responses get it too) adds
``X-OpenStack-Request-Id``, the service's extra request-id headers and the microversion
echo with ``Vary``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import Counter, Histogram

from gateway.discovery import APIVersion, Microversions
from gateway.errors import ApiError, Style, code_for_status, render_error
from gateway.json import BODY_TIMEOUT_KEY, MAX_BODY_KEY
from schemas.envelope import new_uuid

__all__ = [
    "API_VERSION",
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "ROUTE_LIMITS",
    "SERVICE",
    "Limits",
    "ServiceSpec",
    "Services",
    "make_middleware",
    "on_prepare",
]

log = structlog.get_logger("gateway")

REQUEST_ID_HEADER = "X-OpenStack-Request-Id"
DEFAULT_STYLE = Style.KEYSTONE

REQUESTS = Counter(
    "orrery_api_requests_total", "API requests answered", ["service", "status"]
)
REQUEST_SECONDS = Histogram(
    "orrery_api_request_seconds", "Time to answer an API request (to its handler's return)",
    ["service"],
)


@dataclass(frozen=True)
class ServiceSpec:
    """One OpenStack service as the gateway mounts it.

    `root` (``/compute``) covers its discovery documents and every path whose errors take
    its `style`; `prefix` (``/compute/v2.1``, the catalog URL's path) is where its API
    routes are mounted.
    """

    name: str
    root: str
    prefix: str
    style: Style
    microversions: Microversions | None = None
    request_id_headers: tuple[str, ...] = ()  # Nova's X-Compute-Request-Id

    def covers(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")


class Services:
    """The services of one app, found by path."""

    def __init__(self, specs: Iterable[ServiceSpec]) -> None:
        self._specs = sorted(specs, key=lambda spec: len(spec.root), reverse=True)
        names = [spec.name for spec in self._specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {sorted(names)}")

    def for_path(self, path: str) -> ServiceSpec | None:
        return next((spec for spec in self._specs if spec.covers(path)), None)

    def named(self, name: str) -> ServiceSpec:
        for spec in self._specs:
            if spec.name == name:
                return spec
        raise KeyError(f"no service named {name!r}; known: {sorted(s.name for s in self._specs)}")

    def __iter__(self) -> Iterator[ServiceSpec]:
        return iter(self._specs)


@dataclass(frozen=True)
class Limits:
    """Request body limits: `max_body` bytes by default, received within `body_timeout` s."""

    max_body: int = 1 << 20
    body_timeout: float = 30.0


#: what the request's handler can read
REQUEST_ID = web.RequestKey("orrery_request_id", str)
SERVICE = web.RequestKey[ServiceSpec | None]("orrery_service")
API_VERSION = web.RequestKey[APIVersion | None]("orrery_api_version")

RouteLimit = int | Literal["unlimited"] | None
#: per-route body limits that differ from the default; None in the value means no limit
ROUTE_LIMITS = web.AppKey("orrery_route_limits", dict[AbstractRoute, int | None])


def make_middleware(services: Services, limits: Limits) -> Middleware:
    """The middleware for an app serving `services` (see the module docstring)."""

    @web.middleware
    async def gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = f"req-{new_uuid()}"
        request[REQUEST_ID] = request_id
        spec = services.for_path(request.path)
        request[SERVICE] = spec
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(correlation_id=request_id):
            response = await _answer(request, handler, spec, limits)
            log.debug("api_request", method=request.method, path=request.path,
                      status=response.status)
        label = spec.name if spec else "none"
        REQUESTS.labels(label, str(response.status)).inc()
        REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)
        return response

    return gateway


async def _answer(
    request: web.Request, handler: Handler, spec: ServiceSpec | None, limits: Limits
) -> web.StreamResponse:
    """The handler's response, or the error it raised in the service's style."""
    try:
        _check_body(request, limits)
        _negotiate(request, spec)
        return await handler(request)
    except ApiError as error:
        return _render(request, spec, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _render(request, spec, _from_http(exc))
    except Exception:
        log.exception("api_request_failed", method=request.method, path=request.path)
        return _render(request, spec, ApiError("internal"))


def _check_body(request: web.Request, limits: Limits) -> None:
    limit = request.config_dict.get(ROUTE_LIMITS, {}).get(request.match_info.route, limits.max_body)
    request[MAX_BODY_KEY] = limit
    request[BODY_TIMEOUT_KEY] = limits.body_timeout
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        raise ApiError("too_large", f"The request body is larger than {limit} bytes.")


def _negotiate(request: web.Request, spec: ServiceSpec | None) -> None:
    """Store the requested microversion; only for a matched route, as Nova decides it."""
    request[API_VERSION] = None
    if spec is None or spec.microversions is None:
        return
    if request.match_info.http_exception is not None:
        return
    request[API_VERSION] = spec.microversions.negotiate(request.headers)


def _from_http(exc: web.HTTPException) -> ApiError:
    """aiohttp's own errors (unknown path, wrong method, client_max_size) as ApiErrors."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return ApiError(code_for_status(exc.status), headers=headers)


def _render(request: web.Request, spec: ServiceSpec | None, error: ApiError) -> web.Response:
    if error.status >= 500:
        log.warning("api_error", code=error.code, status=error.status, message=error.message)
    style = spec.style if spec else DEFAULT_STYLE
    identity = f"{request.scheme}://{request.host}/identity"
    return render_error(
        style, error, accept=request.headers.get("Accept", ""), identity_root=identity
    )


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries (an ``on_response_prepare`` signal handler)."""
    request_id = request.get(REQUEST_ID) or f"req-{uuid.uuid4()}"
    response.headers[REQUEST_ID_HEADER] = request_id
    spec = request.get(SERVICE)
    if spec is None:
        return
    for name in spec.request_id_headers:
        response.headers[name] = request_id
    if spec.microversions is None:
        return
    for name, value in spec.microversions.response_headers(request.get(API_VERSION)).items():
        if name == "Vary" and response.headers.get("Vary"):
            value = f"{response.headers['Vary']}, {value}"
        response.headers[name] = value
