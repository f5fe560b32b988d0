"""Identity actor kinds: projects, users (with their role assignments), name claims, tokens.

Every kind is pure decide/evolve. The domain ``default`` and the roles ``admin``,
``member`` and ``reader`` are constants with stable ids rather than actors: the
authorisation rules of every service are written against those three names, so a cloud
where ``admin`` could be renamed or deleted would lock itself out; fixing them keeps the
rules and the data in one place (the code). Keystone's default implied roles hold:
admin implies member, member implies reader.

Names are unique per domain and per resource type. A project's or user's actor cannot
see its siblings, so uniqueness lives in the ``identity_name`` kind: one actor per
``<domain>/<type>/<name>`` that one owner claims at a time (the single writer makes the
check race-free across processes). The gateway claims before it creates or renames and
releases after it deletes or renames.

Role assignments live on the user actor (``RoleGranted``/``RoleRevoked``): they are
granted and revoked per user, and keeping them there gives the user's stream the whole
history of what the user could do.

Tokens: one ``token`` actor per issued token, its id the sha256 of the token (the log
never holds a bearer secret); ``TokenIssued`` carries the issued document verbatim so
validation returns exactly what was issued.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import msgspec

from actors.kind import ActorKind, Context, Events, Rejected

DEFAULT_DOMAIN_ID = "default"
DEFAULT_DOMAIN_NAME = "Default"


def stable_id(name: str) -> str:
    """A Keystone-style 32-hex id that is the same on every cloud for ``name``."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:identity:{name}").hex


#: the fixed roles, name -> id
ROLES: dict[str, str] = {name: stable_id(f"role/{name}") for name in ("admin", "member", "reader")}
ROLE_NAMES: dict[str, str] = {rid: name for name, rid in ROLES.items()}
#: what each role implies (Keystone's defaults since Rocky)
IMPLIES: dict[str, tuple[str, ...]] = {"admin": ("member",), "member": ("reader",), "reader": ()}


def effective_roles(names: set[str]) -> list[str]:
    """``names`` with every implied role added, in the fixed order admin, member, reader."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in ROLES and name not in found:
            found.add(name)
            todo.extend(IMPLIES[name])
    return [name for name in ROLES if name in found]


# --- projects ---------------------------------------------------------------------------


class CreateProject(msgspec.Struct, frozen=True, kw_only=True, tag="project.create"):
    name: str
    domain_id: str = DEFAULT_DOMAIN_ID
    description: str = ""
    enabled: bool = True


class UpdateProject(msgspec.Struct, frozen=True, kw_only=True, tag="project.update"):
    name: str | None = None
    description: str | None = None
    enabled: bool | None = None


class DeleteProject(msgspec.Struct, frozen=True, kw_only=True, tag="project.delete"):
    pass


class ProjectCreated(msgspec.Struct, frozen=True, kw_only=True, tag="project.created"):
    project_id: str
    name: str
    domain_id: str
    description: str
    enabled: bool


class ProjectUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="project.updated"):
    """The project's fields after the update (all of them, so a fold needs no lookup)."""

    project_id: str
    name: str
    description: str
    enabled: bool


class ProjectDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="project.deleted"):
    project_id: str


class ProjectState(msgspec.Struct, kw_only=True):
    exists: bool = False
    deleted: bool = False
    name: str = ""
    domain_id: str = DEFAULT_DOMAIN_ID
    description: str = ""
    enabled: bool = True


def _project_initial(_actor_id: str) -> ProjectState:
    return ProjectState()


def _live(exists: bool, deleted: bool, what: str, actor_id: str) -> None:
    if not exists or deleted:
        raise Rejected("not_found", f"Could not find {what}: {actor_id}.")


