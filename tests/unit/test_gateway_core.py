"""The gateway's core: request ids, per-service error bodies, body limits, JSON, discovery."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GatewaySettings, ServiceRouter, make_app
from gateway.errors import ERRORS, ApiError, ErrorCode, Style, render_error
from gateway.json import read_body, read_json
from gateway.middleware import API_VERSION, REQUEST_ID

REQ_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HOST = "cloud.example:8080"
BASE = f"http://{HOST}"
NOT_FOUND = "The resource could not be found."
#: service name -> (root, prefix) as the gateway mounts them
MOUNTS = {
    "identity": ("/identity", "/identity"),
    "compute": ("/compute", "/compute/v2.1"),
    "image": ("/image", "/image"),
    "network": ("/networking", "/networking"),
    "volume": ("/volume", "/volume/v3"),
}
JSON = {"Accept": "application/json"}


class Thing(msgspec.Struct, forbid_unknown_fields=True):
    """A request body whose API forbids unknown fields."""

    name: str
    size: int


class Probe:
    """A test service module: the same probe routes under one service's prefix."""

    def __init__(self, service: str) -> None:
        self.service = service

    def register(self, router: ServiceRouter) -> None:
        router.get("/probe", self.probe)
        router.post("/fail/{code}", self.fail)
        router.post("/boom", self.boom)
        router.post("/things", self.things)
        router.post("/small", self.things, max_body=16)
        router.put("/upload", self.upload, max_body="unlimited")

    async def probe(self, request: web.Request) -> web.Response:
        version = request[API_VERSION]
        return web.json_response({
            "request_id": request[REQUEST_ID],
            "correlation_id": structlog.contextvars.get_contextvars().get("correlation_id"),
            "api_version": None if version is None else str(version),
        })

    async def fail(self, request: web.Request) -> web.Response:
        code: ErrorCode = request.match_info["code"]  # type: ignore[assignment]
        raise ApiError(code, "It went wrong.", error_type=request.query.get("type"))

    async def boom(self, _request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def things(self, request: web.Request) -> web.Response:
        thing = await read_json(request, Thing)
        return web.json_response({"name": thing.name, "size": thing.size}, status=201)

    async def upload(self, request: web.Request) -> web.Response:
        return web.json_response({"received": len(await read_body(request))})


def _app(settings: GatewaySettings | None = None) -> web.Application:
    return make_app(settings, [Probe(name) for name in MOUNTS])


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_app(GatewaySettings(max_body_bytes=64)))) as c:
        yield c


async def _serve(settings: GatewaySettings) -> TestClient[web.Request, web.Application]:
    return TestClient(TestServer(_app(settings)))


def _path(service: str, path: str) -> str:
    return MOUNTS[service][1] + path


def nova(name: str, status: int, message: str) -> dict[str, Any]:
    return {name: {"code": status, "message": message}}


# --- request ids and logging context ------------------------------------------------------


async def test_every_response_carries_a_fresh_request_id(client: TestClient[Any, Any]) -> None:
    """Health, discovery, an unknown path and an error all carry X-OpenStack-Request-Id."""
    seen = set()
    for path in ("/healthz", "/compute/v2.1", "/nowhere", "/compute/v2.1/nowhere"):
        resp = await client.get(path)
        assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"]), path
        seen.add(resp.headers["X-OpenStack-Request-Id"])
    assert len(seen) == 4


async def test_request_id_is_on_the_request_and_bound_as_correlation_id(
    client: TestClient[Any, Any],
) -> None:
    """The handler sees the response's id as request[REQUEST_ID] and as correlation_id."""
    resp = await client.get(_path("image", "/probe"))
    body = await resp.json()
    assert body["request_id"] == resp.headers["X-OpenStack-Request-Id"]
    assert body["correlation_id"] == body["request_id"]


