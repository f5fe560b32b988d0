"""Keystone v3 subset: tokens, domains, projects, users, roles and role assignments.

Writes are commands to the identity actors (correlation id = the request id) and wait for
the ``identity`` projection to reach their position, so the next read sees them; reads
come from the projection tables. Name uniqueness per domain is a claim on the
``identity_name`` actor taken before a create or rename. The admin API needs the admin
role; a user may show itself and the project its token is scoped to (anything else it
cannot see is 404, as Keystone answers for resources outside one's reach).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from actors.client import ActorClient
from actors.identity import (
    DEFAULT_DOMAIN_ID,
    DEFAULT_DOMAIN_NAME,
    ROLE_NAMES,
    ROLES,
    ClaimName,
    CreateProject,
    CreateUser,
    DeleteProject,
    DeleteUser,
    GrantRole,
    ReleaseName,
    RevokeRole,
    UpdateProject,
    UpdateUser,
    name_key,
)
from actors.identity_views import PROJECTION_NAME
from actors.passwords import hash_password
from gateway.app import ServiceRouter
from gateway.auth import TOKENS, AuthContext, authenticate, issue_token, require
from gateway.commands import command as actor_command
from gateway.errors import ApiError, ErrorCode
from gateway.json import json_response, read_json
from gateway.middleware import REQUEST_ID
from store.protocol import ProjectionStore

Doc = dict[str, Any]
_PROJECT_COLS = "id, name, domain_id, description, enabled"
_USER_COLS = "id, name, domain_id, default_project_id, enabled, email, description"
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request", "forbidden": "forbidden"}


class ProjectBody(msgspec.Struct, kw_only=True):
    name: str | None = None
    domain_id: str = DEFAULT_DOMAIN_ID
    description: str | None = None
    enabled: bool | None = None
    is_domain: bool = False
    parent_id: str | None = None
    tags: list[str] = []
    options: dict[str, Any] = {}


class ProjectRequest(msgspec.Struct):
    project: ProjectBody


class UserBody(msgspec.Struct, kw_only=True):
    name: str | None = None
    domain_id: str = DEFAULT_DOMAIN_ID
    password: str | None = None
    default_project_id: str | None = None
    enabled: bool | None = None
    email: str | None = None
    description: str | None = None
    options: dict[str, Any] = {}


class UserRequest(msgspec.Struct):
    user: UserBody


class IdentityApi:
    """The identity `ServiceApi`: every route under ``/identity``."""

    service = "identity"

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 wait_timeout: float = 10.0) -> None:
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout

    def register(self, router: ServiceRouter) -> None:
        tokens = "/v3/auth/tokens"
        router.post(tokens, self.issue)
        router.get(tokens, self.validate)
        router.delete(tokens, self.revoke)
        router.get("/v3/domains", self.list_domains)
        router.get("/v3/domains/{id}", self.show_domain)
        router.get("/v3/roles", self.list_roles)
        router.get("/v3/roles/{id}", self.show_role)
        for what in ("projects", "users"):
            router.post(f"/v3/{what}", getattr(self, f"create_{what[:-1]}"))
            router.get(f"/v3/{what}", getattr(self, f"list_{what}"))
            router.get(f"/v3/{what}/{{id}}", getattr(self, f"show_{what[:-1]}"))
            router.patch(f"/v3/{what}/{{id}}", getattr(self, f"update_{what[:-1]}"))
            router.delete(f"/v3/{what}/{{id}}", getattr(self, f"delete_{what[:-1]}"))
        grant = "/v3/projects/{project}/users/{user}/roles/{role}"
        router.put(grant, self.grant)
        router.get(grant, self.check_grant)
        router.delete(grant, self.revoke_grant)
        router.get("/v3/projects/{project}/users/{user}/roles", self.list_grants)
        router.get("/v3/role_assignments", self.list_assignments)

    # -- tokens ------------------------------------------------------------------------

    async def issue(self, request: web.Request) -> web.Response:
        return await issue_token(request, self.store)

    async def validate(self, request: web.Request) -> web.Response:
        await authenticate(request)
        subject = await self._subject_token(request)
        return web.Response(
            body=subject.document.encode(), content_type="application/json",
            headers={"X-Subject-Token": request.headers["X-Subject-Token"]},
        )

    async def revoke(self, request: web.Request) -> web.Response:
        await authenticate(request)
        await self._subject_token(request)
        tokens = request.config_dict[TOKENS]
        await tokens.revoke(request.headers["X-Subject-Token"],
                            correlation_id=request[REQUEST_ID])
        return web.Response(status=204)

    async def _subject_token(self, request: web.Request) -> AuthContext:
        context = await authenticate(request)
        token = request.headers.get("X-Subject-Token", "").strip()
        if not token:
            raise ApiError("not_found", "Could not find token: no X-Subject-Token given.")
        subject = await request.config_dict[TOKENS].validate(token)
        if subject is None:
            raise ApiError("not_found", "Could not find token.")
        if not context.is_admin and subject.user_id != context.user_id:
            raise ApiError("forbidden")
        return subject

    # -- domains and roles (fixed) --------------------------------------------------------

    async def list_domains(self, request: web.Request) -> web.Response:
        await authenticate(request)
        name = request.query.get("name")
        found = [] if name not in (None, DEFAULT_DOMAIN_NAME) else [_domain(request)]
        return json_response({"domains": found, "links": _links(request)})

    async def show_domain(self, request: web.Request) -> web.Response:
        await authenticate(request)
        if request.match_info["id"] not in (DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME):
            raise ApiError("not_found", f"Could not find domain: {request.match_info['id']}.")
        return json_response({"domain": _domain(request)})

    async def list_roles(self, request: web.Request) -> web.Response:
        await authenticate(request)
        name = request.query.get("name")
        roles = [_role(request, rid) for n, rid in ROLES.items() if name in (None, n)]
        return json_response({"roles": roles, "links": _links(request)})

    async def show_role(self, request: web.Request) -> web.Response:
        await authenticate(request)
        role_id = request.match_info["id"]
        if role_id not in ROLE_NAMES:
            raise ApiError("not_found", f"Could not find role: {role_id}.")
        return json_response({"role": _role(request, role_id)})

    # -- projects ------------------------------------------------------------------------

    async def create_project(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        body = (await read_json(request, ProjectRequest)).project
        if not body.name:
            raise ApiError("bad_request", "Invalid input for field 'name': it is required.")
        _check_domain(body.domain_id)
        project_id = uuid.uuid4().hex
        await self._claim(request, "project", body.name, project_id)
        await self._command(request, "project", project_id, CreateProject(
            name=body.name, domain_id=body.domain_id, description=body.description or "",
            enabled=True if body.enabled is None else body.enabled))
        return json_response({"project": await self._project(request, project_id)}, status=201)

    async def list_projects(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        sql, args = f"SELECT {_PROJECT_COLS} FROM identity_projects", _filters(request)
        if not context.is_admin:
            args["id"] = context.project_id or ""
        rows = await self._rows(sql, args)
        projects = [_project(request, row) for row in rows]
        return json_response({"projects": projects, "links": _links(request)})

    async def show_project(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        project_id = request.match_info["id"]
        if not context.sees_project(project_id):
            raise ApiError("not_found", f"Could not find project: {project_id}.")
        return json_response({"project": await self._project(request, project_id)})

    async def update_project(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        project_id = request.match_info["id"]
        current = await self._project(request, project_id)
        body = (await read_json(request, ProjectRequest)).project
        await self._rename(request, "project", current["name"], body.name, project_id)
        await self._command(request, "project", project_id, UpdateProject(
            name=body.name, description=body.description, enabled=body.enabled))
        if body.name and body.name != current["name"]:
            await self._release(request, "project", current["name"], project_id)
        return json_response({"project": await self._project(request, project_id)})

    async def delete_project(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        project_id = request.match_info["id"]
        current = await self._project(request, project_id)
        await self._command(request, "project", project_id, DeleteProject())
        await self._release(request, "project", current["name"], project_id)
        return web.Response(status=204)

    async def _project(self, request: web.Request, project_id: str) -> Doc:
        rows = await self._rows(f"SELECT {_PROJECT_COLS} FROM identity_projects",
                                {"id": project_id})
        if not rows:
            raise ApiError("not_found", f"Could not find project: {project_id}.")
        return _project(request, rows[0])

    # -- users ---------------------------------------------------------------------------

    async def create_user(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        body = (await read_json(request, UserRequest)).user
        if not body.name:
            raise ApiError("bad_request", "Invalid input for field 'name': it is required.")
        _check_domain(body.domain_id)
        if body.default_project_id is not None:
            await self._project(request, body.default_project_id)
        user_id = uuid.uuid4().hex
        password_hash = await hash_password(body.password) if body.password else None
        await self._claim(request, "user", body.name, user_id)
        await self._command(request, "user", user_id, CreateUser(
            name=body.name, domain_id=body.domain_id, password_hash=password_hash,
            default_project_id=body.default_project_id,
            enabled=True if body.enabled is None else body.enabled,
            email=body.email, description=body.description or ""))
        return json_response({"user": await self._user(request, user_id)}, status=201)

    async def list_users(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        rows = await self._rows(f"SELECT {_USER_COLS} FROM identity_users", _filters(request))
        return json_response({"users": [_user(request, r) for r in rows],
                              "links": _links(request)})

    async def show_user(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        user_id = request.match_info["id"]
        if not context.is_admin and user_id != context.user_id:
            raise ApiError("not_found", f"Could not find user: {user_id}.")
        return json_response({"user": await self._user(request, user_id)})

    async def update_user(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        user_id = request.match_info["id"]
        current = await self._user(request, user_id)
        body = (await read_json(request, UserRequest)).user
        password_hash = await hash_password(body.password) if body.password else None
        await self._rename(request, "user", current["name"], body.name, user_id)
        await self._command(request, "user", user_id, UpdateUser(
            name=body.name, password_hash=password_hash,
            default_project_id=body.default_project_id, enabled=body.enabled,
            email=body.email, description=body.description))
        if body.name and body.name != current["name"]:
            await self._release(request, "user", current["name"], user_id)
        return json_response({"user": await self._user(request, user_id)})

    async def delete_user(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        user_id = request.match_info["id"]
        current = await self._user(request, user_id)
        await self._command(request, "user", user_id, DeleteUser())
        await self._release(request, "user", current["name"], user_id)
        return web.Response(status=204)

    async def _user(self, request: web.Request, user_id: str) -> Doc:
        rows = await self._rows(f"SELECT {_USER_COLS} FROM identity_users", {"id": user_id})
        if not rows:
            raise ApiError("not_found", f"Could not find user: {user_id}.")
        return _user(request, rows[0])

    # -- role assignments ------------------------------------------------------------------

    async def grant(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        project, user, role = await self._grant_target(request)
        await self._command(request, "user", user, GrantRole(project_id=project, role_id=role))
        return web.Response(status=204)

    async def check_grant(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        project, user, role = await self._grant_target(request)
        rows = await self.store.query(
            "SELECT 1 FROM identity_assignments WHERE user_id = $1 AND project_id = $2 "
            "AND role_id = $3", user, project, role)
        if not rows:
            raise ApiError("not_found", f"Could not find role assignment {role}.")
        return web.Response(status=204)

    async def revoke_grant(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        project, user, role = await self._grant_target(request)
        await self._command(request, "user", user, RevokeRole(project_id=project, role_id=role))
        return web.Response(status=204)

    async def list_grants(self, request: web.Request) -> web.Response:
        require(await authenticate(request), "admin")
        rows = await self.store.query(
            "SELECT role_id FROM identity_assignments WHERE user_id = $1 AND project_id = $2",
            request.match_info["user"], request.match_info["project"])
        roles = [_role(request, r[0]) for r in rows if r[0] in ROLE_NAMES]
        return json_response({"roles": roles, "links": _links(request)})

    async def list_assignments(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        q = request.query
        args = {"a.user_id": q.get("user.id"), "a.project_id": q.get("scope.project.id"),
                "a.role_id": q.get("role.id")}
        if not context.is_admin:
            if args["a.user_id"] != context.user_id:
                raise ApiError("forbidden")
        sql = ("SELECT a.user_id, a.project_id, a.role_id, u.name, p.name "
               "FROM identity_assignments a JOIN identity_users u ON u.id = a.user_id "
               "JOIN identity_projects p ON p.id = a.project_id")
        rows = await self._rows(sql, {k: v for k, v in args.items() if v is not None})
        names = "include_names" in q and q["include_names"].lower() in ("", "1", "true")
        found = [_assignment(request, row, names) for row in rows]
        return json_response({"role_assignments": found, "links": _links(request)})

    async def _grant_target(self, request: web.Request) -> tuple[str, str, str]:
        project, user = request.match_info["project"], request.match_info["user"]
        role = request.match_info["role"]
        await self._project(request, project)
        await self._user(request, user)
        if role not in ROLE_NAMES:
            raise ApiError("not_found", f"Could not find role: {role}.")
        return project, user, role

    # -- plumbing ------------------------------------------------------------------------

    async def _rows(self, sql: str, filters: dict[str, str]) -> list[tuple[Any, ...]]:
        where = [f"{column} = ${n}" for n, column in enumerate(filters, start=1)]
        if where:
            sql += " WHERE " + " AND ".join(where)
        return await self.store.query(sql + " ORDER BY 2", *filters.values())

    async def _command(self, request: web.Request, kind: str, actor_id: str,
                       command: msgspec.Struct) -> None:
        await actor_command(self.client, self.store, request, kind, actor_id, command,
                            codes=_CODES, projection=PROJECTION_NAME, what="identity",
                            wait_timeout=self.wait_timeout)

    async def _claim(self, request: web.Request, what: str, name: str, owner: str) -> None:
        reply = await self.client.call("identity_name", name_key(DEFAULT_DOMAIN_ID, what, name),
                                       ClaimName(owner=owner), correlation_id=request[REQUEST_ID])
        if not reply.ok:
            raise ApiError("conflict", f"Conflict occurred attempting to store {what} - "
                                       f"Duplicate entry found with name {name}.")

    async def _release(self, request: web.Request, what: str, name: str, owner: str) -> None:
        await self.client.call("identity_name", name_key(DEFAULT_DOMAIN_ID, what, name),
                               ReleaseName(owner=owner), correlation_id=request[REQUEST_ID])

    async def _rename(self, request: web.Request, what: str, old: str, new: str | None,
                      owner: str) -> None:
        if new and new != old:
            await self._claim(request, what, new, owner)


# --- representations ----------------------------------------------------------------------


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/identity/v3"


def _links(request: web.Request) -> Doc:
    return {"self": str(request.url), "previous": None, "next": None}


def _check_domain(domain_id: str) -> None:
    if domain_id != DEFAULT_DOMAIN_ID:
        raise ApiError("not_found", f"Could not find domain: {domain_id}.")


def _filters(request: web.Request) -> dict[str, str]:
    return {k: request.query[k] for k in ("name", "domain_id") if k in request.query}


def _domain(request: web.Request) -> Doc:
    return {"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME,
            "description": "The default domain", "enabled": True, "tags": [], "options": {},
            "links": {"self": f"{_base(request)}/domains/{DEFAULT_DOMAIN_ID}"}}


def _role(request: web.Request, role_id: str) -> Doc:
    return {"id": role_id, "name": ROLE_NAMES[role_id], "domain_id": None,
            "description": None, "options": {},
            "links": {"self": f"{_base(request)}/roles/{role_id}"}}


def _project(request: web.Request, row: tuple[Any, ...]) -> Doc:
    pid, name, domain_id, description, enabled = row
    return {"id": pid, "name": name, "domain_id": domain_id, "description": description,
            "enabled": bool(enabled), "parent_id": domain_id, "is_domain": False, "tags": [],
            "options": {}, "links": {"self": f"{_base(request)}/projects/{pid}"}}


def _user(request: web.Request, row: tuple[Any, ...]) -> Doc:
    uid, name, domain_id, default_project_id, enabled, email, description = row
    doc: Doc = {"id": uid, "name": name, "domain_id": domain_id, "enabled": bool(enabled),
                "password_expires_at": None, "options": {},
                "links": {"self": f"{_base(request)}/users/{uid}"}}
    optional = {"default_project_id": default_project_id, "email": email,
                "description": description}
    doc.update({k: v for k, v in optional.items() if v})
    return doc


def _assignment(request: web.Request, row: tuple[Any, ...], names: bool) -> Doc:
    user_id, project_id, role_id, user_name, project_name = row
    domain = {"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME}
    role: Doc = {"id": role_id}
    user: Doc = {"id": user_id}
    project: Doc = {"id": project_id}
    if names:
        role["name"] = ROLE_NAMES.get(role_id, "")
        user.update(name=user_name, domain=domain)
        project.update(name=project_name, domain=domain)
    link = f"{_base(request)}/projects/{project_id}/users/{user_id}/roles/{role_id}"
    return {"role": role, "user": user, "scope": {"project": project},
            "links": {"assignment": link}}
