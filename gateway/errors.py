"""OpenStack error bodies: one table from domain error codes to each service's own format.

Handlers raise `ApiError(code, message)`; the gateway middleware renders it in the `Style`
of the service whose path prefix the request is under:

- ``NOVA`` (Compute, and Block Storage, whose ``Fault`` is a copy of Nova's):
  ``{"itemNotFound": {"code": 404, "message": ...}}``; a status without a name of its own
  (406, 408, 500, 504) is ``computeFault``, as in both services.
- ``KEYSTONE``: ``{"error": {"code": 404, "title": "Not Found", "message": ...}}``; a 401
  also carries ``WWW-Authenticate: Keystone uri="<identity root>"``.
- ``NEUTRON``: ``{"NeutronError": {"type": ..., "message": ..., "detail": ""}}``; ``type``
  is the handler's `error_type` (``NetworkNotFound``) or the webob class Neutron names.
- ``GLANCE``: Glance raises webob exceptions and lets webob pick the body from the Accept
  header: HTML by default (``*/*``, what python-requests sends; the reference clients saw
  ``text/html``), webob's JSON ``{"message", "code": "404 Not Found", "title"}`` when JSON
  is preferred, plain text when neither is acceptable. openstacksdk parses all three (it
  strips the tags of an HTML body, and takes ``message`` of a JSON one), so we answer
  exactly as Glance does rather than pick one.

Paths outside every service (``/healthz``, ``/``) use the Keystone shape.
"""

from __future__ import annotations

import enum
import html
import http.client
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import msgspec
from aiohttp import web

__all__ = [
    "ERRORS",
    "ApiError",
    "ErrorCode",
    "ErrorKind",
    "Style",
    "code_for_status",
    "render_error",
]

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "not_acceptable",
    "request_timeout",
    "conflict",
    "too_large",
    "unsupported_media_type",
    "internal",
    "unavailable",
    "deadline_exceeded",
]


class Style(enum.Enum):
    """Which OpenStack service's error body a response takes."""

    NOVA = "nova"
    KEYSTONE = "keystone"
    GLANCE = "glance"
    NEUTRON = "neutron"


@dataclass(frozen=True)
class ErrorKind:
    """How one domain error code looks on the wire."""

    status: int
    fault: str  # Nova / Cinder body key
    neutron_type: str  # the webob exception class name Neutron reports as ``type``
    message: str  # used when the raiser gives none

    @property
    def title(self) -> str:
        """The reason phrase, which Keystone and webob use as the title."""
        return http.client.responses[self.status]


#: The one table. ``deadline_exceeded`` is 504, not 503: the command was sent and may still
#: complete, so "try again later" (503) would invite a duplicate; its outcome is unknown.
ERRORS: dict[ErrorCode, ErrorKind] = {
    "bad_request": ErrorKind(
        400, "badRequest", "HTTPBadRequest",
        "The server could not comply with the request since it is either malformed or "
        "otherwise incorrect.",
    ),
    "unauthorized": ErrorKind(
        401, "unauthorized", "HTTPUnauthorized",
        "The request you have made requires authentication.",
    ),
    "forbidden": ErrorKind(
        403, "forbidden", "HTTPForbidden", "Access was denied to this resource.",
    ),
    "not_found": ErrorKind(404, "itemNotFound", "HTTPNotFound", "The resource could not be found."),
    "method_not_allowed": ErrorKind(
        405, "badMethod", "HTTPMethodNotAllowed", "The method is not allowed for this resource.",
    ),
    "not_acceptable": ErrorKind(
        406, "computeFault", "HTTPNotAcceptable", "The requested version is not supported.",
    ),
    "request_timeout": ErrorKind(
        408, "computeFault", "HTTPRequestTimeout", "The request body was not received in time.",
    ),
    "conflict": ErrorKind(
        409, "conflictingRequest", "HTTPConflict",
        "There was a conflict when trying to complete your request.",
    ),
    "too_large": ErrorKind(
        413, "overLimit", "HTTPRequestEntityTooLarge", "The request body is too large.",
    ),
    "unsupported_media_type": ErrorKind(
        415, "badMediaType", "HTTPUnsupportedMediaType", "The request body's media type is "
        "not supported.",
    ),
    "internal": ErrorKind(
        500, "computeFault", "HTTPInternalServerError",
        "An unexpected error prevented the server from fulfilling your request.",
    ),
    "unavailable": ErrorKind(
        503, "serviceUnavailable", "HTTPServiceUnavailable",
        "The service is temporarily unavailable; try again later.",
    ),
    "deadline_exceeded": ErrorKind(
        504, "computeFault", "HTTPGatewayTimeout",
        "The request did not complete within its deadline; its outcome is not known yet.",
    ),
}
assert set(ERRORS) == set(get_args(ErrorCode)), "every error code needs a row"