async def test_compute_also_sends_x_compute_request_id(client: TestClient[Any, Any]) -> None:
    """Nova's X-Compute-Request-Id carries the same id; other services do not send it."""
    resp = await client.get(_path("compute", "/probe"))
    assert resp.headers["X-Compute-Request-Id"] == resp.headers["X-OpenStack-Request-Id"]
    resp = await client.get(_path("network", "/probe"))
    assert "X-Compute-Request-Id" not in resp.headers


# --- unknown paths get their service's 404 -----------------------------------------------

EXPECTED_404: dict[str, Any] = {
    "identity": {"error": {"code": 404, "title": "Not Found", "message": NOT_FOUND}},
    "compute": nova("itemNotFound", 404, NOT_FOUND),
    "network": {"NeutronError": {"type": "HTTPNotFound", "message": NOT_FOUND, "detail": ""}},
    "volume": nova("itemNotFound", 404, NOT_FOUND),
}


@pytest.mark.parametrize("service", sorted(EXPECTED_404))
async def test_unknown_path_gets_the_services_404(
    client: TestClient[Any, Any], service: str
) -> None:
    """An unknown path under a service's root answers 404 in that service's body."""
    for path in (MOUNTS[service][0] + "/nowhere", _path(service, "/servers/nope/x")):
        resp = await client.get(path)
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert await resp.json() == EXPECTED_404[service]
        assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])


async def test_unknown_image_path_gets_glances_webob_404(client: TestClient[Any, Any]) -> None:
    """Glance's 404 is webob's: HTML for */*, JSON when JSON is preferred, else plain text."""
    resp = await client.get("/image/v2/images/img1", headers={"Accept": "*/*"})
    assert (resp.status, resp.content_type) == (404, "text/html")
    assert await resp.text() == (
        "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n"
        f"  <h1>404 Not Found</h1>\n  {NOT_FOUND}<br /><br />\n\n\n\n </body>\n</html>"
    )
    assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])
    resp = await client.get("/image/v2/images/img1", headers=JSON)
    assert await resp.json() == {
        "message": f"{NOT_FOUND}<br /><br />\n\n\n", "code": "404 Not Found", "title": "Not Found",
    }
    resp = await client.get("/image/v2/images/img1", headers={"Accept": "text/plain"})
    assert resp.content_type == "text/plain"
    assert await resp.text() == f"404 Not Found\n\n{NOT_FOUND}\n\n   "


async def test_path_outside_every_service_gets_a_keystone_shaped_404(
    client: TestClient[Any, Any],
) -> None:
    """Paths under no service (a typo of a prefix) still get a JSON error and a request id."""
    resp = await client.get("/computer/v2.1")
    assert resp.status == 404
    assert await resp.json() == EXPECTED_404["identity"]


async def test_wrong_method_is_405_in_the_services_format_with_allow(
    client: TestClient[Any, Any],
) -> None:
    """A known path with an unsupported method answers 405 badMethod and lists Allow."""
    resp = await client.delete(_path("compute", "/things"))
    assert resp.status == 405
    assert await resp.json() == nova(
        "badMethod", 405, "The method is not allowed for this resource."
    )
    assert resp.headers["Allow"] == "POST"


# --- ApiError rendered per service ---------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "code", "expected"),
    [
        ("compute", "conflict", nova("conflictingRequest", 409, "It went wrong.")),
        ("compute", "bad_request", nova("badRequest", 400, "It went wrong.")),
        ("compute", "forbidden", nova("forbidden", 403, "It went wrong.")),
        ("compute", "too_large", nova("overLimit", 413, "It went wrong.")),
        ("compute", "deadline_exceeded", nova("computeFault", 504, "It went wrong.")),
        ("compute", "unavailable", nova("serviceUnavailable", 503, "It went wrong.")),
        ("volume", "not_found", nova("itemNotFound", 404, "It went wrong.")),
        ("identity", "conflict",
         {"error": {"code": 409, "title": "Conflict", "message": "It went wrong."}}),
        ("identity", "forbidden",
         {"error": {"code": 403, "title": "Forbidden", "message": "It went wrong."}}),
        ("network", "conflict",
         {"NeutronError": {"type": "HTTPConflict", "message": "It went wrong.", "detail": ""}}),
    ],
)
async def test_api_error_is_rendered_in_the_services_body(
    client: TestClient[Any, Any], service: str, code: str, expected: dict[str, Any]
) -> None:
    """ApiError(code, message) from a handler takes its service's body and status."""
    resp = await client.post(_path(service, f"/fail/{code}"))
    assert resp.status == ERRORS[code].status  # type: ignore[index]
    assert await resp.json() == expected


