"""The gateway's aiohttp application: the OpenStack services under devstack-style prefixes.

One app serves every service on one port, each under the path of its catalog URL
(`standard_services`). Service modules plug in as `ServiceApi` objects: the app hands each
one a `ServiceRouter` bound to its service's prefix, and the service's error style,
microversions and request-id headers come from its `ServiceSpec`. ``/healthz`` and
``/metrics`` stay at the root for every Orrery process with an HTTP port.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.discovery import NOVA_LEGACY_HEADER, APIVersion, Microversions, discovery_routes
from gateway.errors import Style
from gateway.middleware import (
    ROUTE_LIMITS,
    Limits,
    RouteLimit,
    Services,
    ServiceSpec,
    make_middleware,
    on_prepare,
)

__all__ = [
    "SERVICES_KEY",
    "SETTINGS_KEY",
    "GatewaySettings",
    "ServiceApi",
    "ServiceRouter",
    "make_app",
    "standard_services",
]


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway needs to know; every field has the embedded default."""

    max_body_bytes: int = 1 << 20  # JSON APIs; routes may raise or lift it (ServiceRouter)
    body_timeout: float = 30.0  # seconds to receive a request body
    compute_max_version: str = "2.37"  # highest compute microversion we implement
    volume_max_version: str = "3.0"  # highest block-storage microversion we implement


SETTINGS_KEY = web.AppKey("orrery_gateway_settings", GatewaySettings)
SERVICES_KEY = web.AppKey("orrery_services", Services)


def standard_services(settings: GatewaySettings) -> tuple[ServiceSpec, ...]:
    """Identity, Compute, Image, Networking and Block Storage, as devstack mounts them, and
    Orrery's event feed (errors in Keystone's shape, the one generic OpenStack body)."""
    compute = Microversions(
        "compute", APIVersion(2, 1), APIVersion.parse(settings.compute_max_version),
        legacy_header=NOVA_LEGACY_HEADER,
    )
    volume = Microversions(
        "volume", APIVersion(3, 0), APIVersion.parse(settings.volume_max_version)
    )
    return (
        ServiceSpec("identity", "/identity", "/identity", Style.KEYSTONE),
        ServiceSpec(
            "compute", "/compute", "/compute/v2.1", Style.NOVA, compute,
            request_id_headers=("X-Compute-Request-Id",),
        ),
        ServiceSpec("image", "/image", "/image", Style.GLANCE),
        ServiceSpec("network", "/networking", "/networking", Style.NEUTRON),
        ServiceSpec("volume", "/volume", "/volume/v3", Style.NOVA, volume),
        ServiceSpec("events", "/events", "/events/v1", Style.KEYSTONE),
    )


class ServiceRouter:
    """Adds one service's routes under its prefix, each with its body limit."""

    def __init__(self, app: web.Application, spec: ServiceSpec) -> None:
        self._app = app
        self.spec = spec

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    def add(
        self, method: str, path: str, handler: Handler, *, max_body: RouteLimit = None
    ) -> web.AbstractRoute:
        """`method` `path` (relative to the prefix, starting with ``/``) to `handler`.

        `max_body` overrides the default body limit: a number of bytes, or ``"unlimited"``
        for a route that streams its body (image upload) and bounds it itself.
        """
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        route = self._app.router.add_route(method, self.spec.prefix + path, handler)
        if max_body is not None:
            self._app[ROUTE_LIMITS][route] = None if max_body == "unlimited" else max_body
        return route

    def get(self, path: str, handler: Handler) -> web.AbstractRoute:
        """GET (and HEAD, answered by the same handler without a body)."""
        route = self.add(hdrs.METH_GET, path, handler)
        self._app.router.add_route(hdrs.METH_HEAD, self.spec.prefix + path, handler)
        return route

    def post(
        self, path: str, handler: Handler, *, max_body: RouteLimit = None
    ) -> web.AbstractRoute:
        return self.add(hdrs.METH_POST, path, handler, max_body=max_body)

    def put(
        self, path: str, handler: Handler, *, max_body: RouteLimit = None
    ) -> web.AbstractRoute:
        return self.add(hdrs.METH_PUT, path, handler, max_body=max_body)

    def patch(
        self, path: str, handler: Handler, *, max_body: RouteLimit = None
    ) -> web.AbstractRoute:
        return self.add(hdrs.METH_PATCH, path, handler, max_body=max_body)

    def delete(self, path: str, handler: Handler) -> web.AbstractRoute:
        return self.add(hdrs.METH_DELETE, path, handler)


class ServiceApi(Protocol):
    """A service module as the gateway sees it: which service, and its routes."""

    @property
    def service(self) -> str:
        """The `ServiceSpec.name` it serves (``"compute"``)."""
        ...

    def register(self, router: ServiceRouter) -> None:
        """Add every route with `router` (called once, before the app starts)."""
        ...


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(_request: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    settings: GatewaySettings | None = None,
    apis: Iterable[ServiceApi] = (),
    *,
    extra_services: Iterable[ServiceSpec] = (),
) -> web.Application:
    """The gateway: health, metrics, discovery and every service API in `apis`.

    `extra_services` adds services beyond the standard five (their own root, prefix and
    error style); an api whose service is unknown is refused with KeyError.
    """
    settings = settings or GatewaySettings()
    services = Services([*standard_services(settings), *extra_services])
    limits = Limits(settings.max_body_bytes, settings.body_timeout)
    app = web.Application(
        middlewares=[make_middleware(services, limits)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS_KEY] = settings
    app[SERVICES_KEY] = services
    app[ROUTE_LIMITS] = {}
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    compute = services.named("compute").microversions
    volume = services.named("volume").microversions
    assert compute is not None and volume is not None
    app.router.add_routes(discovery_routes(compute, volume))
    for api in apis:
        api.register(ServiceRouter(app, services.named(api.service)))
    return app
