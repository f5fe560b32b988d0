"""Tokens and authentication for every service: issue, validate, revoke; who is asking.

A token is 256 random bits (urlsafe base64). Only its sha256 is kept anywhere: it is the id
of the ``token`` actor whose ``TokenIssued`` event carries the issued document verbatim,
and the key of the ``identity_tokens`` row the identity projection folds. So tokens work
across any number of API processes, survive restarts, and a revocation (an event) holds
everywhere once the projection has folded it; the revoking request waits for that.

Validation is one indexed query, and a token also stops working when its user is deleted
or disabled, its project is deleted or disabled, or it has expired. Roles come from the
issued document, narrowed to the roles the user still holds on the project, so a revoked
role assignment takes effect at once without touching the tokens.

Other services call ``ctx = await authenticate(request)`` and ``require(ctx, "member")``;
both raise `ApiError` (``unauthorized``, ``forbidden``) that the middleware renders.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import msgspec
from aiohttp import web

from actors.client import ActorClient
from actors.identity import (
    DEFAULT_DOMAIN_ID,
    DEFAULT_DOMAIN_NAME,
    ROLE_NAMES,
    ROLES,
    IssueToken,
    RevokeToken,
    effective_roles,
)
from actors.identity_views import PROJECTION_NAME, AccessChanges
from actors.passwords import verify_password
from bus.errors import CallTimeout
from gateway.errors import ApiError
from gateway.json import read_json
from gateway.middleware import REQUEST_ID
from store.protocol import ProjectionStore

__all__ = ["AUTH_CONTEXT", "TOKENS", "AuthContext", "Subject", "TokenService",
           "authenticate", "issue_token", "require"]

TOKEN_HEADER = "X-Auth-Token"
DEFAULT_TTL = 3600.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: the catalog: (type, name, path under the API's base URL; {project} is filled in)
CATALOG = (
    ("identity", "keystone", "/identity"),
    ("compute", "nova", "/compute/v2.1"),
    ("image", "glance", "/image"),
    ("network", "neutron", "/networking"),
    ("block-storage", "cinder", "/volume/v3/{project}"),
    ("events", "orrery-events", "/events/v1"),
)
REGION = "RegionOne"


@dataclass(frozen=True)
class Subject:
    """Who a token is issued to: the user, the project it is scoped to (or none), roles."""

    user_id: str
    user_name: str
    project_id: str | None = None
    project_name: str = ""
    roles: tuple[str, ...] = ()  # effective role names


@dataclass(frozen=True)
class AuthContext:
    """Who is asking, from a valid token."""

    user_id: str
    project_id: str | None
    roles: tuple[str, ...]
    token_hash: str
    document: str

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def sees_project(self, project_id: str | None) -> bool:
        """Admin sees every project; anyone else only the one the token is scoped to."""
        return self.is_admin or (project_id is not None and project_id == self.project_id)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def _parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def catalog(base_url: str, project_id: str | None) -> list[dict[str, object]]:
    """The service catalog for an API reached at ``base_url`` (``http://host:port``)."""
    services: list[dict[str, object]] = []
    for service_type, name, path in CATALOG:
        url = base_url + path.format(project=project_id or "").rstrip("/")
        endpoint_id = uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:endpoint:{service_type}").hex
        services.append({
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:service:{service_type}").hex,
            "type": service_type, "name": name,
            "endpoints": [{"id": endpoint_id, "interface": "public", "region_id": REGION,
                           "region": REGION, "url": url}],
        })
    return services


def token_document(subject: Subject, *, issued: dt.datetime, expires: dt.datetime,
                   base_url: str) -> dict[str, object]:
    """Keystone's token body (``{"token": {...}}``) for ``subject``."""
    domain = {"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME}
    token: dict[str, object] = {
        "methods": ["password"],
        "user": {"domain": domain, "id": subject.user_id, "name": subject.user_name,
                 "password_expires_at": None},
        "audit_ids": [base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()[:22]],
        "expires_at": _stamp(expires),
        "issued_at": _stamp(issued),
    }
    if subject.project_id is not None:
        token["project"] = {"domain": domain, "id": subject.project_id,
                            "name": subject.project_name}
        token["is_domain"] = False
        token["roles"] = [{"id": ROLES[name], "name": name} for name in subject.roles]
        token["catalog"] = catalog(base_url, subject.project_id)
    return {"token": token}


_VALIDATE = """
SELECT t.document, t.user_id, t.project_id, t.expires_at
FROM identity_tokens t
JOIN identity_users u ON u.id = t.user_id AND u.enabled = 1
LEFT JOIN identity_projects p ON p.id = t.project_id
WHERE t.token_hash = $1 AND t.revoked = 0 AND (t.project_id IS NULL OR p.enabled = 1)"""
_HELD = "SELECT role_id FROM identity_assignments WHERE user_id = $1 AND project_id = $2"


class _Role(msgspec.Struct):
    name: str


class _Token(msgspec.Struct):
    roles: list[_Role] = []


class _Document(msgspec.Struct):
    token: _Token


_DOC = msgspec.json.Decoder(_Document)


#: how long a validated token is trusted without a look at the identity tables. Changes
#: this process's identity projection folds end it at once (AccessChanges); the bound is
#: for changes another API process folded (keystonemiddleware trusts tokens for 300 s).
VALIDATION_CACHE_SECONDS = 2.0
_CACHE_SIZE = 10_000


class TokenService:
    """Issues, validates and revokes tokens (see the module docstring)."""

    def __init__(self, store: ProjectionStore, client: ActorClient, *, ttl: float = DEFAULT_TTL,
                 wait_timeout: float = 10.0,
                 cache_seconds: float = VALIDATION_CACHE_SECONDS) -> None:
        self.store = store
        self.client = client
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        self.cache_seconds = cache_seconds
        #: digest -> (AccessChanges generation, trusted until (monotonic), expiry, context)
        self._valid: dict[str, tuple[int, float, dt.datetime, AuthContext]] = {}

    async def issue(self, subject: Subject, *, base_url: str, correlation_id: str,
                    ) -> tuple[str, str]:
        """A new token for ``subject``: (token, the JSON document as issued)."""
        issued = dt.datetime.now(dt.UTC)
        expires = issued + dt.timedelta(seconds=self.ttl)
        document = msgspec.json.encode(
            token_document(subject, issued=issued, expires=expires, base_url=base_url)
        ).decode()
        token = secrets.token_urlsafe(32)
        command = IssueToken(document=document, user_id=subject.user_id,
                             project_id=subject.project_id, expires_at=_stamp(expires))
        await self._call(token_hash(token), command, correlation_id)
        return token, document

    async def validate(self, token: str, *, now: dt.datetime | None = None,
                       ) -> AuthContext | None:
        """The context of a live token; None for an unknown, revoked or expired one."""
        digest = token_hash(token)
        now = now or dt.datetime.now(dt.UTC)
        generation, clock = AccessChanges.generation, time.monotonic()
        cached = self._valid.get(digest)
        if cached is not None and cached[0] == generation and clock < cached[1]:
            return cached[3] if now < cached[2] else None
        context, expires = await self._look_up(digest, now)
        if context is not None and self.cache_seconds > 0:
            if len(self._valid) >= _CACHE_SIZE:
                self._valid.clear()
            self._valid[digest] = (generation, clock + self.cache_seconds, expires, context)
        return context

    async def _look_up(self, digest: str, now: dt.datetime,
                       ) -> tuple[AuthContext | None, dt.datetime]:
        """The token's context as the identity tables say now, and its expiry."""
        rows = await self.store.query(_VALIDATE, digest)
        if not rows:
            return None, now
        document, user_id, project_id, expires_at = rows[0]
        expires = _parse_stamp(expires_at)
        if expires <= now:
            return None, now
        issued = {role.name for role in _DOC.decode(document).token.roles}
        held: set[str] = set()
        if project_id is not None:
            assigned = await self.store.query(_HELD, user_id, project_id)
            held = set(effective_roles({ROLE_NAMES.get(r[0], "") for r in assigned}))
        roles = tuple(name for name in ROLES if name in issued & held)
        if project_id is not None and not roles:
            return None, now  # every role it was issued with has been revoked
        return AuthContext(user_id=user_id, project_id=project_id, roles=roles,
                           token_hash=digest, document=document), expires

    async def revoke(self, token: str, *, correlation_id: str) -> None:
        """Revoke ``token`` everywhere; ApiError ``not_found`` if it was never issued."""
        await self._call(token_hash(token), RevokeToken(), correlation_id)

    async def _call(self, actor_id: str, command: msgspec.Struct, correlation_id: str) -> None:
        try:
            reply = await self.client.call("token", actor_id, command,
                                           correlation_id=correlation_id)
        except CallTimeout as exc:
            raise ApiError("deadline_exceeded") from exc
        if not reply.ok:
            if reply.error_type == "not_found":
                raise ApiError("not_found", reply.error or None)
            raise ApiError("internal", reply.error or None)
        if not await self.store.wait_for_projection(PROJECTION_NAME, reply.position,
                                                    self.wait_timeout):
            raise ApiError("unavailable", "The identity projection is behind; try again.")


TOKENS = web.AppKey("orrery_tokens", TokenService)
AUTH_CONTEXT = web.RequestKey("orrery_auth_context", AuthContext)


async def authenticate(request: web.Request) -> AuthContext:
    """Who sent ``request`` (cached on it); ApiError ``unauthorized`` without a live token."""
    cached: AuthContext | None = request.get(AUTH_CONTEXT)
    if cached is not None:
        return cached
    token = request.headers.get(TOKEN_HEADER, "").strip()
    if not token:
        raise ApiError("unauthorized")
    context = await request.config_dict[TOKENS].validate(token)
    if context is None:
        raise ApiError("unauthorized", "The request you have made requires authentication.")
    request[AUTH_CONTEXT] = context
    return context


def require(context: AuthContext, role: str) -> None:
    """ApiError ``forbidden`` unless ``context`` holds ``role`` (implied roles count)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if role not in context.roles:
        raise ApiError("forbidden", f"You are not authorized to perform the requested action: "
                                    f"it needs the {role} role.")


# --- POST /v3/auth/tokens: password authentication --------------------------------------


class _DomainRef(msgspec.Struct):
    id: str | None = None
    name: str | None = None


class _UserRef(msgspec.Struct):
    password: str
    id: str | None = None
    name: str | None = None
    domain: _DomainRef | None = None


class _Password(msgspec.Struct):
    user: _UserRef


class _Identity(msgspec.Struct):
    methods: list[str]
    password: _Password | None = None


class _ProjectRef(msgspec.Struct):
    id: str | None = None
    name: str | None = None
    domain: _DomainRef | None = None


class _Scope(msgspec.Struct):
    project: _ProjectRef | None = None


class _Auth(msgspec.Struct):
    identity: _Identity
    scope: _Scope | str | None = None


class AuthRequest(msgspec.Struct):
    auth: _Auth


_DENIED = "The request you have made requires authentication."
_USER_BY_ID = ("SELECT id, name, domain_id, password_hash, enabled, default_project_id "
               "FROM identity_users WHERE id = $1")
_USER_BY_NAME = ("SELECT id, name, domain_id, password_hash, enabled, default_project_id "
                 "FROM identity_users WHERE name = $1 AND domain_id = $2")
_PROJECT_BY_ID = "SELECT id, name, domain_id, enabled FROM identity_projects WHERE id = $1"
_PROJECT_BY_NAME = ("SELECT id, name, domain_id, enabled FROM identity_projects "
                    "WHERE name = $1 AND domain_id = $2")


def _domain_id(ref: _DomainRef | None) -> str | None:
    """The domain a reference names (only ``default`` exists); None for an unknown one."""
    if ref is None or ref.id == DEFAULT_DOMAIN_ID:
        return DEFAULT_DOMAIN_ID
    if ref.id is None and ref.name is not None and ref.name.lower() == "default":
        return DEFAULT_DOMAIN_ID
    return None


async def _one(store: ProjectionStore, by_id: str, by_name: str, ref: _UserRef | _ProjectRef,
               ) -> tuple[object, ...] | None:
    if ref.id is not None:
        rows = await store.query(by_id, ref.id)
    elif ref.name is not None and (domain := _domain_id(ref.domain)) is not None:
        rows = await store.query(by_name, ref.name, domain)
    else:
        return None
    return rows[0] if rows else None


async def _roles_on(store: ProjectionStore, user_id: str, project_id: str) -> tuple[str, ...]:
    rows = await store.query(_HELD, user_id, project_id)
    return tuple(effective_roles({ROLE_NAMES.get(str(r[0]), "") for r in rows}))


async def _subject(store: ProjectionStore, auth: _Auth) -> Subject:
    """Who the password authenticates and what the token is scoped to; 401 otherwise."""
    password = auth.identity.password
    if "password" not in auth.identity.methods or password is None:
        raise ApiError("unauthorized", "Only the password method is supported.")
    user = await _one(store, _USER_BY_ID, _USER_BY_NAME, password.user)
    if user is None or not user[3] or not user[4]:
        raise ApiError("unauthorized", _DENIED)
    if not await verify_password(password.user.password, str(user[3])):
        raise ApiError("unauthorized", _DENIED)
    user_id, user_name = str(user[0]), str(user[1])
    scope = auth.scope.project if isinstance(auth.scope, _Scope) else None
    if scope is None and auth.scope is None and user[5]:
        scope = _ProjectRef(id=str(user[5]))
    if scope is None:
        return Subject(user_id=user_id, user_name=user_name)
    project = await _one(store, _PROJECT_BY_ID, _PROJECT_BY_NAME, scope)
    if project is None or not project[3]:
        raise ApiError("unauthorized", f"Could not find project: {scope.id or scope.name}.")
    roles = await _roles_on(store, user_id, str(project[0]))
    if not roles:
        raise ApiError("unauthorized", f"User {user_id} has no access to project {project[0]}.")
    return Subject(user_id=user_id, user_name=user_name, project_id=str(project[0]),
                   project_name=str(project[1]), roles=roles)


async def issue_token(request: web.Request, store: ProjectionStore) -> web.Response:
    """``POST /v3/auth/tokens``: 201, ``X-Subject-Token`` and the document as issued."""
    auth = (await read_json(request, AuthRequest)).auth
    subject = await _subject(store, auth)
    base_url = f"{request.scheme}://{request.host}"
    token, document = await request.config_dict[TOKENS].issue(
        subject, base_url=base_url, correlation_id=request[REQUEST_ID])
    return web.Response(status=201, body=document.encode(), content_type="application/json",
                        headers={"X-Subject-Token": token})