async def test_neutron_error_type_comes_from_the_handler(client: TestClient[Any, Any]) -> None:
    """ApiError(error_type=...) becomes NeutronError.type (``NetworkNotFound``)."""
    resp = await client.post(_path("network", "/fail/not_found?type=NetworkNotFound"))
    assert (await resp.json())["NeutronError"]["type"] == "NetworkNotFound"


async def test_keystone_401_names_the_identity_endpoint(client: TestClient[Any, Any]) -> None:
    """Keystone's 401 carries WWW-Authenticate: Keystone uri=<identity root>."""
    resp = await client.post(_path("identity", "/fail/unauthorized"), headers={"Host": HOST})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == f'Keystone uri="{BASE}/identity"'
    assert (await resp.json())["error"]["title"] == "Unauthorized"


async def test_unexpected_exception_is_a_logged_500_in_the_services_format(
    client: TestClient[Any, Any],
) -> None:
    """A handler bug answers 500 computeFault (no traceback to the client) and is logged."""
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(_path("compute", "/boom"))
    assert resp.status == 500
    body = await resp.json()
    assert body == nova("computeFault", 500, ERRORS["internal"].message)
    assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])
    failed = [entry for entry in logs if entry["event"] == "api_request_failed"]
    assert failed and failed[0]["log_level"] == "error"


@pytest.mark.parametrize("style", list(Style))
@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_error_code_renders_in_every_style(style: Style, code: ErrorCode) -> None:
    """The table is complete: each code has a status and a body in each service's style."""
    response = render_error(style, ApiError(code), accept="application/json")
    assert response.status == ERRORS[code].status
    assert response.body and ERRORS[code].message.encode() in bytes(response.body)  # type: ignore[arg-type]


# --- body limit, malformed JSON, unknown fields -------------------------------------------


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("compute", nova("overLimit", 413, "The request body is larger than 64 bytes.")),
        ("network", {"NeutronError": {
            "type": "HTTPRequestEntityTooLarge",
            "message": "The request body is larger than 64 bytes.", "detail": "",
        }}),
    ],
)
async def test_body_over_the_limit_is_413_in_the_services_format(
    client: TestClient[Any, Any], service: str, expected: dict[str, Any]
) -> None:
    """A declared Content-Length over the limit is refused before the handler runs."""
    resp = await client.post(_path(service, "/things"), data=b"x" * 65)
    assert resp.status == 413
    assert await resp.json() == expected


async def test_chunked_body_over_the_limit_is_413(client: TestClient[Any, Any]) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"name": "aaaaaaaaaaaaa",'

    resp = await client.post(_path("compute", "/things"), data=chunks())
    assert resp.status == 413
    assert "overLimit" in await resp.json()


