"""hostd against the real host actor: spawns through the image cache, lifecycle
observations and reconciliation reaching the instance shard queues, orphans removed only
after their grace. Fake and libvirt (test:///default) hypervisors; embedded and real bus."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from actors.client import ActorClient, command_envelope
from actors.host import HOST_EVENTS, Claim, make_host_kind
from actors.runtime import ActorRuntime
from bus.memory import MemoryBus
from bus.protocol import Bus, Delivery
from bus.replies import actor_address
from bus.routing import HOST_KIND, Names
from hostd.daemon import HostDaemon
from hostd.fake import FakeHypervisor
from hostd.hypervisor import Hypervisor
from hostd.image_cache import Fetch, ImageCache
from hostd.image_fetch import directory_fetch
from hostd.libvirt_driver import LibvirtHypervisor
from hostd.reconcile import Reconciler
from schemas import COMMAND_DECODER, SYSTEM_EVENTS, CommandEnvelope, Reply
from schemas.envelope import REPLY_DECODER
from schemas.hostd import (
    INSTANCE_ACTOR_KIND,
    Capacity,
    DomainSpec,
    DomainState,
    ImageRef,
    InstanceObserved,
    SpawnDomain,
)
from store.blobs import DirectoryImageStore
from store.registry import EventTypes
from tests.support.backends import eventually, open_backends

HOST = "h1"
CAP = Capacity(vcpus=8, ram_mb=16384, disk_gb=200)
OBSERVED = msgspec.json.Decoder(InstanceObserved)
WAIT = 15.0


class Recorder:
    """Stands in for the instance actors: keeps every message sent to the instance shards."""

    def __init__(self) -> None:
        self.envelopes: list[CommandEnvelope] = []

    async def handle(self, delivery: Delivery) -> None:
        self.envelopes.append(COMMAND_DECODER.decode(delivery.body))

    def observed(self, iid: str) -> list[InstanceObserved]:
        return [OBSERVED.decode(e.body) for e in self.envelopes
                if e.actor_id == iid and e.type == "instance.observed"]

    def replies(self, iid: str) -> list[Reply]:
        return [REPLY_DECODER.decode(e.body) for e in self.envelopes
                if e.actor_id == iid and e.type == "reply"]


@dataclass
class Host:
    bus: Bus
    hv: Hypervisor
    daemon: HostDaemon
    recorder: Recorder
    client: ActorClient
    image_store: DirectoryImageStore
    disk: Path
    fetches: list[str] = field(default_factory=list)

    def spec(self, iid: str) -> DomainSpec:
        return DomainSpec(uuid=iid, name=f"vm-{iid[:8]}", vcpus=1, ram_mb=256, disk_gb=1,
                          image_path=str(self.disk))

    async def claim(self, iid: str) -> None:
        reply = await self.client.call("host", HOST, Claim(instance_id=iid, vcpus=1,
                                                            ram_mb=256, disk_gb=1))
        assert reply.ok, reply

    async def spawn(self, iid: str, image: ImageRef | None = None) -> None:
        """Send hostd.spawn as the instance actor's saga does: answers to the actor."""
        env = command_envelope(HOST_KIND, HOST, SpawnDomain(instance_id=iid,
                               spec=self.spec(iid), image=image), timeout=WAIT)
        await self.bus.send(msgspec.structs.replace(
            env, reply_to=actor_address(INSTANCE_ACTOR_KIND, iid)))

    async def final_reply(self, iid: str) -> Reply:
        async def answered() -> bool:
            return any(not r.partial for r in self.recorder.replies(iid))

        await eventually(answered, timeout=WAIT, what=f"the final reply for {iid}")
        return [r for r in self.recorder.replies(iid) if not r.partial][-1]

    async def spawned(self, iid: str) -> None:
        await self.spawn(iid)
        reply = await self.final_reply(iid)
        assert (reply.ok, reply.result) == (True, DomainState.RUNNING), reply


OpenHost = Callable[..., AbstractAsyncContextManager[Host]]


async def _open_hypervisor(kind: str) -> Hypervisor:
    if kind == "fake":
        return FakeHypervisor(capacity=CAP, shutdown_delay=0.05)
    return await LibvirtHypervisor.open("test:///default")


