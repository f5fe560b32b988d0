"""The identity projection: projects, users, role assignments and tokens as query tables.

One projection (``identity``) folds every identity event, so a write to any of the four
tables is visible to readers once ``wait_for_projection("identity", position)`` returns.
SQL is portable between SQLite and PostgreSQL (TEXT/INTEGER columns, booleans as 0/1,
``ON CONFLICT … DO UPDATE``). Deleting a project or user also drops its assignments, as
Keystone does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Any

import msgspec

from actors.identity import (
    NAME_EVENTS,
    PROJECT_EVENTS,
    TOKEN_EVENTS,
    USER_EVENTS,
    ProjectCreated,
    ProjectDeleted,
    ProjectUpdated,
    RoleGranted,
    RoleRevoked,
    TokenIssued,
    TokenRevoked,
    UserCreated,
    UserDeleted,
    UserUpdated,
)
from schemas import EventEnvelope
from store.protocol import SqlTx

PROJECTION_NAME = "identity"

_FOLDED = (*PROJECT_EVENTS, *USER_EVENTS, *TOKEN_EVENTS)
_TAGS = {t.__struct_config__.tag for t in _FOLDED}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, _FOLDED))
assert not _TAGS & {t.__struct_config__.tag for t in NAME_EVENTS}

DDL = (
    """CREATE TABLE IF NOT EXISTS identity_projects (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL,
        description TEXT NOT NULL, enabled INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS identity_projects_name ON identity_projects (name)",
    """CREATE TABLE IF NOT EXISTS identity_users (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL,
        password_hash TEXT, default_project_id TEXT, enabled INTEGER NOT NULL,
        email TEXT, description TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS identity_users_name ON identity_users (name)",
    """CREATE TABLE IF NOT EXISTS identity_assignments (
        user_id TEXT NOT NULL, project_id TEXT NOT NULL, role_id TEXT NOT NULL,
        PRIMARY KEY (user_id, project_id, role_id))""",
    """CREATE INDEX IF NOT EXISTS identity_assignments_project
        ON identity_assignments (project_id)""",
    """CREATE TABLE IF NOT EXISTS identity_tokens (
        token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, project_id TEXT,
        expires_at TEXT NOT NULL, document TEXT NOT NULL, revoked INTEGER NOT NULL)""",
)
DROP = (
    "DROP TABLE IF EXISTS identity_projects",
    "DROP TABLE IF EXISTS identity_users",
    "DROP TABLE IF EXISTS identity_assignments",
    "DROP TABLE IF EXISTS identity_tokens",
)

_UPSERT_PROJECT = """
INSERT INTO identity_projects (id, name, domain_id, description, enabled)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description,
    enabled = excluded.enabled"""
_UPSERT_USER = """
INSERT INTO identity_users (id, name, domain_id, password_hash, default_project_id, enabled,
    email, description)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, password_hash = excluded.password_hash,
    default_project_id = excluded.default_project_id, enabled = excluded.enabled,
    email = excluded.email, description = excluded.description"""
_UPDATE_USER = """
UPDATE identity_users SET name = $2, default_project_id = $3, enabled = $4, email = $5,
    description = $6, password_hash = COALESCE($7, password_hash) WHERE id = $1"""
_GRANT = """
INSERT INTO identity_assignments (user_id, project_id, role_id) VALUES ($1, $2, $3)
ON CONFLICT (user_id, project_id, role_id) DO NOTHING"""
_TOKEN = """
INSERT INTO identity_tokens (token_hash, user_id, project_id, expires_at, document, revoked)
VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (token_hash) DO NOTHING"""


class AccessChanges:
    """How many times this process's identity projection has folded something that can
    take access away (a revoked token, a disabled or deleted user or project, a removed
    role: anything but a new token). Token caches keyed to it never outlive such a change
    they could have seen."""

    generation = 0

    @classmethod
    def bump(cls) -> None:
        cls.generation += 1


_GRANTS_NOTHING = frozenset({"token.issued"})


class IdentityProjection:
    """Folds identity events into ``identity_projects``, ``identity_users``,
    ``identity_assignments`` and ``identity_tokens``; ignores every other event."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    #: all it folds (a rebuild reads only these)
    types = tuple(sorted(map(str, _TAGS)))
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        changed = False
        for envelope in events:
            if envelope.type in _TAGS:
                changed = changed or envelope.type not in _GRANTS_NOTHING
                await _fold(tx, _DECODER.decode(envelope.data))
        if changed:  # before the commit: a read that could see the change sees the bump
            AccessChanges.bump()


async def _fold(tx: SqlTx, event: msgspec.Struct) -> None:
    match event:
        case ProjectCreated():
            await tx.execute(_UPSERT_PROJECT, event.project_id, event.name, event.domain_id,
                             event.description, int(event.enabled))
        case ProjectUpdated():
            await tx.execute(
                "UPDATE identity_projects SET name = $2, description = $3, enabled = $4 "
                "WHERE id = $1", event.project_id, event.name, event.description,
                int(event.enabled))
        case ProjectDeleted():
            await tx.execute("DELETE FROM identity_projects WHERE id = $1", event.project_id)
            await tx.execute("DELETE FROM identity_assignments WHERE project_id = $1",
                             event.project_id)
        case _:
            await _fold_user_or_token(tx, event)


async def _fold_user_or_token(tx: SqlTx, event: msgspec.Struct) -> None:
    match event:
        case UserCreated():
            await tx.execute(_UPSERT_USER, event.user_id, event.name, event.domain_id,
                             event.password_hash, event.default_project_id,
                             int(event.enabled), event.email, event.description)
        case UserUpdated():
            await tx.execute(_UPDATE_USER, event.user_id, event.name, event.default_project_id,
                             int(event.enabled), event.email, event.description,
                             event.password_hash)
        case UserDeleted():
            await tx.execute("DELETE FROM identity_users WHERE id = $1", event.user_id)
            await tx.execute("DELETE FROM identity_assignments WHERE user_id = $1",
                             event.user_id)
        case RoleGranted():
            await tx.execute(_GRANT, event.user_id, event.project_id, event.role_id)
        case RoleRevoked():
            await tx.execute(
                "DELETE FROM identity_assignments WHERE user_id = $1 AND project_id = $2 "
                "AND role_id = $3", event.user_id, event.project_id, event.role_id)
        case TokenIssued():
            await tx.execute(_TOKEN, event.token_hash, event.user_id, event.project_id,
                             event.expires_at, event.document)
        case TokenRevoked():
            await tx.execute("UPDATE identity_tokens SET revoked = 1 WHERE token_hash = $1",
                             event.token_hash)
