"""Server documents from the cache of encoded ones: a cached document is served only
while everything it was made from is unchanged (the row, the request's base URL, role and
microversion, the host's status, the server's volumes), and the cache stays bounded."""

from __future__ import annotations

import msgspec
from aiohttp.test_utils import make_mocked_request

from actors.instance_views import ServerView
from actors.volume_views import ServerVolumeView
from gateway.auth import AuthContext
from gateway.discovery import APIVersion
from gateway.middleware import API_VERSION
from gateway.servers import DocCache, DocMaker

ADMIN = AuthContext(user_id="u1", project_id="p1", roles=("admin",), token_hash="h",
                    document="")
MEMBER = AuthContext(user_id="u1", project_id="p1", roles=("member",), token_hash="h",
                     document="")


def row(**changes: object) -> ServerView:
    server = ServerView(
        id="5f0c2a2e-0000-4000-8000-000000000001", project_id="p1", user_id="u1", name="vm",
        status="ACTIVE", vm_state="active", task_state=None, power_state=1, host="host-1",
        flavor_id="1", image_id="img", metadata_json="{}", key_name=None,
        availability_zone=None, fault_json=None, created_at="2026-12-07T01:02:03.000000",
        updated_at="2026-12-07T01:02:04.000000", launched_at="2026-12-07T01:02:04.000000",
        terminated_at=None, deleted=False)
    return msgspec.structs.replace(server, **changes)


def maker(cache: DocCache, context: AuthContext = ADMIN, version: str = "2.16",
          host: str = "cloud.example:8080", up: bool = True,
          volumes: dict[str, list[ServerVolumeView]] | None = None) -> DocMaker:
    request = make_mocked_request("GET", "/compute/v2.1/servers/detail",
                                  headers={"Host": host})
    major, minor = version.split(".")
    request[API_VERSION] = APIVersion(int(major), int(minor))
    return DocMaker(request, context, {"host-1": up}, volumes, cache)


def doc(raw: msgspec.Raw) -> dict[str, object]:
    decoded: dict[str, object] = msgspec.json.decode(raw)
    return decoded


def test_an_unchanged_server_is_served_from_the_cache_as_made() -> None:
    cache = DocCache()
    first = maker(cache).encoded(row())
    again = maker(cache).encoded(row())  # another request, an equal row read afresh
    assert again is first and len(cache) == 1
    assert doc(first) == msgspec.json.decode(msgspec.json.encode(maker(DocCache(0)).server(row())))


def test_whatever_a_document_is_made_from_makes_another_document() -> None:
    cache = DocCache()
    base = doc(maker(cache).encoded(row()))
    assert base["status"] == "ACTIVE" and base["host_status"] == "UP"
    assert doc(maker(cache).encoded(row(status="SHUTOFF", vm_state="stopped",
                                        power_state=4)))["status"] == "SHUTOFF"
    assert doc(maker(cache, up=False).encoded(row()))["host_status"] == "DOWN"
    assert "host_status" not in doc(maker(cache, version="2.1").encoded(row()))
    assert "OS-EXT-SRV-ATTR:host" not in doc(maker(cache, context=MEMBER).encoded(row()))
    moved = doc(maker(cache, host="other.example").encoded(row()))
    assert str(moved["links"][0]["href"]).startswith("http://other.example/")  # type: ignore[index]
    volume = ServerVolumeView(server_id=row().id, volume_id="v1", attachment_id="a1",
                              device="/dev/vdb", state="attached", delete_on_termination=False,
                              tag=None, error=None)
    attached = doc(maker(cache, volumes={row().id: [volume]}).encoded(row()))
    assert attached["os-extended-volumes:volumes_attached"] == [
        {"id": "v1", "delete_on_termination": False}]
    assert len(cache) == 7
    # and the first document is still the first one's
    assert doc(maker(cache).encoded(row())) == base


def test_the_cache_keeps_at_most_its_size_dropping_the_oldest() -> None:
    cache = DocCache(size=3)
    made = [maker(cache).encoded(row(name=f"vm-{i}")) for i in range(5)]
    assert len(cache) == 3
    assert maker(cache).encoded(row(name="vm-4")) is made[4]
    assert maker(cache).encoded(row(name="vm-0")) is not made[0]  # dropped, made again