@pytest.fixture
def open_host(tmp_path: Path, bus_names: Names) -> OpenHost:
    """Opens the host actor's runtime (on the ``backends`` given, SQLite + memory bus by
    default), a recorder on the instance shards, and a HostDaemon for h1 with an image
    cache fed from a DirectoryImageStore; waits for the capacity report."""

    @asynccontextmanager
    async def opened(*, hypervisor: str = "fake",
                     backends: tuple[str, dict[str, Any]] = ("embedded", {}),
                     **daemon_options: Any) -> AsyncIterator[Host]:
        backend, extra = backends
        types = EventTypes([*HOST_EVENTS, *SYSTEM_EVENTS])
        disk = tmp_path / "disk.qcow2"
        disk.write_bytes(b"QFI\xfb")
        async with open_backends(backend, types=types, names=bus_names, tmp_path=tmp_path,
                                 **extra) as (store, bus):
            runtime = ActorRuntime(store, bus, [make_host_kind(down_after=30.0)])
            recorder = Recorder()
            sub = await bus.consume_commands(INSTANCE_ACTOR_KIND, recorder.handle)
            hv = await _open_hypervisor(hypervisor)
            image_store = DirectoryImageStore(tmp_path / "images")
            fetches: list[str] = []
            origin = directory_fetch(tmp_path / "images")

            def counted(image_id: str) -> AsyncIterator[bytes]:
                fetches.append(image_id)
                return origin(image_id)

            fetch: Fetch = counted
            images = ImageCache(tmp_path / "cache", fetch)
            daemon = HostDaemon(bus, hv, HOST, heartbeat_every=0.2, images=images,
                                **daemon_options)
            try:
                async with runtime, asyncio.TaskGroup() as tg:
                    tg.create_task(daemon.run())
                    try:
                        async with asyncio.timeout(WAIT):
                            await daemon.reported.wait()
                        yield Host(bus=bus, hv=hv, daemon=daemon, recorder=recorder,
                                   client=ActorClient(bus, timeout=WAIT),
                                   image_store=image_store, disk=disk, fetches=fetches)
                    finally:
                        daemon.shutdown()
            finally:
                await sub.cancel()
                await _cleanup(hv)

    return opened


async def _cleanup(hv: Hypervisor) -> None:
    """Undefine what the test made (test:///default is shared by the whole process)."""
    for domain in await hv.managed_domains():
        await hv.undefine(domain)
    await hv.close()


def new_id() -> str:
    return str(uuid.uuid4())


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- spawning with an image ----------------------------------------------------------------


async def test_spawn_with_an_image_answers_image_ready_then_running(open_host: OpenHost) -> None:
    """A spawn with an image fetches it into the cache, answers the instance actor with an
    interim image_ready, then the final running, and boots from the cached file; a second
    instance of the same image does not fetch it again, and answers only once (running)."""
    async with open_host() as host:
        data = os.urandom(1024 * 1024 + 11)
        info = await host.image_store.put("img-1", _once(data))
        ref = ImageRef(image_id="img-1", sha512=info.os_hash_value, disk_format="raw")
        first, second = new_id(), new_id()
        for iid in (first, second):
            await host.spawn(iid, ref)
            final = await host.final_reply(iid)
            assert (final.ok, final.result) == (True, DomainState.RUNNING)
            replies = host.recorder.replies(iid)
            interim = [(True, "image_ready")] if iid == first else []
            assert [(r.partial, r.result) for r in replies] == [
                *interim, (False, DomainState.RUNNING)]
            assert host.daemon.images is not None
            assert isinstance(host.hv, FakeHypervisor)
            spec = host.hv.spec_of(iid)
            assert spec.image_path == str(host.daemon.images.path("img-1"))
            assert spec.image_format == "raw"
        assert host.fetches == ["img-1"]
        cached = Path(host.hv.spec_of(first).image_path)
        assert await asyncio.to_thread(cached.read_bytes) == data


async def test_a_corrupt_or_missing_image_fails_the_spawn(open_host: OpenHost) -> None:
    """An image whose data does not hash to the expected sha512, or that the store does
    not have, is a final ok=False image_error (not retryable), with no interim answer and
    no domain defined."""
    async with open_host() as host:
        await host.image_store.put("img-2", _once(b"the real bytes"))
        wrong = hashlib.sha512(b"what the log says").hexdigest()
        cases = {new_id(): ImageRef(image_id="img-2", sha512=wrong),
                 new_id(): ImageRef(image_id="img-404", sha512=wrong)}
        for iid, ref in cases.items():
            await host.spawn(iid, ref)
            final = await host.final_reply(iid)
            assert (final.ok, final.error_type, final.retryable) == (False, "image_error", False)
            assert ref.image_id in (final.error or "")
            assert [r.partial for r in host.recorder.replies(iid)] == [False]
            assert await host.hv.state(iid) == DomainState.MISSING


# -- lifecycle observations ----------------------------------------------------------------

COMBINATIONS = pytest.mark.parametrize(
    ("backends", "hypervisor"),
    [("embedded", "fake"), ("embedded", "libvirt"), ("real", "fake")], indirect=["backends"])


@COMBINATIONS
async def test_a_domain_stopped_behind_hostds_back_reaches_the_instance(
    open_host: OpenHost, backends: tuple[str, dict[str, Any]], hypervisor: str,
) -> None:
    """A running domain destroyed directly on the hypervisor (not through hostd) is told
    to its instance actor: instance.observed stopped/destroyed, state shutoff, host h1."""
    async with open_host(backends=backends, hypervisor=hypervisor) as host:
        iid = new_id()
        await host.spawned(iid)
        await host.hv.destroy(iid)

        async def seen() -> bool:
            return any(o.state == DomainState.SHUTOFF for o in host.recorder.observed(iid))

        await eventually(seen, timeout=WAIT, what="a shutoff observation")
        (obs,) = [o for o in host.recorder.observed(iid) if o.state == DomainState.SHUTOFF]
        assert (obs.host, obs.event, obs.detail, obs.reconcile) == (
            HOST, "stopped", "destroyed", False)


