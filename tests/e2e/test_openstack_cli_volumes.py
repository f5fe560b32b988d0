"""The real `openstack` CLI and openstacksdk drive volumes end to end, against `orrery up`
(two compute hosts, one storage host on qemu-img files) and against the multi-process
deployment (PostgreSQL + RabbitMQ, hostd on libvirt test:///default, ``orrery storaged``
on qemu-img files): one scenario, both deployments."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import openstack
import openstack.config

from bus.routing import Names
from tests.e2e.test_openstack_cli_identity import OPENSTACK
from tests.e2e.test_openstack_cli_servers import Os, _wait_hosts_up, up
from tests.support.deployment import deployment

__all__ = ["up"]  # the fixture, used by name below

IMAGE_BYTES = 256 * 1024


def _wait_volume(cli: Os, volume: str, status: str, timeout: float = 45.0) -> dict[str, Any]:
    """Poll `volume show` until ``status`` (failing at once on error)."""
    deadline = time.monotonic() + timeout
    while True:
        shown: dict[str, Any] = cli.json("orrery", "volume", "show", volume)
        if shown["status"] == status:
            return shown
        assert shown["status"] != "error", f"volume went to error: {shown}"
        assert time.monotonic() < deadline, f"never {status}: {shown['status']}"
        time.sleep(0.3)


def _volume_file(storage: Path, volume_id: str) -> Path:
    return storage / f"volume-{volume_id}"


def scenario(cli: Os, storage: Path) -> None:
    """volume create/list/show, server add volume (in-use with the attachment), volume
    delete refused while in use, server remove volume (available), volume set --size,
    a volume from an image holding its bytes, volume delete (files gone), then the SDK's
    attach_volume/detach_volume(wait=True) with both sides agreeing."""
    disk = cli.home / "disk.raw"
    payload = os.urandom(IMAGE_BYTES)
    disk.write_bytes(payload)
    image = cli.json("orrery", "image", "create", "--file", str(disk), "--disk-format", "raw",
                     "--container-format", "bare", "vol-img")
    cli.json("orrery", "flavor", "create", "--ram", "128", "--disk", "1", "--vcpus", "1",
             "vol.tiny")
    server = cli.json("orrery", "server", "create", "--no-network", "--flavor", "vol.tiny",
                      "--image", "vol-img", "--wait", "vm1")
    assert server["status"] == "ACTIVE"

    services = cli.json("orrery", "volume", "service", "list")
    assert [(s["Binary"], s["State"]) for s in services] == [("cinder-volume", "up")]
    (pool,) = cli.json("orrery", "volume", "backend", "pool", "list", "--long")
    assert pool["Capabilities"]["total_capacity_gb"] > 0, pool

    made = cli.json("orrery", "volume", "create", "--size", "1", "v1")
    assert made["size"] == 1 and made["status"] in ("creating", "available")
    vid = made["id"]
    _wait_volume(cli, "v1", "available")
    listed = cli.json("orrery", "volume", "list")
    assert [(v["ID"], v["Name"], v["Status"], v["Size"]) for v in listed] == [
        (vid, "v1", "available", 1)]
    assert _volume_file(storage, vid).stat().st_size == 1 << 30

    cli.ok("orrery", "server", "add", "volume", "vm1", "v1")
    shown = _wait_volume(cli, "v1", "in-use")
    (att,) = shown["attachments"]
    assert (att["server_id"], att["device"]) == (server["id"], "/dev/vdb")
    assert att["host_name"] == server["OS-EXT-SRV-ATTR:host"]
    (row,) = cli.json("orrery", "volume", "list")
    assert row["Status"] == "in-use", row
    assert [a["server_id"] for a in row["Attached to"]] == [server["id"]]
    table = cli.ok("orrery", "volume", "list")  # the table names the server
    assert "Attached to vm1 on /dev/vdb" in table, table
    done = cli.run("orrery", "volume", "delete", "v1")
    assert done.returncode != 0 and "Invalid volume" in done.stderr, done.stderr
    assert _wait_volume(cli, "v1", "in-use")

    cli.ok("orrery", "server", "remove", "volume", "vm1", "v1")
    assert _wait_volume(cli, "v1", "available")["attachments"] == []

    cli.ok("orrery", "volume", "set", "--size", "2", "v1")
    deadline = time.monotonic() + 30
    while (shown := cli.json("orrery", "volume", "show", "v1"))["size"] != 2:
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    assert _volume_file(storage, vid).stat().st_size == 2 << 30
    done = cli.run("orrery", "volume", "set", "--size", "1", "v1")
    assert done.returncode != 0

    from_image = cli.json("orrery", "volume", "create", "--image", "vol-img", "--size", "1",
                          "v2")
    booted = _wait_volume(cli, from_image["id"], "available")
    assert booted["bootable"] in (True, "true")  # OSC shows the SDK's is_bootable
    assert booted["volume_image_metadata"]["image_id"] == image["id"]
    with open(_volume_file(storage, from_image["id"]), "rb") as fh:
        assert fh.read(IMAGE_BYTES) == payload
        assert fh.read(4096) == bytes(4096)

    _sdk_attach_detach(cli, server["id"], from_image["id"])

    cli.ok("orrery", "volume", "delete", "v1", "v2")
    deadline = time.monotonic() + 30
    while cli.json("orrery", "volume", "list"):
        assert time.monotonic() < deadline, "volumes never went"
        time.sleep(0.3)
    assert not _volume_file(storage, vid).exists()
    assert not _volume_file(storage, from_image["id"]).exists()
    cli.ok("orrery", "server", "delete", "--wait", "vm1")


def _sdk_attach_detach(cli: Os, server_id: str, volume_id: str) -> None:
    """The cloud layer's attach_volume(wait=True) returns once Cinder says in-use, and by
    then Nova lists the attachment; detach_volume(wait=True) returns on available, and by
    then Nova lists none."""
    config = openstack.config.OpenStackConfig(config_files=[str(cli.clouds)])
    conn = openstack.connection.Connection(config=config.get_one(cloud="orrery"))
    try:
        server = conn.compute.get_server(server_id)
        volume = conn.block_storage.get_volume(volume_id)
        attachment = conn.attach_volume(server, volume, wait=True, timeout=60)
        assert attachment.volume_id == volume_id
        assert conn.block_storage.get_volume(volume_id).status == "in-use"
        assert [a.volume_id for a in conn.compute.volume_attachments(server)] == [volume_id]
        conn.detach_volume(server, conn.block_storage.get_volume(volume_id), wait=True,
                           timeout=60)
        assert conn.block_storage.get_volume(volume_id).status == "available"
        assert list(conn.compute.volume_attachments(server)) == []
    finally:
        conn.close()


def test_openstack_cli_volumes_on_orrery_up(up: str, tmp_path: Path) -> None:
    """The scenario against `orrery up` (storage-1 on qemu-img files in its data dir)."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    home = tmp_path / "home"
    home.mkdir()
    cli = Os(up, home)
    _wait_hosts_up(cli, {"host-1", "host-2"})
    try:
        scenario(cli, tmp_path / "cloud" / "volumes" / "storage-1")
    except BaseException:
        print((tmp_path / "up.log").read_text(errors="replace")[-8000:])
        raise


def test_openstack_cli_volumes_on_the_multiprocess_deployment(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
) -> None:
    """The same scenario against relay + worker + api + hostd h1 (libvirt test:///default)
    + storaged s1 (qemu-img), on PostgreSQL and RabbitMQ."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path / "dep", hosts=("h1",), storage_hosts=("s1",)) as dep:
        home = tmp_path / "home"
        home.mkdir()
        try:
            scenario(Os(dep.url, home), dep.data_dir / "volumes" / "s1")
        except BaseException:
            print(dep.logs())
            raise
