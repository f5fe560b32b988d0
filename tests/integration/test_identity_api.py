"""Identity v3 over HTTP with the real runtime, on embedded and on PostgreSQL + RabbitMQ."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.client import ActorClient
from actors.identity import IDENTITY_KINDS, ROLES
from actors.runtime import ActorRuntime
from bus.routing import Names
from gateway.auth import TOKENS, TokenService
from orrery.bootstrap import (
    ADMIN_PROJECT_ID,
    ADMIN_USER_ID,
    bootstrap,
    identity_runner,
    make_cloud_app,
)
from orrery.wiring import event_types
from schemas import stream_name
from tests.support.backends import open_backends

ID = "/identity/v3"


class Cloud(msgspec.Struct, kw_only=True):
    http: Any  # TestClient
    store: Any
    admin: str  # an admin token

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"X-Auth-Token": token or self.admin}


def password_auth(user: str, password: str, project: str | None = "admin") -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


async def login(http: Any, user: str, password: str, project: str | None = "admin") -> str:
    resp = await http.post(f"{ID}/auth/tokens", json=password_auth(user, password, project))
    assert resp.status == 201, await resp.text()
    return str(resp.headers["X-Subject-Token"])


@pytest.fixture
async def cloud(backends: tuple[str, dict[str, Any]], bus_names: Names,
                tmp_path: Path) -> AsyncIterator[Cloud]:
    which, extra = backends
    async with open_backends(which, types=event_types(IDENTITY_KINDS), names=bus_names,
                             tmp_path=tmp_path, **extra) as (store, bus):
        runtime = ActorRuntime(store, bus, IDENTITY_KINDS)
        async with runtime, identity_runner(store):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="secret")
            app = make_cloud_app(store, client, ttl=3600)
            async with TestClient(TestServer(app)) as http:
                yield Cloud(http=http, store=store, admin=await login(http, "admin", "secret"))


async def test_password_auth_issues_a_scoped_token_with_roles_and_catalog(cloud: Cloud) -> None:
    """POST /v3/auth/tokens: 201, X-Subject-Token, the admin's roles and a RegionOne catalog."""
    resp = await cloud.http.post(f"{ID}/auth/tokens", json=password_auth("admin", "secret"))
    assert resp.status == 201
    token = (await resp.json())["token"]
    assert token["user"]["id"] == ADMIN_USER_ID and token["project"]["id"] == ADMIN_PROJECT_ID
    assert [r["name"] for r in token["roles"]] == ["admin", "member", "reader"]
    types = {s["type"]: s["endpoints"][0] for s in token["catalog"]}
    assert set(types) == {"identity", "compute", "image", "network", "block-storage",
                          "events"}
    assert all(e["region_id"] == e["region"] == "RegionOne" for e in types.values())
    assert types["compute"]["url"].endswith("/compute/v2.1")


async def test_validation_returns_exactly_the_issued_body(cloud: Cloud) -> None:
    """GET /v3/auth/tokens answers the very bytes that were issued; HEAD answers 200."""
    resp = await cloud.http.post(f"{ID}/auth/tokens", json=password_auth("admin", "secret"))
    issued, token = await resp.read(), resp.headers["X-Subject-Token"]
    got = await cloud.http.get(f"{ID}/auth/tokens",
                               headers={**cloud.h(), "X-Subject-Token": token})
    assert got.status == 200 and await got.read() == issued
    assert got.headers["X-Subject-Token"] == token
    head = await cloud.http.head(f"{ID}/auth/tokens",
                                 headers={**cloud.h(), "X-Subject-Token": token})
    assert head.status == 200


