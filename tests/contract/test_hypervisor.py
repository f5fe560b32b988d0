"""The Hypervisor contract: the fake and libvirt (test:///default) behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import libvirt  # type: ignore[import-untyped]
import msgspec
import pytest

from hostd.fake import FakeHypervisor
from hostd.hypervisor import (
    DomainNotFound,
    DomainStateError,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    ObservationStream,
)
from hostd.libvirt_driver import LibvirtHypervisor
from schemas.hostd import DomainSpec, DomainState, Observation, ShutdownOutcome, VolumeDisk

#: Bound on waiting for an observation, so a lost one fails instead of hanging.
OBSERVATION_WAIT = 10.0
MakeSpec = Callable[..., DomainSpec]


@pytest.fixture(params=["fake", "libvirt"])
async def hypervisor(request: pytest.FixtureRequest) -> AsyncIterator[Hypervisor]:
    """A fresh hypervisor; at the end, every domain the test defined is undefined."""
    opened: Hypervisor
    if request.param == "fake":
        opened = FakeHypervisor()
    else:
        opened = await LibvirtHypervisor.open("test:///default")
    before = set(await opened.list_domains())
    try:
        yield opened
    finally:
        for domain in set(await opened.list_domains()) - before:
            await opened.undefine(domain)
        await opened.close()


@pytest.fixture
def make_spec(tmp_path: Path) -> MakeSpec:
    """Builds a DomainSpec with a new uuid and a small disk image file."""
    image = tmp_path / "cirros.qcow2"
    image.write_bytes(b"QFI\xfb")

    def make(**changes: object) -> DomainSpec:
        spec = DomainSpec(
            uuid=str(uuid.uuid4()), name="vm <one> & 'two'", vcpus=1, ram_mb=256,
            disk_gb=1, image_path=str(image),
        )
        return msgspec.structs.replace(spec, **changes)

    return make


async def running(hypervisor: Hypervisor, spec: DomainSpec) -> str:
    await hypervisor.define(spec)
    await hypervisor.start(spec.uuid)
    return spec.uuid


async def next_for(stream: ObservationStream, domain: str) -> Observation:
    """The next observation about ``domain``, skipping others."""
    while (seen := await stream.next_observation(OBSERVATION_WAIT)).uuid != domain:
        pass
    return seen


async def test_defined_domain_is_shutoff_until_started(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """define makes a shut-off domain; start makes it running."""
    spec = make_spec()
    await hypervisor.define(spec)
    assert await hypervisor.state(spec.uuid) == DomainState.SHUTOFF
    await hypervisor.start(spec.uuid)
    assert await hypervisor.state(spec.uuid) == DomainState.RUNNING


async def test_starting_a_running_domain_changes_nothing(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """start is idempotent: a second start of a running domain is no error."""
    domain = await running(hypervisor, make_spec())
    await hypervisor.start(domain)
    assert await hypervisor.state(domain) == DomainState.RUNNING


async def test_unknown_domain_is_missing(hypervisor: Hypervisor) -> None:
    """state of a uuid the hypervisor never saw is ``missing``, not an error."""
    assert await hypervisor.state(str(uuid.uuid4())) == DomainState.MISSING


async def test_shutdown_leaves_domain_shutoff(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A graceful shutdown ends with the domain shut off within the timeout."""
    domain = await running(hypervisor, make_spec())
    outcome = await hypervisor.shutdown(domain, timeout=5.0)
    assert outcome in (ShutdownOutcome.GRACEFUL, ShutdownOutcome.DESTROYED)
    assert await hypervisor.state(domain) == DomainState.SHUTOFF