def decide_project(state: ProjectState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case CreateProject(name=name, domain_id=domain, description=desc, enabled=enabled):
            same = (state.name, state.domain_id) == (name, domain)
            if state.exists and not state.deleted and same:
                return []  # the same create again (bootstrap, a redelivery): nothing to do
            if state.exists:
                raise Rejected("conflict", f"Project {ctx.actor_id} already exists.")
            _check_name(name, "project")
            return [ProjectCreated(project_id=ctx.actor_id, name=name, domain_id=domain,
                                   description=desc, enabled=enabled)]
        case UpdateProject():
            _live(state.exists, state.deleted, "project", ctx.actor_id)
            if command.name is not None:
                _check_name(command.name, "project")
            return [ProjectUpdated(
                project_id=ctx.actor_id, name=_or(command.name, state.name),
                description=_or(command.description, state.description),
                enabled=_or(command.enabled, state.enabled),
            )]
        case DeleteProject():
            _live(state.exists, state.deleted, "project", ctx.actor_id)
            return [ProjectDeleted(project_id=ctx.actor_id)]
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def evolve_project(state: ProjectState, event: msgspec.Struct) -> ProjectState:
    match event:
        case ProjectCreated():
            state.exists, state.name, state.domain_id = True, event.name, event.domain_id
            state.description, state.enabled = event.description, event.enabled
        case ProjectUpdated():
            state.name, state.description, state.enabled = (
                event.name, event.description, event.enabled)
        case ProjectDeleted():
            state.deleted = True
    return state


# --- users and their role assignments ---------------------------------------------------


class CreateUser(msgspec.Struct, frozen=True, kw_only=True, tag="user.create"):
    name: str
    password_hash: str | None = None
    domain_id: str = DEFAULT_DOMAIN_ID
    default_project_id: str | None = None
    enabled: bool = True
    email: str | None = None
    description: str = ""


class UpdateUser(msgspec.Struct, frozen=True, kw_only=True, tag="user.update"):
    name: str | None = None
    password_hash: str | None = None
    default_project_id: str | None = None
    enabled: bool | None = None
    email: str | None = None
    description: str | None = None


class DeleteUser(msgspec.Struct, frozen=True, kw_only=True, tag="user.delete"):
    pass


class GrantRole(msgspec.Struct, frozen=True, kw_only=True, tag="user.grant_role"):
    project_id: str
    role_id: str


class RevokeRole(msgspec.Struct, frozen=True, kw_only=True, tag="user.revoke_role"):
    project_id: str
    role_id: str


class UserCreated(msgspec.Struct, frozen=True, kw_only=True, tag="user.created"):
    user_id: str
    name: str
    domain_id: str
    password_hash: str | None
    default_project_id: str | None
    enabled: bool
    email: str | None
    description: str


class UserUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="user.updated"):
    """The user's fields after the update (the password hash only when it changed)."""

    user_id: str
    name: str
    default_project_id: str | None
    enabled: bool
    email: str | None
    description: str
    password_hash: str | None = None


class UserDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="user.deleted"):
    user_id: str


class RoleGranted(msgspec.Struct, frozen=True, kw_only=True, tag="user.role_granted"):
    user_id: str
    project_id: str
    role_id: str


class RoleRevoked(msgspec.Struct, frozen=True, kw_only=True, tag="user.role_revoked"):
    user_id: str
    project_id: str
    role_id: str


class UserState(msgspec.Struct, kw_only=True):
    exists: bool = False
    deleted: bool = False
    name: str = ""
    domain_id: str = DEFAULT_DOMAIN_ID
    password_hash: str | None = None
    default_project_id: str | None = None
    enabled: bool = True
    email: str | None = None
    description: str = ""
    grants: list[tuple[str, str]] = []  # (project_id, role_id)


def _user_initial(_actor_id: str) -> UserState:
    return UserState()


