"""First start of a cloud: the admin project, the admin user and its role; identity wiring.

Every command uses a fixed id (``stable_id``), so running the bootstrap again is a no-op:
the actors answer an identical create with no event and the name claims are already
held by the same owners. The domain ``default`` and the three roles are constants of
`actors.identity` and need no events. The admin password comes from
``ORRERY_ADMIN_PASSWORD``; when unset, one is generated on the very first start only
and printed once. An existing admin keeps its password (change it through the API).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.identity import (
    DEFAULT_DOMAIN_ID,
    ROLES,
    ClaimName,
    CreateProject,
    CreateUser,
    GrantRole,
    name_key,
    stable_id,
)
from actors.identity_views import PROJECTION_NAME, IdentityProjection
from actors.passwords import hash_password
from gateway.app import GatewaySettings, ServiceApi, make_app
from gateway.auth import DEFAULT_TTL, TOKENS, TokenService
from gateway.compute import seed_default_flavors
from gateway.identity import IdentityApi
from schemas import stream_name
from store.projections import ProjectionHost, ProjectionRunner

log = structlog.get_logger("orrery.bootstrap")

ADMIN_PROJECT_ID = stable_id("project/admin")
ADMIN_USER_ID = stable_id("user/admin")
PASSWORD_ENV = "ORRERY_ADMIN_PASSWORD"
TOKEN_TTL_ENV = "ORRERY_TOKEN_EXPIRATION"


class BootstrapError(Exception):
    """A bootstrap command was refused or timed out; the cloud has no usable admin."""


def token_ttl(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a token lives: ``ORRERY_TOKEN_EXPIRATION`` (default one hour)."""
    text = (os.environ if environ is None else environ).get(TOKEN_TTL_ENV, "").strip()
    if not text:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        raise ValueError(f"{TOKEN_TTL_ENV} must be a number of seconds, not {text!r}") from None
    if ttl <= 0:
        raise ValueError(f"{TOKEN_TTL_ENV} must be positive, not {text!r}")
    return ttl


async def bootstrap(
    store: ProjectionHost, client: ActorClient, *, password: str | None = None,
    out: TextIO | None = None, wait_timeout: float = 30.0,
) -> str | None:
    """Create what a new cloud needs (idempotent); returns a generated password, if any.

    ``password`` defaults to ``$ORRERY_ADMIN_PASSWORD``. A generated one is written to
    ``out`` (stdout) once, on the start that created the admin user.
    """
    password = password or os.environ.get(PASSWORD_ENV) or None
    exists = await store.stream_version(stream_name("user", ADMIN_USER_ID)) > 0
    generated = None
    if not exists and password is None:
        password = generated = secrets.token_urlsafe(18)
    password_hash = await hash_password(password) if password and not exists else None
    position = 0
    steps: list[tuple[str, str, msgspec.Struct]] = [
        ("identity_name", name_key(DEFAULT_DOMAIN_ID, "project", "admin"),
         ClaimName(owner=ADMIN_PROJECT_ID)),
        ("project", ADMIN_PROJECT_ID, CreateProject(name="admin", description="Bootstrap project")),
        ("identity_name", name_key(DEFAULT_DOMAIN_ID, "user", "admin"),
         ClaimName(owner=ADMIN_USER_ID)),
        ("user", ADMIN_USER_ID, CreateUser(name="admin", password_hash=password_hash,
                                           default_project_id=ADMIN_PROJECT_ID)),
        ("user", ADMIN_USER_ID, GrantRole(project_id=ADMIN_PROJECT_ID, role_id=ROLES["admin"])),
    ]
    for kind, actor_id, command in steps:
        reply = await client.call(kind, actor_id, command, correlation_id="req-bootstrap")
        if not reply.ok:
            raise BootstrapError(f"{kind} {actor_id}: {reply.error_type}: {reply.error}")
        position = max(position, reply.position)
    if not await store.wait_for_projection(PROJECTION_NAME, position, wait_timeout):
        raise BootstrapError("the identity projection did not catch up with the bootstrap")
    log.info("identity_bootstrapped", admin_user=ADMIN_USER_ID, created=not exists)
    await seed_default_flavors(store, client, wait_timeout=wait_timeout)
    if generated is not None:
        print(f"orrery: admin password (shown once): {generated}", file=out or sys.stdout,
              flush=True)
    return generated


def identity_runner(store: ProjectionHost) -> ProjectionRunner:
    """The runner that folds identity events into the tables the API reads."""
    return ProjectionRunner(store, IdentityProjection())


def make_cloud_app(
    store: Any, client: ActorClient, *, apis: Iterable[ServiceApi] = (),
    settings: GatewaySettings | None = None, ttl: float = DEFAULT_TTL,
) -> web.Application:
    """The gateway with Identity (and `apis`), tokens issued and checked on `store`."""
    app = make_app(settings, [IdentityApi(store, client), *apis])
    app[TOKENS] = TokenService(store, client, ttl=ttl)
    return app