async def test_a_route_can_lower_or_lift_the_limit(client: TestClient[Any, Any]) -> None:
    """max_body=16 lowers the limit for one route; "unlimited" exempts an upload route."""
    resp = await client.post(_path("compute", "/small"), json={"name": "abcdefghij", "size": 1})
    assert resp.status == 413
    resp = await client.put(_path("image", "/upload"), data=b"x" * 100_000)
    assert resp.status == 200
    assert await resp.json() == {"received": 100_000}


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"name": "a", "size": 1'])
async def test_malformed_json_is_400_in_the_services_format(
    client: TestClient[Any, Any], body: bytes
) -> None:
    """Broken, empty or truncated JSON answers 400 with "Malformed request body"."""
    resp = await client.post(_path("compute", "/things"), data=body)
    assert resp.status == 400
    message = (await resp.json())["badRequest"]["message"]
    assert message.startswith("Malformed request body: ")
    resp = await client.post(_path("identity", "/things"), data=body)
    assert (await resp.json())["error"]["code"] == 400


async def test_unknown_field_is_400_naming_the_field(client: TestClient[Any, Any]) -> None:
    """A field the Struct forbids answers 400 with a message that names it."""
    resp = await client.post(
        _path("network", "/things"), json={"name": "a", "size": 1, "colour": "red"}
    )
    assert resp.status == 400
    error = (await resp.json())["NeutronError"]
    assert error["type"] == "HTTPBadRequest"
    assert error["message"] == "Invalid input: Object contains unknown field `colour`"


async def test_wrong_type_is_400_naming_the_path(client: TestClient[Any, Any]) -> None:
    """A value of the wrong type answers 400 saying what was expected and where."""
    resp = await client.post(_path("compute", "/things"), json={"name": "a", "size": "big"})
    assert resp.status == 400
    assert await resp.json() == nova(
        "badRequest", 400, "Invalid input: Expected `int`, got `str` - at `$.size`"
    )


async def test_valid_body_reaches_the_handler(client: TestClient[Any, Any]) -> None:
    """A body within the limit and the schema decodes into the Struct."""
    resp = await client.post(_path("volume", "/things"), json={"name": "a", "size": 2})
    assert resp.status == 201
    assert await resp.json() == {"name": "a", "size": 2}


# --- version discovery --------------------------------------------------------------------

KEYSTONE_V3 = {
    "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
    "links": [{"rel": "self", "href": f"{BASE}/identity/v3/"}],
    "media-types": [
        {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
    ],
}


def nova_v21(maximum: str) -> dict[str, Any]:
    return {
        "id": "v2.1", "status": "CURRENT", "version": maximum, "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            {"rel": "self", "href": f"{BASE}/compute/v2.1/"},
            {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
        ],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


def cinder_v3(maximum: str) -> dict[str, Any]:
    return {"versions": [{
        "id": "v3.0", "status": "CURRENT", "version": maximum, "min_version": "3.0",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": f"{BASE}/volume/v3/"},
        ],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }]}


DISCOVERY = [
    ("/identity", 300, {"versions": {"values": [KEYSTONE_V3]}}),
    ("/identity/", 300, {"versions": {"values": [KEYSTONE_V3]}}),
    ("/identity/v3", 200, {"version": KEYSTONE_V3}),
    ("/identity/v3/", 200, {"version": KEYSTONE_V3}),
    ("/compute/", 200, {"versions": [nova_v21("2.37")]}),
    ("/compute/v2.1", 200, {"version": nova_v21("2.37")}),
    ("/compute/v2.1/", 200, {"version": nova_v21("2.37")}),
    ("/networking/", 200, {"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": f"{BASE}/networking/v2.0/"}]}]}),
    ("/networking/v2.0/", 200, {"resources": [
        {"name": name, "collection": f"{name}s",
         "links": [{"rel": "self", "href": f"{BASE}/networking/v2.0/{name}s"}]}
        for name in ("network", "subnet", "port")
    ]}),
    ("/volume/", 300, cinder_v3("3.0")),
    ("/volume/v3/", 200, cinder_v3("3.0")),
    ("/volume/v3", 200, cinder_v3("3.0")),
]


@pytest.mark.parametrize(("path", "status", "expected"), DISCOVERY)
async def test_discovery_document(
    client: TestClient[Any, Any], path: str, status: int, expected: dict[str, Any]
) -> None:
    """Each discovery path answers without a token, with the real service's status and body."""
    resp = await client.get(path, headers={"Host": HOST})
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert await resp.json() == expected
    assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])


