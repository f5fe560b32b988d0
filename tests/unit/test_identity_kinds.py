"""Identity kinds as pure functions: what each command decides and how events fold."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from actors.identity import (
    IDENTITY_KINDS,
    PROJECT,
    ROLES,
    TOKEN,
    USER,
    ClaimName,
    CreateProject,
    CreateUser,
    DeleteProject,
    DeleteUser,
    GrantRole,
    IssueToken,
    NameClaimed,
    NameReleased,
    NameState,
    ProjectCreated,
    ProjectDeleted,
    ProjectState,
    ProjectUpdated,
    ReleaseName,
    RevokeRole,
    RevokeToken,
    RoleGranted,
    RoleRevoked,
    TokenIssued,
    TokenRevoked,
    TokenState,
    UpdateProject,
    UpdateUser,
    UserState,
    UserUpdated,
    decide_name,
    effective_roles,
    evolve_name,
)
from actors.kind import ActorKind, Context, Rejected
from actors.passwords import ScryptParams, hash_password_sync, verify_password_sync


def ctx(actor_id: str = "a1") -> Context:
    return Context(actor_id=actor_id, message_id="m1", correlation_id="req-1",
                   now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def run(kind: ActorKind[Any], *commands: msgspec.Struct, actor_id: str = "a1") -> Any:
    """Decide each command on the state folded so far; returns the final state."""
    state = kind.initial(actor_id)
    for command in commands:
        for event in kind.decide(state, command, ctx(actor_id)):
            state = kind.evolve(state, event)
    return state


def test_project_create_records_its_fields_and_repeat_is_a_no_op() -> None:
    """Creating a project records it; the identical create again (bootstrap) decides nothing."""
    state = ProjectState()
    (event,) = PROJECT.decide(state, CreateProject(name="p", description="d"), ctx())
    assert event == ProjectCreated(project_id="a1", name="p", domain_id="default",
                                   description="d", enabled=True)
    state = PROJECT.evolve(state, event)
    assert PROJECT.decide(state, CreateProject(name="p"), ctx()) == []
    with pytest.raises(Rejected) as refused:
        PROJECT.decide(state, CreateProject(name="other"), ctx())
    assert refused.value.code == "conflict"


def test_project_update_carries_every_field_and_delete_ends_it() -> None:
    """An update event holds the whole new project; after delete, updates are not_found."""
    state = run(PROJECT, CreateProject(name="p", description="d"))
    (event,) = PROJECT.decide(state, UpdateProject(enabled=False), ctx())
    assert event == ProjectUpdated(project_id="a1", name="p", description="d", enabled=False)
    state = run(PROJECT, CreateProject(name="p"), DeleteProject())
    assert state.deleted
    for command in (UpdateProject(name="q"), DeleteProject()):
        with pytest.raises(Rejected) as refused:
            PROJECT.decide(state, command, ctx())
        assert refused.value.code == "not_found"


def test_blank_or_overlong_names_are_bad_requests() -> None:
    """A project or user name must be 1 to 255 characters."""
    for bad in ("", "  ", "x" * 256):
        with pytest.raises(Rejected) as refused:
            PROJECT.decide(ProjectState(), CreateProject(name=bad), ctx())
        assert refused.value.code == "bad_request"
        with pytest.raises(Rejected):
            USER.decide(UserState(), CreateUser(name=bad), ctx())


def test_grants_are_idempotent_and_revoking_a_missing_one_is_not_found() -> None:
    """Granting twice records one assignment; revoking removes it; again is not_found."""
    member = ROLES["member"]
    state = run(USER, CreateUser(name="u"), GrantRole(project_id="p", role_id=member))
    assert state.grants == [("p", member)]
    assert USER.decide(state, GrantRole(project_id="p", role_id=member), ctx()) == []
    (event,) = USER.decide(state, RevokeRole(project_id="p", role_id=member), ctx())
    assert event == RoleRevoked(user_id="a1", project_id="p", role_id=member)
    state = USER.evolve(state, event)
    with pytest.raises(Rejected) as refused:
        USER.decide(state, RevokeRole(project_id="p", role_id=member), ctx())
    assert refused.value.code == "not_found"


def test_unknown_role_and_missing_user_are_not_found() -> None:
    """Only the three fixed roles can be granted, and only to an existing user."""
    state = run(USER, CreateUser(name="u"))
    with pytest.raises(Rejected) as refused:
        USER.decide(state, GrantRole(project_id="p", role_id="nope"), ctx())
    assert refused.value.code == "not_found"
    with pytest.raises(Rejected) as missing:
        USER.decide(UserState(), GrantRole(project_id="p", role_id=ROLES["admin"]), ctx())
    assert missing.value.code == "not_found"


def test_user_update_keeps_the_password_unless_a_new_hash_is_given() -> None:
    """An update without a password keeps the old hash; one with a hash replaces it."""
    state = run(USER, CreateUser(name="u", password_hash="h1"), UpdateUser(email="e@x"))
    assert (state.password_hash, state.email) == ("h1", "e@x")
    (event,) = USER.decide(state, UpdateUser(password_hash="h2"), ctx())
    assert isinstance(event, UserUpdated)
    assert USER.evolve(state, event).password_hash == "h2"
    assert run(USER, CreateUser(name="u"), DeleteUser()).deleted


def test_a_name_has_one_owner_until_it_releases_it() -> None:
    """A claim by another owner is a conflict; a release by a non-owner changes nothing."""
    state = NameState()
    (claimed,) = decide_name(state, ClaimName(owner="x"), ctx())
    state = evolve_name(state, claimed)
    assert claimed == NameClaimed(owner="x")
    assert decide_name(state, ClaimName(owner="x"), ctx()) == []
    with pytest.raises(Rejected) as refused:
        decide_name(state, ClaimName(owner="y"), ctx())
    assert refused.value.code == "conflict"
    assert decide_name(state, ReleaseName(owner="y"), ctx()) == []
    (released,) = decide_name(state, ReleaseName(owner="x"), ctx())
    assert released == NameReleased(owner="x")
    assert evolve_name(state, released).owner is None


def test_token_is_issued_once_and_revoked_once() -> None:
    """TokenIssued carries the document verbatim; revoke of an unknown token is not_found."""
    issue = IssueToken(document='{"token":{}}', user_id="u", project_id="p",
                       expires_at="2026-01-01T01:00:00.000000Z")
    (issued,) = TOKEN.decide(TokenState(), issue, ctx("h"))
    assert isinstance(issued, TokenIssued) and issued.document == issue.document
    state = TOKEN.evolve(TokenState(), issued)
    assert TOKEN.decide(state, issue, ctx("h")) == []
    (revoked,) = TOKEN.decide(state, RevokeToken(), ctx("h"))
    assert revoked == TokenRevoked(token_hash="h")
    assert TOKEN.decide(TOKEN.evolve(state, revoked), RevokeToken(), ctx("h")) == []
    with pytest.raises(Rejected):
        TOKEN.decide(TokenState(), RevokeToken(), ctx("h"))


def test_roles_imply_the_ones_below_them() -> None:
    """admin implies member implies reader (Keystone's defaults)."""
    assert effective_roles({"admin"}) == ["admin", "member", "reader"]
    assert effective_roles({"member"}) == ["member", "reader"]
    assert effective_roles({"reader", "bogus"}) == ["reader"]


def test_every_event_round_trips_through_the_kinds_codec() -> None:
    """Each kind's events and state encode and decode with msgspec (what the log stores)."""
    samples = [ProjectDeleted(project_id="p"), RoleGranted(user_id="u", project_id="p",
                                                            role_id="r")]
    for event in samples:
        assert msgspec.json.decode(msgspec.json.encode(event), type=type(event)) == event
    state = run(USER, CreateUser(name="u"), GrantRole(project_id="p", role_id=ROLES["reader"]))
    again = msgspec.json.decode(msgspec.json.encode(state), type=UserState)
    assert again.grants == [("p", ROLES["reader"])]
    assert len({k.name for k in IDENTITY_KINDS}) == 4


def test_password_hash_verifies_only_the_same_password() -> None:
    """scrypt hashes are salted (two hashes differ) and verify only the right password."""
    cheap = ScryptParams(n=2**4)
    first, second = hash_password_sync("pw", cheap), hash_password_sync("pw", cheap)
    assert first != second and first.startswith("scrypt$16$8$1$")
    assert verify_password_sync("pw", first) and not verify_password_sync("nope", first)
    assert not verify_password_sync("pw", "garbage")
