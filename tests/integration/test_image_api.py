"""Image v2 over HTTP with the real runtime and a directory image store, on both backends."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.client import ActorClient
from actors.identity import IDENTITY_KINDS, ROLES
from actors.image import IMAGE
from actors.image_views import ImageProjection
from actors.runtime import ActorRuntime
from bus.routing import Names
from gateway.image import ImageApi
from gateway.image_docs import PATCH_MEDIA_TYPE
from orrery.bootstrap import bootstrap, identity_runner, make_cloud_app
from orrery.wiring import event_types
from store.blobs import DirectoryImageStore
from store.projections import ProjectionRunner
from tests.integration.test_identity_api import login
from tests.support.backends import open_backends

IMG = "/image/v2/images"
ID = "/identity/v3"
KINDS = (*IDENTITY_KINDS, IMAGE)
PATCH = {"Content-Type": PATCH_MEDIA_TYPE}


class Cloud(msgspec.Struct, kw_only=True):
    http: Any  # TestClient
    store: Any
    images: DirectoryImageStore
    admin: str

    def h(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"X-Auth-Token": token or self.admin, **extra}

    async def user_in(self, project: str, role: str) -> str:
        """A token of a new user holding ``role`` on a new project named ``project``."""
        resp = await self.http.post(f"{ID}/projects", headers=self.h(),
                                    json={"project": {"name": project}})
        pid = (await resp.json())["project"]["id"]
        resp = await self.http.post(f"{ID}/users", headers=self.h(), json={
            "user": {"name": f"{project}-{role}", "password": "pw", "default_project_id": pid}})
        uid = (await resp.json())["user"]["id"]
        resp = await self.http.put(f"{ID}/projects/{pid}/users/{uid}/roles/{ROLES[role]}",
                                   headers=self.h())
        assert resp.status == 204
        return await login(self.http, f"{project}-{role}", "pw", project)

    async def create(self, token: str | None = None, **body: Any) -> dict[str, Any]:
        resp = await self.http.post(IMG, headers=self.h(token), json=body)
        assert resp.status == 201, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


@pytest.fixture
async def cloud(backends: tuple[str, dict[str, Any]], bus_names: Names,
                tmp_path: Path) -> AsyncIterator[Cloud]:
    which, extra = backends
    async with open_backends(which, types=event_types(KINDS), names=bus_names,
                             tmp_path=tmp_path, **extra) as (store, bus):
        images = DirectoryImageStore(tmp_path / "images")
        async with ActorRuntime(store, bus, KINDS), identity_runner(store), \
                ProjectionRunner(store, ImageProjection()):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="secret")
            api = ImageApi(store, client, images, size_cap=1 << 20)
            app = make_cloud_app(store, client, apis=[api], ttl=3600)
            async with TestClient(TestServer(app)) as http:
                admin = await login(http, "admin", "secret")
                yield Cloud(http=http, store=store, images=images, admin=admin)


async def test_create_upload_download_round_trip(cloud: Cloud) -> None:
    """POST 201 queued with extra properties; PUT file 204 makes it active with size, md5
    and sha512; GET file streams the same bytes with Content-Length and Content-MD5."""
    data = os.urandom(300_000)
    image = await cloud.create(name="cirros", disk_format="raw", container_format="bare",
                               **{"owner_specified.openstack.md5": "", "distro": "cirros"})
    assert image["status"] == "queued" and image["distro"] == "cirros"
    assert image["size"] is None and image["self"] == f"/v2/images/{image['id']}"
    resp = await cloud.http.put(f"{IMG}/{image['id']}/file", data=data, headers=cloud.h(
        **{"Content-Type": "application/octet-stream"}))
    assert resp.status == 204
    shown = await (await cloud.http.get(f"{IMG}/{image['id']}", headers=cloud.h())).json()
    assert (shown["status"], shown["size"]) == ("active", len(data))
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == (
        "sha512", hashlib.sha512(data).hexdigest())
    got = await cloud.http.get(f"{IMG}/{image['id']}/file", headers=cloud.h())
    assert got.status == 200 and await got.read() == data
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Content-MD5"] == shown["checksum"]
    again = await cloud.http.put(f"{IMG}/{image['id']}/file", data=b"x", headers=cloud.h())
    assert again.status == 409


async def test_upload_over_the_cap_is_413_and_the_image_stays_queued(cloud: Cloud) -> None:
    """A failed upload (past the size cap) answers 413, keeps no data and leaves the image
    queued, so a second PUT succeeds; an image with no data downloads as 204."""
    image = await cloud.create(name="big")
    too_big = await cloud.http.put(f"{IMG}/{image['id']}/file", data=b"x" * (2 << 20),
                                   headers=cloud.h())
    assert too_big.status == 413
    shown = await (await cloud.http.get(f"{IMG}/{image['id']}", headers=cloud.h())).json()
    assert shown["status"] == "queued"
    empty = await cloud.http.get(f"{IMG}/{image['id']}/file", headers=cloud.h())
    assert empty.status == 204
    ok = await cloud.http.put(f"{IMG}/{image['id']}/file", data=b"small", headers=cloud.h())
    assert ok.status == 204


async def test_json_patch_replaces_adds_and_removes(cloud: Cloud) -> None:
    """PATCH with Glance's patch media type: replace name, add and remove a property;
    another media type is 415, a read-only attribute 403, a missing property 409."""
    image = await cloud.create(name="old", os_distro="cirros")
    url = f"{IMG}/{image['id']}"
    ops = [{"op": "replace", "path": "/name", "value": "new"},
           {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
           {"op": "remove", "path": "/os_distro"}]
    resp = await cloud.http.patch(url, headers=cloud.h(**PATCH), json=ops)
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert (doc["name"], doc["hw_disk_bus"]) == ("new", "virtio") and "os_distro" not in doc
    head = await cloud.store.head()
    wrong = await cloud.http.patch(url, headers=cloud.h(), json=ops)
    assert wrong.status == 415
    for bad, status in (({"op": "replace", "path": "/status", "value": "active"}, 403),
                        ({"op": "remove", "path": "/nope"}, 409)):
        resp = await cloud.http.patch(url, headers=cloud.h(**PATCH), json=[bad])
        assert resp.status == status
    assert await cloud.store.head() == head


async def test_list_filters_and_pages(cloud: Cloud) -> None:
    """GET /v2/images filters by name, id=in:, status; limit/marker pages newest first and
    the last page has no ``next``."""
    made = [await cloud.create(name=f"img{i}") for i in range(3)]
    ids = [m["id"] for m in made]

    async def listing(query: str) -> dict[str, Any]:
        resp = await cloud.http.get(f"{IMG}?{query}", headers=cloud.h())
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc

    assert [i["id"] for i in (await listing("name=img1"))["images"]] == [ids[1]]
    both = await listing(f"id=in:{ids[0]},{ids[2]}")
    assert {i["id"] for i in both["images"]} == {ids[0], ids[2]}
    assert len((await listing("status=queued"))["images"]) == 3
    assert (await listing("status=active"))["images"] == []
    first = await listing("limit=2")
    assert len(first["images"]) == 2 and first["next"].startswith("/v2/images?")
    rest = await listing(first["next"].split("?", 1)[1])
    seen = [i["id"] for i in first["images"] + rest["images"]]
    assert sorted(seen) == sorted(ids) and "next" not in rest


async def test_private_images_stay_in_their_project(cloud: Cloud) -> None:
    """A member of another project gets 404 for a private image and does not list it; a
    public image is visible to it but it cannot change it (403); a reader cannot create."""
    private = await cloud.create(name="mine")
    public = await cloud.create(name="shared", visibility="public")
    other = await cloud.user_in("other", "member")
    assert (await cloud.http.get(f"{IMG}/{private['id']}", headers=cloud.h(other))).status == 404
    listed = await (await cloud.http.get(IMG, headers=cloud.h(other))).json()
    assert [i["id"] for i in listed["images"]] == [public["id"]]
    patch = await cloud.http.patch(f"{IMG}/{public['id']}", headers=cloud.h(other, **PATCH),
                                   json=[{"op": "replace", "path": "/name", "value": "x"}])
    assert patch.status == 403
    delete = await cloud.http.delete(f"{IMG}/{private['id']}", headers=cloud.h(other))
    assert delete.status == 404
    reader = await cloud.user_in("readers", "reader")
    resp = await cloud.http.post(IMG, headers=cloud.h(reader), json={"name": "no"})
    assert resp.status == 403
    own = await cloud.create(other, name="theirs")
    assert own["owner"] != private["owner"]
    published = await cloud.http.post(IMG, headers=cloud.h(other), json={"visibility": "public"})
    assert published.status == 403


async def test_delete_removes_record_and_data_unless_protected(cloud: Cloud) -> None:
    """DELETE of a protected image is 403 and appends nothing; unprotected, DELETE is 204,
    the image is then 404 and its data is gone from the store."""
    image = await cloud.create(name="p", protected=True)
    url = f"{IMG}/{image['id']}"
    assert (await cloud.http.put(f"{url}/file", data=b"abc", headers=cloud.h())).status == 204
    head = await cloud.store.head()
    assert (await cloud.http.delete(url, headers=cloud.h())).status == 403
    assert await cloud.store.head() == head
    unprotect = [{"op": "replace", "path": "/protected", "value": False}]
    assert (await cloud.http.patch(url, headers=cloud.h(**PATCH), json=unprotect)).status == 200
    assert (await cloud.http.delete(url, headers=cloud.h())).status == 204
    assert (await cloud.http.get(url, headers=cloud.h())).status == 404
    assert not (cloud.images.root / image["id"]).exists()


async def test_bad_create_bodies_are_refused_without_events(cloud: Cloud) -> None:
    """Malformed JSON 400, a read-only attribute 403, a non-string property 400, an unknown
    disk format 400, no token 401: none of them appends an event."""
    head = await cloud.store.head()
    raw = await cloud.http.post(IMG, headers=cloud.h(), data=b"{nope")
    assert raw.status == 400
    for body, status in (({"status": "active"}, 403), ({"k": 1}, 400),
                         ({"disk_format": "floppy"}, 400)):
        resp = await cloud.http.post(IMG, headers=cloud.h(), json=body)
        assert resp.status == status, body
    assert (await cloud.http.post(IMG, json={"name": "x"})).status == 401
    assert await cloud.store.head() == head