async def test_discovery_answers_head_without_a_body(client: TestClient[Any, Any]) -> None:
    """HEAD on a discovery path has the GET's status and headers and no body."""
    resp = await client.head("/identity")
    assert resp.status == 300
    assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])
    assert await resp.read() == b""


async def test_image_discovery_lists_v2_with_the_newest_current(
    client: TestClient[Any, Any],
) -> None:
    """GET /image is 300 with v2.17 CURRENT first and older v2 minors SUPPORTED."""
    resp = await client.get("/image", headers={"Host": HOST})
    assert resp.status == 300
    versions = (await resp.json())["versions"]
    assert versions[0] == {
        "id": "v2.17", "status": "CURRENT", "links": [{"rel": "self", "href": f"{BASE}/image/v2/"}]
    }
    assert {v["status"] for v in versions[1:]} == {"SUPPORTED"}
    assert versions[-1]["id"] == "v2.0"


async def test_discovery_advertises_the_configured_microversions() -> None:
    """compute_max_version and volume_max_version become "version" in the documents."""
    settings = GatewaySettings(compute_max_version="2.96", volume_max_version="3.70")
    async with await _serve(settings) as client:
        resp = await client.get("/compute/v2.1", headers={"Host": HOST})
        assert await resp.json() == {"version": nova_v21("2.96")}
        resp = await client.get("/volume/v3/", headers={"Host": HOST})
        assert await resp.json() == cinder_v3("3.70")


async def test_discovery_links_follow_the_host_header(client: TestClient[Any, Any]) -> None:
    """Links are built from the request's Host, so a client reaches us the way it came."""
    resp = await client.get("/identity/v3", headers={"Host": "10.0.0.5"})
    href = (await resp.json())["version"]["links"][0]["href"]
    assert href == "http://10.0.0.5/identity/v3/"


# --- microversions ------------------------------------------------------------------------


@pytest.fixture
async def versioned() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = GatewaySettings(compute_max_version="2.10", volume_max_version="3.5")
    async with await _serve(settings) as c:
        yield c


async def _compute_version(client: TestClient[Any, Any], headers: dict[str, str]) -> Any:
    resp = await client.get(_path("compute", "/probe"), headers=headers)
    return resp, await resp.json()


@pytest.mark.parametrize(
    ("headers", "negotiated"),
    [
        ({}, "2.1"),
        ({"OpenStack-API-Version": "compute 2.5"}, "2.5"),
        ({"OpenStack-API-Version": "compute latest"}, "2.10"),
        ({"X-OpenStack-Nova-API-Version": "2.7"}, "2.7"),
        ({"OpenStack-API-Version": "compute 2.3", "X-OpenStack-Nova-API-Version": "2.9"}, "2.3"),
        ({"OpenStack-API-Version": "volume 3.2, compute 2.4"}, "2.4"),
        ({"OpenStack-API-Version": "volume 3.2"}, "2.1"),
    ],
)
async def test_compute_negotiates_and_echoes_the_microversion(
    versioned: TestClient[Any, Any], headers: dict[str, str], negotiated: str
) -> None:
    """Missing -> 2.1, latest -> max; the standard header wins over the legacy one; echoed."""
    resp, body = await _compute_version(versioned, headers)
    assert body["api_version"] == negotiated
    assert resp.headers["OpenStack-API-Version"] == f"compute {negotiated}"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == negotiated
    assert resp.headers["Vary"] == "OpenStack-API-Version, X-OpenStack-Nova-API-Version"


async def test_discovery_documents_echo_the_microversion_too(
    versioned: TestClient[Any, Any],
) -> None:
    """GET /compute/v2.1 (what the SDK probes) carries the version headers."""
    resp = await versioned.get("/compute/v2.1", headers={"OpenStack-API-Version": "compute 2.2"})
    assert resp.headers["OpenStack-API-Version"] == "compute 2.2"