_BY_STATUS: dict[int, ErrorCode] = {kind.status: code for code, kind in ERRORS.items()}


class ApiError(Exception):
    """An error a handler answers with; rendered in the service's style by the middleware.

    `error_type` is Neutron's ``type`` (``NetworkNotFound``); other styles ignore it.
    `headers` are added to the response (``Retry-After``, ``Allow``).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.code: ErrorCode = code
        self.kind = ERRORS[code]
        self.message = message if message is not None else self.kind.message
        self.error_type = error_type
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}")

    @property
    def status(self) -> int:
        return self.kind.status


def code_for_status(status: int) -> ErrorCode:
    """The domain code of an HTTP error status (aiohttp's own 404/405/413), else internal."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "bad_request" if 400 <= status < 500 else "internal"


def render_error(
    style: Style, error: ApiError, *, accept: str = "", identity_root: str = ""
) -> web.Response:
    """The response `error` gets in `style`; `accept` matters to Glance only."""
    if style is Style.GLANCE:
        body, content_type = _glance(error, accept)
    else:
        body, content_type = msgspec.json.encode(_json_body(style, error)), "application/json"
    headers = dict(error.headers)
    if style is Style.KEYSTONE and error.status == 401 and identity_root:
        headers.setdefault("WWW-Authenticate", f'Keystone uri="{identity_root}"')
    return web.Response(
        status=error.status, body=body, content_type=content_type, headers=headers
    )


def _json_body(style: Style, error: ApiError) -> dict[str, object]:
    kind = error.kind
    if style is Style.NOVA:
        return {kind.fault: {"code": kind.status, "message": error.message}}
    if style is Style.NEUTRON:
        error_type = error.error_type or kind.neutron_type
        return {"NeutronError": {"type": error_type, "message": error.message, "detail": ""}}
    return {"error": {"code": kind.status, "title": kind.title, "message": error.message}}


# --- Glance: webob's content negotiation and its three templates -------------------------

_BR = re.compile(r"<br.*?>", re.I | re.S)
_TAG = re.compile(r"<.*?>", re.S)


def _glance(error: ApiError, accept: str) -> tuple[bytes, str]:
    status = f"{error.status} {error.kind.title}"
    media = _webob_choice(accept)
    if media == "application/json":
        body = _webob_body(error.message)
        doc = {"message": body, "code": status, "title": error.kind.title}
        return msgspec.json.encode(doc), media
    if media == "text/html":
        body = _webob_body(html.escape(error.message))
        page = (
            f"<html>\n <head>\n  <title>{status}</title>\n </head>\n <body>\n"
            f"  <h1>{status}</h1>\n  {body}\n </body>\n</html>"
        )
        return page.encode(), media
    plain = _webob_body(error.message).replace("\n", " ").replace("\r", "")
    plain = _TAG.sub("", _BR.sub("\n", plain))
    return f"{status}\n\n{plain}".encode(), "text/plain"


def _webob_body(explanation: str) -> str:
    """webob's body template with no detail and no comment, as Glance's errors have."""
    return f"{explanation}<br /><br />\n\n\n"


def _webob_choice(accept: str) -> str:
    """What webob offers of text/html and application/json; text/plain when neither."""
    if not accept.strip():
        return "text/html"
    best, best_q = "text/plain", 0.0
    for offer in ("text/html", "application/json"):
        q = _quality(accept, offer)
        if q > best_q:
            best, best_q = offer, q
    return best


def _quality(accept: str, offer: str) -> float:
    """The q the most specific matching media range of `accept` gives `offer` (RFC 9110)."""
    found: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        specificity = _specificity(media.lower(), offer)
        if specificity > found[0]:
            found = (specificity, _q(params))
    return found[1]


def _specificity(media_range: str, offer: str) -> int:
    """2 for an exact match, 1 for ``type/*``, 0 for ``*/*``, -1 when the range misses."""
    if media_range == offer:
        return 2
    if media_range == offer.partition("/")[0] + "/*":
        return 1
    return 0 if media_range == "*/*" else -1


def _q(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