async def test_shutdown_of_shutoff_domain_says_already_off(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """Shutting down a domain that is not running reports already_off and keeps it."""
    spec = make_spec()
    await hypervisor.define(spec)
    assert await hypervisor.shutdown(spec.uuid, timeout=1.0) == ShutdownOutcome.ALREADY_OFF
    assert await hypervisor.state(spec.uuid) == DomainState.SHUTOFF


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
async def test_reboot_keeps_domain_running(
    hypervisor: Hypervisor, make_spec: MakeSpec, hard: bool
) -> None:
    """A soft or hard reboot of a running domain leaves it running."""
    domain = await running(hypervisor, make_spec())
    await hypervisor.reboot(domain, hard=hard)
    assert await hypervisor.state(domain) == DomainState.RUNNING


async def test_hard_reboot_boots_a_shutoff_domain(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A hard reboot works from shut-off (as Nova's does) and ends running."""
    spec = make_spec()
    await hypervisor.define(spec)
    await hypervisor.reboot(spec.uuid, hard=True)
    assert await hypervisor.state(spec.uuid) == DomainState.RUNNING


async def test_soft_reboot_of_shutoff_domain_is_a_state_error(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A soft reboot needs a running guest; otherwise DomainStateError, not retryable."""
    spec = make_spec()
    await hypervisor.define(spec)
    with pytest.raises(DomainStateError) as raised:
        await hypervisor.reboot(spec.uuid)
    assert not raised.value.retryable


async def test_destroy_powers_off_and_is_idempotent(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """destroy leaves the domain shut off (still defined); a second destroy is no error."""
    domain = await running(hypervisor, make_spec())
    await hypervisor.destroy(domain)
    assert await hypervisor.state(domain) == DomainState.SHUTOFF
    await hypervisor.destroy(domain)
    assert (await hypervisor.list_domains())[domain] == DomainState.SHUTOFF


async def test_undefine_forgets_a_running_domain(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """undefine powers off and forgets: missing, gone from list_domains; again is no error."""
    domain = await running(hypervisor, make_spec())
    await hypervisor.undefine(domain)
    assert await hypervisor.state(domain) == DomainState.MISSING
    assert domain not in await hypervisor.list_domains()
    await hypervisor.undefine(domain)


async def test_define_is_idempotent_and_updates(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """Defining the same uuid again is no error, keeps one domain, and keeps it running."""
    spec = make_spec()
    domain = await running(hypervisor, spec)
    await hypervisor.define(spec)
    await hypervisor.define(msgspec.structs.replace(spec, ram_mb=512))
    domains = await hypervisor.list_domains()
    assert [d for d in domains if d == domain] == [domain]
    assert domains[domain] == DomainState.RUNNING


async def test_list_domains_reports_each_state(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """list_domains maps every uuid to its state."""
    on = await running(hypervisor, make_spec())
    off = make_spec()
    await hypervisor.define(off)
    domains = await hypervisor.list_domains()
    assert domains[on] == DomainState.RUNNING
    assert domains[off.uuid] == DomainState.SHUTOFF


async def test_managed_domains_are_those_orrery_defined(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """managed_domains lists what define() made, not a domain someone else defined (the
    fake's stranger; test:///default's own ``test`` domain)."""
    on = await running(hypervisor, make_spec())
    off = make_spec()
    await hypervisor.define(off)
    if isinstance(hypervisor, FakeHypervisor):
        hypervisor.add_stranger(make_spec())
    managed = await hypervisor.managed_domains()
    assert managed[on] == DomainState.RUNNING and managed[off.uuid] == DomainState.SHUTOFF
    strangers = set(await hypervisor.list_domains()) - set(managed)
    assert strangers
    for stranger in strangers:
        assert await hypervisor.state(stranger) != DomainState.MISSING


@pytest.mark.parametrize("action", ["start", "shutdown", "reboot", "destroy"])
async def test_acting_on_a_missing_domain_raises_not_found(
    hypervisor: Hypervisor, action: str
) -> None:
    """start/shutdown/reboot/destroy of an unknown uuid raise DomainNotFound naming it."""
    missing = str(uuid.uuid4())
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "start": lambda: hypervisor.start(missing),
        "shutdown": lambda: hypervisor.shutdown(missing, timeout=1.0),
        "reboot": lambda: hypervisor.reboot(missing),
        "destroy": lambda: hypervisor.destroy(missing),
    }
    with pytest.raises(DomainNotFound) as raised:
        await calls[action]()
    assert raised.value.uuid == missing
    assert not raised.value.retryable


async def test_observations_follow_start_and_stop(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A subscriber sees started (running) and then stopped (shutoff) for the domain."""
    stream = hypervisor.observe()
    spec = make_spec()
    await hypervisor.define(spec)
    await hypervisor.start(spec.uuid)
    await hypervisor.destroy(spec.uuid)
    seen: list[Observation] = []
    while len(seen) < 2:
        observation = await next_for(stream, spec.uuid)
        if observation.event in ("started", "stopped"):
            seen.append(observation)
    assert [(o.event, o.state, o.detail) for o in seen] == [
        ("started", DomainState.RUNNING, "booted"),
        ("stopped", DomainState.SHUTOFF, "destroyed"),
    ]
    stream.close()


async def test_closed_stream_ends_iteration(hypervisor: Hypervisor) -> None:
    """Closing an observation stream ends an ``async for`` over it."""
    stream = hypervisor.observe()
    stream.close()
    assert [o async for o in stream] == []


async def test_capacity_is_positive(hypervisor: Hypervisor) -> None:
    """The host reports some CPUs, memory and disk."""
    capacity = await hypervisor.capacity()
    assert capacity.vcpus > 0
    assert capacity.ram_mb > 0
    assert capacity.disk_gb > 0


async def test_concurrent_calls_keep_the_loop_running(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """50 concurrent define+start calls: another task keeps running while each is in flight."""
    ticks = 0
    ticks_during: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def boot(spec: DomainSpec) -> None:
        at_start = ticks
        await running(hypervisor, spec)
        ticks_during.append(ticks - at_start)

    specs = [make_spec() for _ in range(50)]
    async with asyncio.TaskGroup() as group:
        ticking = group.create_task(ticker())
        await asyncio.gather(*(boot(spec) for spec in specs))
        ticking.cancel()
    assert len(ticks_during) == len(specs)
    assert min(ticks_during) > 0
    domains = await hypervisor.list_domains()
    assert all(domains[spec.uuid] == DomainState.RUNNING for spec in specs)


def volume(device: str = "vdb", path: str = "/volumes/volume-1") -> VolumeDisk:
    return VolumeDisk(device=device, path=path, format="raw", serial="volume-1")


async def test_attach_disk_adds_it_to_the_definition_and_detach_removes_it(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A running domain gets the volume as vdb (its persistent definition lists it, the
    boot disk not counted); detach takes it away; the domain keeps running."""
    domain = await running(hypervisor, make_spec())
    assert await hypervisor.disks(domain) == {}
    await hypervisor.attach_disk(domain, volume())
    assert await hypervisor.disks(domain) == {"vdb": "/volumes/volume-1"}
    await hypervisor.attach_disk(domain, volume("vdc", "/volumes/volume-2"))
    assert await hypervisor.disks(domain) == {"vdb": "/volumes/volume-1",
                                              "vdc": "/volumes/volume-2"}
    await hypervisor.detach_disk(domain, "vdb")
    assert await hypervisor.disks(domain) == {"vdc": "/volumes/volume-2"}
    assert await hypervisor.state(domain) == DomainState.RUNNING


async def test_attach_and_detach_are_idempotent(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """The same disk on the same device again is no error; detaching a device that holds
    nothing is no error; another file on a taken device is a state error."""
    domain = await running(hypervisor, make_spec())
    await hypervisor.attach_disk(domain, volume())
    await hypervisor.attach_disk(domain, volume())
    assert await hypervisor.disks(domain) == {"vdb": "/volumes/volume-1"}
    with pytest.raises(DomainStateError):
        await hypervisor.attach_disk(domain, volume(path="/volumes/other"))
    await hypervisor.detach_disk(domain, "vdb")
    await hypervisor.detach_disk(domain, "vdb")
    await hypervisor.detach_disk(domain, "vdz")
    assert await hypervisor.disks(domain) == {}


async def test_attach_to_a_shutoff_domain_is_persistent(
    hypervisor: Hypervisor, make_spec: MakeSpec
) -> None:
    """A shut-off domain gets the disk in its definition and still has it once started."""
    spec = make_spec()
    await hypervisor.define(spec)
    await hypervisor.attach_disk(spec.uuid, volume())
    await hypervisor.start(spec.uuid)
    assert await hypervisor.disks(spec.uuid) == {"vdb": "/volumes/volume-1"}


async def test_attach_to_a_missing_domain_is_not_found(hypervisor: Hypervisor) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(DomainNotFound):
        await hypervisor.attach_disk(missing, volume())
    with pytest.raises(DomainNotFound):
        await hypervisor.detach_disk(missing, "vdb")


async def test_calls_after_close_are_retryable_unavailable() -> None:
    """Once closed, a hypervisor refuses calls with a retryable HypervisorUnavailable."""
    for closed in (FakeHypervisor(), await LibvirtHypervisor.open("test:///default")):
        stream = closed.observe()
        await closed.close()
        await closed.close()
        with pytest.raises(HypervisorUnavailable) as raised:
            await closed.state(str(uuid.uuid4()))
        assert raised.value.retryable
        assert [o async for o in stream] == []


# Behaviour the fake injects on purpose, and libvirt-only behaviour.


async def test_fake_start_fault_is_a_hypervisor_error(make_spec: MakeSpec) -> None:
    """fail_start makes start of that uuid raise; the domain stays shut off."""
    spec = make_spec()
    fake = FakeHypervisor(fail_start=[spec.uuid])
    await fake.define(spec)
    with pytest.raises(HypervisorError):
        await fake.start(spec.uuid)
    assert await fake.state(spec.uuid) == DomainState.SHUTOFF


@pytest.mark.parametrize(
    ("delay", "outcome"),
    [(0.01, ShutdownOutcome.GRACEFUL), (5.0, ShutdownOutcome.DESTROYED),
     (None, ShutdownOutcome.DESTROYED)],
    ids=["quick-guest", "slow-guest", "deaf-guest"],
)
async def test_fake_shutdown_destroys_a_guest_slower_than_the_timeout(
    make_spec: MakeSpec, delay: float | None, outcome: ShutdownOutcome
) -> None:
    """A guest that does not stop within the timeout is destroyed, and shutdown says so."""
    fake = FakeHypervisor(shutdown_delay=delay)
    domain = await running(fake, make_spec())
    assert await fake.shutdown(domain, timeout=0.05) == outcome
    assert await fake.state(domain) == DomainState.SHUTOFF


@pytest.fixture
async def outside_conn() -> AsyncIterator[object]:
    """A second, plain libvirt connection: someone acting behind Orrery's back."""
    conn = await asyncio.to_thread(libvirt.open, "test:///default")
    yield conn
    await asyncio.to_thread(conn.close)


async def test_libvirt_reports_a_domain_destroyed_behind_its_back(
    make_spec: MakeSpec, outside_conn: object
) -> None:
    """A domain destroyed through another connection is observed as stopped/destroyed."""
    hypervisor = await LibvirtHypervisor.open("test:///default")
    try:
        stream = hypervisor.observe()
        domain = await running(hypervisor, make_spec())
        dom = await asyncio.to_thread(outside_conn.lookupByUUIDString, domain)  # type: ignore[attr-defined]
        await asyncio.to_thread(dom.destroy)
        while (seen := await next_for(stream, domain)).event != "stopped":
            pass
        assert (seen.state, seen.detail) == (DomainState.SHUTOFF, "destroyed")
        await hypervisor.undefine(domain)
    finally:
        await hypervisor.close()