@pytest.mark.parametrize("requested", ["2.11", "3.0", "1.9"])
async def test_version_outside_the_range_is_406(
    versioned: TestClient[Any, Any], requested: str
) -> None:
    """Above the maximum or below the minimum answers 406 computeFault, as Nova does."""
    header = {"OpenStack-API-Version": f"compute {requested}"}
    resp, body = await _compute_version(versioned, header)
    assert resp.status == 406
    assert body == nova("computeFault", 406, (
        f"Version {requested} is not supported by the API. Minimum is 2.1 and maximum is 2.10."
    ))
    assert resp.headers["Vary"] == "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    assert REQ_ID.match(resp.headers["X-OpenStack-Request-Id"])


@pytest.mark.parametrize("requested", ["2", "2.01", "v2.1", "two"])
async def test_malformed_version_is_400(versioned: TestClient[Any, Any], requested: str) -> None:
    """A version string that is not MajorNum.MinorNum answers 400 badRequest."""
    resp, body = await _compute_version(versioned, {"X-OpenStack-Nova-API-Version": requested})
    assert resp.status == 400
    assert body == nova("badRequest", 400, (
        f"API Version String {requested} is of invalid format. "
        "Must be of format MajorNum.MinorNum."
    ))


async def test_volume_negotiates_its_own_microversion(versioned: TestClient[Any, Any]) -> None:
    """Block Storage reads "volume 3.x", echoes it and varies on OpenStack-API-Version only."""
    resp = await versioned.get(_path("volume", "/probe"),
                               headers={"OpenStack-API-Version": "volume 3.4"})
    assert (await resp.json())["api_version"] == "3.4"
    assert resp.headers["OpenStack-API-Version"] == "volume 3.4"
    assert resp.headers["Vary"] == "OpenStack-API-Version"
    assert "X-OpenStack-Nova-API-Version" not in resp.headers
    resp = await versioned.get(_path("volume", "/probe"),
                               headers={"OpenStack-API-Version": "volume 3.6"})
    assert resp.status == 406
    assert (await resp.json())["computeFault"]["code"] == 406


async def test_unversioned_services_send_no_version_headers(
    versioned: TestClient[Any, Any],
) -> None:
    """Identity, Image and Networking have no microversions: no echo, api_version None."""
    for service in ("identity", "image", "network"):
        resp = await versioned.get(_path(service, "/probe"),
                                   headers={"OpenStack-API-Version": "compute 2.5"})
        assert (await resp.json())["api_version"] is None
        assert "OpenStack-API-Version" not in resp.headers


# --- the process routes ---------------------------------------------------------------------


async def test_health_and_metrics_still_served(client: TestClient[Any, Any]) -> None:
    """/healthz answers ok, /metrics counts API requests by service and status."""
    resp = await client.get("/healthz")
    assert await resp.json() == {"status": "ok"}
    await client.get("/compute/v2.1/nowhere")
    text = await (await client.get("/metrics")).text()
    assert 'orrery_api_requests_total{service="compute",status="404"}' in text


def test_a_service_module_for_an_unknown_service_is_refused() -> None:
    """make_app refuses an api whose service is not mounted, naming the known ones."""
    with pytest.raises(KeyError, match="no service named 'orbit'"):
        make_app(None, [Probe("orbit")])


def _names(routes: Iterable[web.AbstractRoute]) -> set[str]:
    return {route.resource.canonical for route in routes if route.resource is not None}


def test_service_routes_are_mounted_under_the_prefix() -> None:
    """A service's routes live under its catalog URL's path (/volume/v3/..., /image/...)."""
    names = _names(_app().router.routes())
    assert {"/volume/v3/probe", "/compute/v2.1/probe", "/image/upload", "/identity/probe",
            "/networking/probe"} <= names