async def test_wrong_password_is_401_with_keystones_body_and_no_event(cloud: Cloud) -> None:
    """A bad password (or an unknown user) gets Keystone's 401 body and issues nothing."""
    head = await cloud.store.head()
    for user, password in (("admin", "wrong"), ("nobody", "secret")):
        resp = await cloud.http.post(f"{ID}/auth/tokens", json=password_auth(user, password))
        assert resp.status == 401
        assert (await resp.json())["error"] == {
            "code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}
        assert resp.headers["WWW-Authenticate"].startswith("Keystone uri=")
    assert await cloud.store.head() == head


async def test_revoked_token_is_refused_everywhere(cloud: Cloud) -> None:
    """DELETE /v3/auth/tokens: 204; the token then answers 404 to validation, 401 in use,
    and another token service on the same store (another API process) agrees."""
    token = await login(cloud.http, "admin", "secret")
    headers = {**cloud.h(), "X-Subject-Token": token}
    assert (await cloud.http.delete(f"{ID}/auth/tokens", headers=headers)).status == 204
    assert (await cloud.http.get(f"{ID}/auth/tokens", headers=headers)).status == 404
    assert (await cloud.http.get(f"{ID}/projects", headers=cloud.h(token))).status == 401
    mine = cloud.http.app[TOKENS]
    other = TokenService(cloud.store, mine.client)
    assert await other.validate(token) is None
    assert await other.validate(cloud.admin) is not None


async def test_expired_token_is_refused(cloud: Cloud) -> None:
    """A token past its expires_at no longer authenticates."""
    tokens = cloud.http.app[TOKENS]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3601)
    assert await tokens.validate(cloud.admin) is not None
    assert await tokens.validate(cloud.admin, now=later) is None


async def test_no_token_is_401(cloud: Cloud) -> None:
    """The admin API needs a token; discovery does not."""
    assert (await cloud.http.get(f"{ID}/projects")).status == 401
    assert (await cloud.http.get("/identity")).status == 300


async def test_project_create_list_show_update_delete(cloud: Cloud) -> None:
    """A created project is read back at once, found by name, renamed, then gone (404)."""
    resp = await cloud.http.post(f"{ID}/projects", headers=cloud.h(),
                                 json={"project": {"name": "p1", "description": "d"}})
    assert resp.status == 201
    pid = (await resp.json())["project"]["id"]
    listed = await (await cloud.http.get(f"{ID}/projects?name=p1", headers=cloud.h())).json()
    assert [p["id"] for p in listed["projects"]] == [pid]
    resp = await cloud.http.patch(f"{ID}/projects/{pid}", headers=cloud.h(),
                                  json={"project": {"name": "p2"}})
    assert (await resp.json())["project"]["name"] == "p2"
    again = await cloud.http.post(f"{ID}/projects", headers=cloud.h(),
                                  json={"project": {"name": "p1"}})
    assert again.status == 201  # the old name was released by the rename
    assert (await cloud.http.delete(f"{ID}/projects/{pid}", headers=cloud.h())).status == 204
    assert (await cloud.http.get(f"{ID}/projects/{pid}", headers=cloud.h())).status == 404


async def test_duplicate_project_name_is_409_and_appends_no_project(cloud: Cloud) -> None:
    """Two projects may not share a name in a domain: 409 with Keystone's body."""
    body = {"project": {"name": "dup"}}
    assert (await cloud.http.post(f"{ID}/projects", headers=cloud.h(), json=body)).status == 201
    resp = await cloud.http.post(f"{ID}/projects", headers=cloud.h(), json=body)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == 409
    listed = await (await cloud.http.get(f"{ID}/projects?name=dup", headers=cloud.h())).json()
    assert len(listed["projects"]) == 1


async def test_bad_input_is_400_and_unknown_ids_404(cloud: Cloud) -> None:
    """Malformed JSON and a missing name are 400; unknown project, user or role 404."""
    bad = await cloud.http.post(f"{ID}/projects", headers=cloud.h(), data=b"{nope")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == 400
    nameless = await cloud.http.post(f"{ID}/projects", headers=cloud.h(), json={"project": {}})
    assert nameless.status == 400
    for path in ("projects/x", "users/x", "roles/x", "domains/x"):
        assert (await cloud.http.get(f"{ID}/{path}", headers=cloud.h())).status == 404
    grant = f"{ID}/projects/{ADMIN_PROJECT_ID}/users/{ADMIN_USER_ID}/roles/nope"
    assert (await cloud.http.put(grant, headers=cloud.h())).status == 404


