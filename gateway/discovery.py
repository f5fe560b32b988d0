"""Version discovery documents and microversion negotiation, as the OpenStack clients need them.

Every document is unauthenticated and its links use the request's scheme and Host. Status
codes follow the real services: Keystone ``/`` 300 and ``/v3`` 200; Nova ``/`` and
``/v2.1`` 200; Glance ``/`` 300 (and ``/versions`` 200); Neutron ``/`` and ``/v2.0`` 200;
Cinder ``/`` 300 and ``/v3/`` 200 (with a ``versions`` list, as Cinder answers). Compute
and Block Storage negotiate a microversion per request (`Microversions.negotiate`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.errors import ApiError
from gateway.json import json_response

__all__ = [
    "API_VERSION_HEADER",
    "APIVersion",
    "Microversions",
    "discovery_routes",
]

API_VERSION_HEADER = "OpenStack-API-Version"
NOVA_LEGACY_HEADER = "X-OpenStack-Nova-API-Version"
_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")

Doc = dict[str, Any]


class APIVersion(NamedTuple):
    """A microversion; tuples order them (2.10 > 2.9)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> APIVersion:
        """``"2.61"`` -> (2, 61); ValueError on anything else (``"2.061"``, ``"v2.1"``)."""
        match = _VERSION.match(text.strip())
        if match is None:
            raise ValueError(f"not a microversion: {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True)
class Microversions:
    """The microversion range one service implements and how it is asked for and echoed."""

    service_type: str  # "compute", "volume": the word in OpenStack-API-Version
    minimum: APIVersion
    maximum: APIVersion
    legacy_header: str | None = None  # Nova's X-OpenStack-Nova-API-Version

    def negotiate(self, headers: CIMultiDictProxy[str]) -> APIVersion:
        """The version a request asks for: missing means the minimum, ``latest`` the maximum.

        Raises ApiError ``bad_request`` for a malformed version and ``not_acceptable`` (406)
        for one outside the range, with Nova's and Cinder's messages.
        """
        requested = self._requested(headers)
        if requested is None:
            return self.minimum
        if requested.lower() == "latest":
            return self.maximum
        try:
            version = APIVersion.parse(requested)
        except ValueError:
            raise ApiError(
                "bad_request",
                f"API Version String {requested} is of invalid format. "
                "Must be of format MajorNum.MinorNum.",
            ) from None
        if not self.minimum <= version <= self.maximum:
            raise ApiError(
                "not_acceptable",
                f"Version {version} is not supported by the API. "
                f"Minimum is {self.minimum} and maximum is {self.maximum}.",
            )
        return version

    def response_headers(self, version: APIVersion | None) -> dict[str, str]:
        """The echo of the negotiated version and the ``Vary`` that caches need."""
        headers: dict[str, str] = {}
        names = [API_VERSION_HEADER]
        if self.legacy_header:
            names.append(self.legacy_header)
        if version is not None:
            headers[API_VERSION_HEADER] = f"{self.service_type} {version}"
            if self.legacy_header:
                headers[self.legacy_header] = str(version)
        headers["Vary"] = ", ".join(names)
        return headers

    def _requested(self, headers: CIMultiDictProxy[str]) -> str | None:
        """OpenStack-API-Version (``compute 2.5, volume 3.1``) wins over the legacy header."""
        for value in headers.getall(API_VERSION_HEADER, []):
            for item in value.split(","):
                service, _, version = item.strip().partition(" ")
                if service.lower() == self.service_type and version.strip():
                    return version.strip()
        if self.legacy_header and self.legacy_header in headers:
            return headers[self.legacy_header].strip()
        return None


# --- the documents ----------------------------------------------------------------------


def _base(request: web.Request, root: str) -> str:
    return f"{request.scheme}://{request.host}{root}"


def _self_link(href: str) -> list[Doc]:
    return [{"rel": "self", "href": href}]


def identity_version(base: str) -> Doc:
    """Keystone's v3 entry (``base`` is the identity root URL)."""
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": _self_link(f"{base}/v3/"),
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def compute_version(base: str, mv: Microversions) -> Doc:
    """Nova's v2.1 entry with the microversion range we implement."""
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": str(mv.maximum),
        "min_version": str(mv.minimum),
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            *_self_link(f"{base}/v2.1/"),
            {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
        ],
        "media-types": [
            {"base": "application/json",
             "type": "application/vnd.openstack.compute+json;version=2.1"}
        ],
    }


def image_versions(base: str) -> Doc:
    """Glance's list: v2.17 CURRENT, then every earlier v2 minor SUPPORTED.

    Glance's minors are not negotiated; the clients pick the highest v2 and use ``/v2``.
    """
    entries = [
        {"id": f"v2.{minor}", "status": "CURRENT" if minor == 17 else "SUPPORTED",
         "links": _self_link(f"{base}/v2/")}
        for minor in range(17, -1, -1)
    ]
    return {"versions": entries}


def network_versions(base: str) -> Doc:
    return {"versions": [{"id": "v2.0", "status": "CURRENT", "links": _self_link(f"{base}/v2.0/")}]}


NETWORK_RESOURCES = (("network", "networks"), ("subnet", "subnets"), ("port", "ports"))


def network_resources(base: str) -> Doc:
    """Neutron's ``GET /v2.0/``: the collections this API serves."""
    return {
        "resources": [
            {"name": name, "collection": collection,
             "links": _self_link(f"{base}/v2.0/{collection}")}
            for name, collection in NETWORK_RESOURCES
        ]
    }


def volume_versions(base: str, mv: Microversions) -> Doc:
    """Cinder's list (its root and ``/v3/`` both answer with it)."""
    entry = {
        "id": "v3.0",
        "status": "CURRENT",
        "version": str(mv.maximum),
        "min_version": str(mv.minimum),
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            *_self_link(f"{base}/v3/"),
        ],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}
        ],
    }
    return {"versions": [entry]}


# --- routes -----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _serve(root: str, status: int, build: Callable[[str], Doc]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(build(_base(request, root)), status=status)

    return handler


def _both(path: str, handler: Handler) -> list[web.RouteDef]:
    """The path with and without a trailing slash (clients probe both)."""
    return [web.get(path, handler), web.get(path + "/", handler)]


def discovery_routes(compute: Microversions, volume: Microversions) -> list[web.RouteDef]:
    """Every discovery route, at the devstack-style roots."""
    return [
        *_both("/identity", _serve("/identity", 300, lambda b: {
            "versions": {"values": [identity_version(b)]}})),
        *_both("/identity/v3", _serve("/identity", 200, lambda b: {
            "version": identity_version(b)})),
        *_both("/compute", _serve("/compute", 200, lambda b: {
            "versions": [compute_version(b, compute)]})),
        *_both("/compute/v2.1", _serve("/compute", 200, lambda b: {
            "version": compute_version(b, compute)})),
        *_both("/image", _serve("/image", 300, image_versions)),
        *_both("/image/versions", _serve("/image", 200, image_versions)),
        *_both("/networking", _serve("/networking", 200, network_versions)),
        *_both("/networking/v2.0", _serve("/networking", 200, network_resources)),
        *_both("/volume", _serve("/volume", 300, lambda b: volume_versions(b, volume))),
        *_both("/volume/v3", _serve("/volume", 200, lambda b: volume_versions(b, volume))),
    ]
