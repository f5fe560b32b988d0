"""The multi-process deployment on one machine, as the README shows it, for tests.

`deployment` starts real processes on PostgreSQL + RabbitMQ (a fresh database and bus
prefix from the caller): ``orrery relay``, ``orrery worker`` (one or more), ``orrery hostd``
per host on libvirt ``test:///default`` (each process has its own), ``orrery storaged``
per storage host (qemu-img files in ``<data>/volumes/<host>``), then ``orrery api``;
waits until the API answers tokens and every host and storage host is listed up; writes
a clouds.yaml for cloud ``orrery`` (admin). It yields a `Deployment` that starts, kills
(SIGKILL) and restarts the parts and talks to the API over plain HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orrery.clouds import write_clouds_yaml
from tests.support.backends import eventually
from tests.support.procs import ROOT
from tests.support.serve import free_port

ADMIN_PASSWORD = "s3cret-admin"
SERVERS = "/compute/v2.1/servers"


@functools.cache
def hostd_options() -> frozenset[str]:
    """The long options ``orrery hostd`` accepts (it grows while the issue is built)."""
    out = subprocess.run([sys.executable, "-m", "orrery.cli", "hostd", "--help"], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return frozenset(w.strip("[],") for w in out.split() if w.startswith(("--", "[--")))


@dataclass
class Deployment:
    """Running processes of one deployment; ``url`` is the API's base URL."""

    url: str
    clouds: Path
    data_dir: Path
    env: dict[str, str]
    log_dir: Path
    hypervisor: str = "libvirt"
    heartbeat_every: float = 1.0
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    hostds: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    storageds: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    # -- processes ---------------------------------------------------------------------------

    def start(self, role: str, *args: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``orrery <role> <args>`` (``env`` on top of the deployment's), its output in
        ``<log_dir>/<role>-<n>.log``."""
        name = f"{role}-{len(self.running) + 1}"
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its copy
            proc = subprocess.Popen([sys.executable, "-m", "orrery.cli", role, *args],
                                    env={**self.env, **(env or {})}, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.running.append((name, proc))
        return proc

    def start_hostd(self, host: str) -> subprocess.Popen[bytes]:
        """``orrery hostd --host <host>`` on this deployment's hypervisor."""
        args = ["--host", host, "--hypervisor", self.hypervisor,
                "--heartbeat-every", str(self.heartbeat_every)]
        if self.hypervisor == "libvirt":
            args += ["--libvirt-uri", "test:///default"]
        if "--images-from" in hostd_options():  # the image store's directory, same machine
            args += ["--images-from", str(self.data_dir / "images")]
        self.hostds[host] = self.start("hostd", *args)
        return self.hostds[host]

    def start_storaged(self, host: str) -> subprocess.Popen[bytes]:
        """``orrery storaged --host <host>`` on qemu-img files in ``<data>/volumes/<host>``
        (20 GiB offered), images from the image store's directory."""
        self.storageds[host] = self.start(
            "storaged", "--host", host, "--heartbeat-every", str(self.heartbeat_every),
            "--storage-dir", str(self.data_dir / "volumes" / host), "--capacity-gb", "20",
            "--images-from", str(self.data_dir / "images"))
        return self.storageds[host]

    def storage_hosts(self) -> dict[str, str]:
        """Each storage host's state (Cinder's os-services)."""
        status, body = self.request("GET", "/volume/v3/os-services")
        assert status == 200, body
        return {s["host"].split("@")[0]: s["state"] for s in body["services"]}

    def wait_storage(self, hosts: dict[str, str], timeout: float = 30.0) -> None:
        """Until each storage host in ``hosts`` has the wanted state."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.storage_hosts()
            if all(states.get(h) == want for h, want in hosts.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"storage hosts never {hosts}: {states}\n{self.logs()}")
            time.sleep(0.2)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no clean shutdown, exactly like a crash."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for n, p in self.running if n.startswith("worker-") and p.poll() is None]

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"== {p.name}\n" + p.read_text(errors="replace")[-tail:]
                         for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for _, proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # -- the API over HTTP --------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request to ``url + path`` (the admin's token unless given); status and the
        decoded JSON body (None when empty or not JSON)."""
        h = {"X-Auth-Token": token or self.token(), **(headers or {})}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def token(self) -> str:
        """The admin's token on the admin project (cached)."""
        if self._token is None:
            self._token = issue_token(self.url, "admin", ADMIN_PASSWORD, "admin")
        return self._token

    def hypervisors(self) -> list[dict[str, Any]]:
        """``os-hypervisors/detail`` at 2.1, whose documents carry the usage counters."""
        status, body = self.request("GET", "/compute/v2.1/os-hypervisors/detail")
        assert status == 200, body
        return list(body["hypervisors"])

    def wait_hosts(self, hosts: dict[str, str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until each host in ``hosts`` has the wanted state ("up"/"down"); the listing."""
        deadline = time.monotonic() + timeout
        while True:
            listed = self.hypervisors()
            states = {str(h["hypervisor_hostname"]): h["state"] for h in listed}
            if all(states.get(name) == want for name, want in hosts.items()):
                return listed
            if time.monotonic() > deadline:
                raise AssertionError(f"hosts never {hosts}: {states}\n{self.logs()}")
            time.sleep(0.2)


def issue_token(url: str, user: str, password: str, project: str) -> str:
    """A project-scoped token (names in the Default domain)."""
    auth = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}
    req = urllib.request.Request(f"{url}/identity/v3/auth/tokens", method="POST",
                                 data=json.dumps({"auth": auth}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["X-Subject-Token"])


def _wait_api(dep: Deployment, api: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            dep.token()
            return
        except (OSError, urllib.error.HTTPError):
            assert api.poll() is None, f"orrery api exited\n{dep.logs()}"
            if time.monotonic() > deadline:
                raise AssertionError(f"the API never issued a token\n{dep.logs()}") from None
            time.sleep(0.2)


@contextmanager
def deployment(
    *, pg_dsn: str, amqp_url: str, prefix: str, tmp_path: Path, workers: int = 1,
    hosts: tuple[str, ...] = ("h1", "h2"), hypervisor: str = "libvirt", shards: int = 4,
    extra_env: dict[str, str] | None = None, heartbeat_every: float = 1.0,
    storage_hosts: tuple[str, ...] = (),
) -> Iterator[Deployment]:
    """Relay, ``workers`` workers, a hostd per host, a storaged per storage host and the
    API, running until exit."""
    port = free_port()
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ORRERY_") or k in ("ORRERY_REQUIRE_SERVICES",)}
    env.update(
        ORRERY_DATABASE_URL=pg_dsn, ORRERY_AMQP_URL=amqp_url, ORRERY_BUS_PREFIX=prefix,
        ORRERY_SHARDS=str(shards), ORRERY_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ORRERY_API_HOST="127.0.0.1", ORRERY_API_PORT=str(port), ORRERY_DATA_DIR=str(data_dir),
        ORRERY_LOG_FORMAT="json", ORRERY_HOST_DOWN_AFTER="30",
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    dep = Deployment(url=url, clouds=write_clouds_yaml(tmp_path, url, ADMIN_PASSWORD),
                     data_dir=data_dir, env=env, log_dir=log_dir, hypervisor=hypervisor,
                     heartbeat_every=heartbeat_every)
    try:
        dep.start("relay")
        for _ in range(workers):
            dep.start("worker")
        for host in hosts:
            dep.start_hostd(host)
        for host in storage_hosts:
            dep.start_storaged(host)
        api = dep.start("api")
        _wait_api(dep, api, timeout=40)
        dep.wait_hosts({h: "up" for h in hosts}, timeout=40)
        if storage_hosts:
            dep.wait_storage({h: "up" for h in storage_hosts}, timeout=40)
        yield dep
    except BaseException:
        print(dep.logs())
        raise
    finally:
        dep.stop_all()


class Api:
    """The admin talking to a deployment's API (at ``url``, else the deployment's) with
    aiohttp: images, boots, server and host listings, waits."""

    def __init__(self, dep: Deployment, http: aiohttp.ClientSession,
                 url: str | None = None) -> None:
        self.dep, self.http, self.url = dep, http, url or dep.url
        self.headers = {"X-Auth-Token": dep.token()}

    async def call(self, method: str, path: str, body: Any = None,
                   expect: tuple[int, ...] = (200,)) -> Any:
        async with self.http.request(method, self.url + path, json=body,
                                     headers=self.headers) as resp:
            text = await resp.text()
            assert resp.status in expect, f"{method} {path}: {resp.status} {text}"
            return await resp.json() if text else None

    async def image(self) -> str:
        made = await self.call("POST", "/image/v2/images", {
            "name": "faults", "disk_format": "raw", "container_format": "bare"},
            expect=(201,))
        async with self.http.put(f"{self.url}/image/v2/images/{made['id']}/file",
                                 data=os.urandom(4096), headers={
                                     **self.headers,
                                     "Content-Type": "application/octet-stream"}) as resp:
            assert resp.status == 204, await resp.text()
        return str(made["id"])

    async def boot(self, name: str, image: str, flavor: str = "1") -> str:
        made = await self.call("POST", SERVERS, {"server": {
            "name": name, "imageRef": image, "flavorRef": flavor}}, expect=(202,))
        return str(made["server"]["id"])

    async def servers(self) -> dict[str, dict[str, Any]]:
        found = await self.call("GET", f"{SERVERS}/detail")
        return {s["id"]: s for s in found["servers"]}

    async def hosts(self) -> dict[str, dict[str, Any]]:
        found = await self.call("GET", "/compute/v2.1/os-hypervisors/detail")
        return {h["hypervisor_hostname"]: h for h in found["hypervisors"]}

    async def wait_settled(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Until none of ``ids`` is in BUILD (or a transitional task); the servers."""
        deadline = time.monotonic() + timeout
        while True:
            servers = await self.servers()
            pending = [i for i in ids if servers.get(i, {}).get("status") not in
                       ("ACTIVE", "ERROR", "SHUTOFF")]
            if not pending:
                return servers
            if time.monotonic() > deadline:
                stuck = {i: servers.get(i, {}).get("status") for i in pending}
                raise AssertionError(f"{len(pending)} servers not settled: {stuck}")
            await asyncio.sleep(0.3)

    async def wait_status(self, sid: str, status: str, timeout: float = 30.0) -> None:
        async def reached() -> bool:
            shown = await self.call("GET", f"{SERVERS}/{sid}")
            return bool(shown["server"]["status"] == status)
        await eventually(reached, timeout=timeout, what=f"{sid} {status}")