async def test_second_user_logs_in_with_its_own_role_on_its_project(cloud: Cloud) -> None:
    """A user created with a password and given member on a project logs in scoped to it,
    sees its project, not the others (404), and cannot use the admin API (403)."""
    pid = (await (await cloud.http.post(f"{ID}/projects", headers=cloud.h(), json={
        "project": {"name": "team"}})).json())["project"]["id"]
    resp = await cloud.http.post(f"{ID}/users", headers=cloud.h(), json={
        "user": {"name": "alice", "password": "pw-alice", "default_project_id": pid}})
    assert resp.status == 201
    uid = (await resp.json())["user"]["id"]
    # no role yet: authentication works, scoping to the project does not
    denied = await cloud.http.post(f"{ID}/auth/tokens", json=password_auth("alice", "pw-alice",
                                                                          "team"))
    assert denied.status == 401
    grant = f"{ID}/projects/{pid}/users/{uid}/roles/{ROLES['member']}"
    assert (await cloud.http.put(grant, headers=cloud.h())).status == 204
    assert (await cloud.http.head(grant, headers=cloud.h())).status == 204
    token = await login(cloud.http, "alice", "pw-alice", "team")
    assert (await cloud.http.get(f"{ID}/projects/{pid}", headers=cloud.h(token))).status == 200
    other = await cloud.http.get(f"{ID}/projects/{ADMIN_PROJECT_ID}", headers=cloud.h(token))
    assert other.status == 404
    write = await cloud.http.post(f"{ID}/projects", headers=cloud.h(token),
                                  json={"project": {"name": "nope"}})
    assert write.status == 403
    listed = await (await cloud.http.get(
        f"{ID}/role_assignments?user.id={uid}&include_names=True", headers=cloud.h())).json()
    (assignment,) = listed["role_assignments"]
    assert assignment["role"]["name"] == "member"
    assert assignment["scope"]["project"]["name"] == "team"


async def test_revoking_the_role_ends_the_users_tokens(cloud: Cloud) -> None:
    """A token stops authorising once its user's last role on the project is revoked."""
    pid = (await (await cloud.http.post(f"{ID}/projects", headers=cloud.h(), json={
        "project": {"name": "temp"}})).json())["project"]["id"]
    uid = (await (await cloud.http.post(f"{ID}/users", headers=cloud.h(), json={
        "user": {"name": "bob", "password": "pw-bob"}})).json())["user"]["id"]
    grant = f"{ID}/projects/{pid}/users/{uid}/roles/{ROLES['reader']}"
    await cloud.http.put(grant, headers=cloud.h())
    token = await login(cloud.http, "bob", "pw-bob", "temp")
    assert (await cloud.http.get(f"{ID}/projects/{pid}", headers=cloud.h(token))).status == 200
    assert (await cloud.http.delete(grant, headers=cloud.h())).status == 204
    assert (await cloud.http.get(f"{ID}/projects/{pid}", headers=cloud.h(token))).status == 401


async def test_bootstrap_again_appends_nothing(cloud: Cloud) -> None:
    """Re-running the bootstrap (every start does) is a no-op in the log."""
    head = await cloud.store.head()
    version = await cloud.store.stream_version(stream_name("user", ADMIN_USER_ID))
    client = cloud.http.app[TOKENS].client
    assert await bootstrap(cloud.store, client, password="other") is None
    assert await cloud.store.head() == head
    assert await cloud.store.stream_version(stream_name("user", ADMIN_USER_ID)) == version
    assert (await cloud.http.post(f"{ID}/auth/tokens",
                                  json=password_auth("admin", "secret"))).status == 201


async def test_deleted_user_loses_its_tokens_and_its_name_is_free_again(cloud: Cloud) -> None:
    """A duplicate user name is 409; deleting the user ends its tokens (401) and frees
    the name for a new user."""
    body = {"user": {"name": "carol", "password": "pw-carol",
                     "default_project_id": ADMIN_PROJECT_ID}}
    uid = (await (await cloud.http.post(f"{ID}/users", headers=cloud.h(),
                                        json=body)).json())["user"]["id"]
    assert (await cloud.http.post(f"{ID}/users", headers=cloud.h(), json=body)).status == 409
    await cloud.http.put(f"{ID}/projects/{ADMIN_PROJECT_ID}/users/{uid}/roles/{ROLES['reader']}",
                         headers=cloud.h())
    token = await login(cloud.http, "carol", "pw-carol")
    assert (await cloud.http.get(f"{ID}/users/{uid}", headers=cloud.h(token))).status == 200
    assert (await cloud.http.delete(f"{ID}/users/{uid}", headers=cloud.h())).status == 204
    assert (await cloud.http.get(f"{ID}/users/{uid}", headers=cloud.h(token))).status == 401
    assert (await cloud.http.post(f"{ID}/users", headers=cloud.h(), json=body)).status == 201