# -- reconciliation --------------------------------------------------------------------------


@COMBINATIONS
async def test_reconcile_tells_expected_instances_their_state_or_missing(
    open_host: OpenHost, backends: tuple[str, dict[str, Any]], hypervisor: str,
) -> None:
    """Each round, every instance with a claim on the host hears its domain's state
    (reconcile=True): running for the one that runs, missing for the one whose domain the
    hypervisor does not know."""
    async with open_host(backends=backends, hypervisor=hypervisor,
                         reconcile_every=0.2) as host:
        running, missing = new_id(), new_id()
        for iid in (running, missing):
            await host.claim(iid)
        await host.spawned(running)

        def reconciled(iid: str) -> list[DomainState]:
            return [o.state for o in host.recorder.observed(iid) if o.reconcile]

        async def both() -> bool:
            return DomainState.RUNNING in reconciled(running) and bool(reconciled(missing))

        await eventually(both, timeout=WAIT, what="reconcile observations")
        assert set(reconciled(missing)) == {DomainState.MISSING}
        assert await host.hv.state(running) == DomainState.RUNNING


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("hypervisor", ["fake", "libvirt"])
async def test_an_orphan_is_removed_only_after_its_grace(
    open_host: OpenHost, hypervisor: str,
) -> None:
    """A domain no instance claims is left alone (and keeps running) until it has been
    unexpected for orphan_grace seconds, then destroyed and undefined; a claimed domain
    and a domain Orrery did not define are never touched."""
    async with open_host(hypervisor=hypervisor) as host:
        orphan, claimed = new_id(), new_id()
        await host.claim(claimed)
        await host.spawned(claimed)
        await host.spawned(orphan)
        if isinstance(host.hv, FakeHypervisor):
            host.hv.add_stranger(host.spec(new_id()))
        strangers = set(await host.hv.list_domains()) - set(await host.hv.managed_domains())
        assert strangers  # test:///default has its own "test" domain
        clock = Clock()
        reconciler = Reconciler(host.bus, host.hv, HOST, orphan_grace=10.0, clock=clock)
        for at in (0.0, 9.9):
            clock.now = 1000.0 + at
            result = await reconciler.run_once()
            assert result is not None and orphan in result.pending_orphans
            assert not result.removed
            assert await host.hv.state(orphan) == DomainState.RUNNING
        clock.now = 1010.0
        with structlog.testing.capture_logs() as logs:
            result = await reconciler.run_once()
        assert result is not None and orphan in result.removed
        assert claimed not in result.removed and not strangers & set(result.removed)
        assert [x["uuid"] for x in logs if x["event"] == "orphan_removed"] == list(
            result.removed)
        assert await host.hv.state(orphan) == DomainState.MISSING
        assert await host.hv.state(claimed) == DomainState.RUNNING
        for stranger in strangers:
            assert await host.hv.state(stranger) != DomainState.MISSING


async def test_the_daemon_removes_orphans_and_keeps_claimed_domains(
    open_host: OpenHost,
) -> None:
    """With its own loop (reconcile_every 0.1 s, grace 0.5 s) the daemon removes an
    unclaimed domain and leaves the claimed one running."""
    async with open_host(reconcile_every=0.1, orphan_grace=0.5) as host:
        orphan, claimed = new_id(), new_id()
        await host.claim(claimed)
        await host.spawned(claimed)
        await host.spawned(orphan)

        async def removed() -> bool:
            return await host.hv.state(orphan) == DomainState.MISSING

        await eventually(removed, timeout=WAIT, what="the orphan removed")
        await asyncio.sleep(0.3)
        assert await host.hv.state(claimed) == DomainState.RUNNING


async def test_without_an_answer_from_the_host_actor_nothing_is_removed(
    bus_names: Names,
) -> None:
    """A round whose host.expected call gets no answer is skipped: even with no grace at
    all, no domain is removed."""
    hv = FakeHypervisor()
    bus = MemoryBus(bus_names)
    try:
        iid = new_id()
        await hv.define(DomainSpec(uuid=iid, name="x", vcpus=1, ram_mb=256, disk_gb=1,
                                   image_path="/x"))
        await hv.start(iid)
        reconciler = Reconciler(bus, hv, HOST, orphan_grace=0.0, call_timeout=0.2)
        with structlog.testing.capture_logs() as logs:
            assert await reconciler.run_once() is None
        assert [x["event"] for x in logs if x["event"] == "reconcile_skipped"]
        assert await hv.state(iid) == DomainState.RUNNING
    finally:
        await bus.close()
        await hv.close()