def decide_user(state: UserState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case CreateUser():
            return _create_user(state, command, ctx)
        case UpdateUser():
            _live(state.exists, state.deleted, "user", ctx.actor_id)
            return [_updated_user(state, command, ctx.actor_id)]
        case DeleteUser():
            _live(state.exists, state.deleted, "user", ctx.actor_id)
            return [UserDeleted(user_id=ctx.actor_id)]
        case GrantRole(project_id=project, role_id=role):
            _live(state.exists, state.deleted, "user", ctx.actor_id)
            _known_role(role)
            if (project, role) in state.grants:
                return []
            return [RoleGranted(user_id=ctx.actor_id, project_id=project, role_id=role)]
        case RevokeRole(project_id=project, role_id=role):
            _live(state.exists, state.deleted, "user", ctx.actor_id)
            _known_role(role)
            if (project, role) not in state.grants:
                raise Rejected("not_found", f"Could not find role assignment {role} for "
                                            f"user {ctx.actor_id} on project {project}.")
            return [RoleRevoked(user_id=ctx.actor_id, project_id=project, role_id=role)]
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def _create_user(state: UserState, cmd: CreateUser, ctx: Context) -> Events:
    if state.exists and not state.deleted and (state.name, state.domain_id) == (
            cmd.name, cmd.domain_id):
        return []
    if state.exists:
        raise Rejected("conflict", f"User {ctx.actor_id} already exists.")
    _check_name(cmd.name, "user")
    return [UserCreated(
        user_id=ctx.actor_id, name=cmd.name, domain_id=cmd.domain_id,
        password_hash=cmd.password_hash, default_project_id=cmd.default_project_id,
        enabled=cmd.enabled, email=cmd.email, description=cmd.description,
    )]


def _updated_user(state: UserState, cmd: UpdateUser, actor_id: str) -> UserUpdated:
    if cmd.name is not None:
        _check_name(cmd.name, "user")
    return UserUpdated(
        user_id=actor_id, name=_or(cmd.name, state.name),
        default_project_id=_or(cmd.default_project_id, state.default_project_id),
        enabled=_or(cmd.enabled, state.enabled), email=_or(cmd.email, state.email),
        description=_or(cmd.description, state.description), password_hash=cmd.password_hash,
    )


def evolve_user(state: UserState, event: msgspec.Struct) -> UserState:
    match event:
        case UserCreated():
            state.exists, state.name, state.domain_id = True, event.name, event.domain_id
            state.password_hash, state.default_project_id = (
                event.password_hash, event.default_project_id)
            state.enabled, state.email, state.description = (
                event.enabled, event.email, event.description)
        case UserUpdated():
            state.name, state.default_project_id = event.name, event.default_project_id
            state.enabled, state.email, state.description = (
                event.enabled, event.email, event.description)
            if event.password_hash is not None:
                state.password_hash = event.password_hash
        case UserDeleted():
            state.deleted = True
        case RoleGranted(project_id=project, role_id=role):
            state.grants = [*state.grants, (project, role)]
        case RoleRevoked(project_id=project, role_id=role):
            state.grants = [g for g in state.grants if g != (project, role)]
    return state


# --- name claims ------------------------------------------------------------------------


class ClaimName(msgspec.Struct, frozen=True, kw_only=True, tag="identity_name.claim"):
    owner: str


class ReleaseName(msgspec.Struct, frozen=True, kw_only=True, tag="identity_name.release"):
    owner: str


class NameClaimed(msgspec.Struct, frozen=True, kw_only=True, tag="identity_name.claimed"):
    owner: str


class NameReleased(msgspec.Struct, frozen=True, kw_only=True, tag="identity_name.released"):
    owner: str


class NameState(msgspec.Struct, kw_only=True):
    owner: str | None = None


def name_key(domain_id: str, what: str, name: str) -> str:
    """The id of the ``identity_name`` actor that guards one name."""
    return f"{domain_id}/{what}/{name}"


def _name_initial(_actor_id: str) -> NameState:
    return NameState()


def decide_name(state: NameState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case ClaimName(owner=owner):
            if state.owner == owner:
                return []
            if state.owner is not None:
                raise Rejected("conflict", f"The name {ctx.actor_id} is taken.")
            return [NameClaimed(owner=owner)]
        case ReleaseName(owner=owner):
            return [NameReleased(owner=owner)] if state.owner == owner else []
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def evolve_name(state: NameState, event: msgspec.Struct) -> NameState:
    match event:
        case NameClaimed(owner=owner):
            state.owner = owner
        case NameReleased():
            state.owner = None
    return state


# --- tokens -----------------------------------------------------------------------------


class IssueToken(msgspec.Struct, frozen=True, kw_only=True, tag="token.issue"):
    document: str  # the JSON body as issued, returned verbatim on validation
    user_id: str
    project_id: str | None
    expires_at: str  # ISO 8601 UTC, as in the document


class RevokeToken(msgspec.Struct, frozen=True, kw_only=True, tag="token.revoke"):
    pass


class TokenIssued(msgspec.Struct, frozen=True, kw_only=True, tag="token.issued"):
    token_hash: str
    document: str
    user_id: str
    project_id: str | None
    expires_at: str


class TokenRevoked(msgspec.Struct, frozen=True, kw_only=True, tag="token.revoked"):
    token_hash: str


class TokenState(msgspec.Struct, kw_only=True):
    issued: bool = False
    revoked: bool = False


def _token_initial(_actor_id: str) -> TokenState:
    return TokenState()


def decide_token(state: TokenState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case IssueToken():
            if state.issued:
                return []
            return [TokenIssued(token_hash=ctx.actor_id, document=command.document,
                                user_id=command.user_id, project_id=command.project_id,
                                expires_at=command.expires_at)]
        case RevokeToken():
            if not state.issued:
                raise Rejected("not_found", "Could not find token.")
            return [] if state.revoked else [TokenRevoked(token_hash=ctx.actor_id)]
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def evolve_token(state: TokenState, event: msgspec.Struct) -> TokenState:
    match event:
        case TokenIssued():
            state.issued = True
        case TokenRevoked():
            state.revoked = True
    return state


# --- shared checks ------------------------------------------------------------------------

V = TypeVar("V")


def _or(new: V | None, old: V) -> V:
    return old if new is None else new


def _check_name(name: str, what: str) -> None:
    if not name.strip() or len(name) > 255:
        raise Rejected("bad_request", f"Invalid {what} name: it must be 1 to 255 characters.")


def _known_role(role_id: str) -> None:
    if role_id not in ROLE_NAMES:
        raise Rejected("not_found", f"Could not find role: {role_id}.")


PROJECT_EVENTS = (ProjectCreated, ProjectUpdated, ProjectDeleted)
USER_EVENTS = (UserCreated, UserUpdated, UserDeleted, RoleGranted, RoleRevoked)
NAME_EVENTS = (NameClaimed, NameReleased)
TOKEN_EVENTS = (TokenIssued, TokenRevoked)

PROJECT = ActorKind(
    name="project", state_type=ProjectState, initial=_project_initial,
    decide=decide_project, evolve=evolve_project,
    commands=(CreateProject, UpdateProject, DeleteProject), events=PROJECT_EVENTS,
)
USER = ActorKind(
    name="user", state_type=UserState, initial=_user_initial,
    decide=decide_user, evolve=evolve_user,
    commands=(CreateUser, UpdateUser, DeleteUser, GrantRole, RevokeRole), events=USER_EVENTS,
)
IDENTITY_NAME = ActorKind(
    name="identity_name", state_type=NameState, initial=_name_initial,
    decide=decide_name, evolve=evolve_name, commands=(ClaimName, ReleaseName),
    events=NAME_EVENTS,
)
TOKEN = ActorKind(
    name="token", state_type=TokenState, initial=_token_initial,
    decide=decide_token, evolve=evolve_token, commands=(IssueToken, RevokeToken),
    events=TOKEN_EVENTS, snapshot_every=1000,
)
#: every identity kind, for wiring a worker
IDENTITY_KINDS: tuple[ActorKind[Any], ...] = (PROJECT, USER, IDENTITY_NAME, TOKEN)
