"""The scheduler's pure filters and weighers, with properties over random host sets."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from actors.host import AllocationRatios, Resources
from actors.host_views import HostView
from actors.scheduler import GIB, NoValidHost, PlacementRequest, filter_hosts, place
from schemas.hostd import Capacity
from schemas.hostnet import Capabilities


def view(host_id: str, *, state: str = "up", vcpus: int = 8, ram_mb: int = 16384,
         disk_gb: int = 200, used: Resources | None = None,
         ratios: AllocationRatios | None = None,
         networks: Capabilities | None = None) -> HostView:
    return HostView(id=host_id, state=state,
                    capacity=Capacity(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                                      networks=networks),
                    used=used or Resources(), instances=0, last_heartbeat=None,
                    ratios=ratios or AllocationRatios())


def request(vcpus: int = 1, ram_mb: int = 512, disk_gb: int = 1,
            image_size: int = 0) -> PlacementRequest:
    return PlacementRequest(instance_id="i", vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                            image_size=image_size)


def test_most_free_ram_first_then_vcpus_then_id() -> None:
    """Spread by free RAM; equal RAM goes to more free vCPUs; full ties by host id."""
    hosts = [view("c", ram_mb=4096), view("b", ram_mb=8192, vcpus=2),
             view("a", ram_mb=8192, vcpus=2), view("d", ram_mb=8192, vcpus=4)]
    assert place(request(), hosts) == ["d", "a", "b", "c"]


def test_down_hosts_are_never_picked() -> None:
    """However much room it has, a down host is filtered out, and the reason says so."""
    hosts = [view("big", state="down", ram_mb=65536), view("small", ram_mb=1024)]
    assert place(request(), hosts) == ["small"]
    passing, reasons = filter_hosts(request(ram_mb=2048), hosts)
    assert passing == [] and reasons[0] == "1 host(s) down"


def test_free_room_accounts_for_usage_and_allocation_ratios() -> None:
    """16 vCPUs with cpu ratio 4 on 4 cores is full; RAM ratio 1.5 adds half again."""
    full = view("full", vcpus=4, used=Resources(vcpus=16))
    roomy = view("roomy", ram_mb=1000, ratios=AllocationRatios(ram=1.5))
    assert place(request(vcpus=1, ram_mb=1500), [full, roomy]) == ["roomy"]
    assert place(request(vcpus=1, ram_mb=1501), [full, roomy]) == []


def test_a_flavor_with_no_root_disk_needs_room_for_its_image() -> None:
    """disk_gb 0 takes the image's size, rounded up to whole GiB."""
    hosts = [view("tiny", disk_gb=2), view("ok", disk_gb=3, ram_mb=1024)]
    assert place(request(disk_gb=0, image_size=2 * GIB + 1), hosts) == ["ok"]


def test_an_image_larger_than_the_root_disk_fits_nowhere() -> None:
    """The image filter refuses before any host is looked at, with a readable reason."""
    passing, reasons = filter_hosts(request(disk_gb=1, image_size=GIB + 1), [view("a")])
    assert passing == [] and "larger than the 1 GiB root disk" in reasons[0]


def test_no_valid_host_reads_as_novas_fault() -> None:
    """The exception's message is what the instance fault shows."""
    err = NoValidHost(["2 host(s) down"])
    assert str(err) == "No valid host was found. 2 host(s) down"
    assert str(NoValidHost([])) == "No valid host was found. there are no hosts"


hosts_st = st.lists(
    st.builds(
        view,
        st.uuids().map(str),
        state=st.sampled_from(["up", "up", "down"]),
        vcpus=st.integers(1, 64), ram_mb=st.integers(512, 65536),
        disk_gb=st.integers(10, 1000),
        used=st.builds(Resources, vcpus=st.integers(0, 200), ram_mb=st.integers(0, 70000),
                       disk_gb=st.integers(0, 1000)),
        ratios=st.builds(AllocationRatios, cpu=st.sampled_from([1.0, 4.0, 16.0]),
                         ram=st.sampled_from([0.5, 1.0, 1.5]),
                         disk=st.sampled_from([1.0, 2.0])),
    ),
    max_size=12, unique_by=lambda h: h.id,
)
requests_st = st.builds(request, vcpus=st.integers(1, 32), ram_mb=st.integers(64, 32768),
                        disk_gb=st.integers(0, 200), image_size=st.integers(0, 50 * GIB))


@settings(max_examples=300, deadline=None)
@given(hosts=hosts_st, req=requests_st)
def test_never_places_where_the_request_does_not_fit(
    hosts: list[HostView], req: PlacementRequest
) -> None:
    """Every ranked host is up and has free vCPU, RAM and disk (under its ratios) for the
    request; every host left out is down or lacks room (or the image can never fit)."""
    ranked = place(req, hosts)
    by_id = {h.id: h for h in hosts}
    need = req.needs
    for hid in ranked:
        host = by_id[hid]
        cap, r, used = host.capacity, host.ratios, host.used
        assert host.up
        assert used.vcpus + need.vcpus <= cap.vcpus * r.cpu
        assert used.ram_mb + need.ram_mb <= cap.ram_mb * r.ram
        assert used.disk_gb + need.disk_gb <= cap.disk_gb * r.disk
    if req.disk_gb == 0 or req.image_size <= req.disk_gb * GIB:
        for host in hosts:
            if host.id not in ranked:
                room = host.free
                assert not host.up or need.vcpus > room.vcpus or need.ram_mb > room.ram_mb \
                    or need.disk_gb > room.disk_gb


@settings(max_examples=300, deadline=None)
@given(hosts=hosts_st, req=requests_st)
def test_ranking_spreads_by_free_ram_and_is_deterministic(
    hosts: list[HostView], req: PlacementRequest
) -> None:
    """Free RAM never increases down the ranking, and the order of the input is irrelevant."""
    ranked = place(req, hosts)
    by_id = {h.id: h for h in hosts}
    free_ram = [by_id[h].free.ram_mb for h in ranked]
    assert free_ram == sorted(free_ram, reverse=True)
    assert place(req, list(reversed(hosts))) == ranked


def test_an_all_down_cloud_has_no_placement() -> None:
    """With every host down the ranking is empty."""
    assert place(request(), [view("a", state="down"), view("b", state="down")]) == []


NO_VLAN = Capabilities(flat=True, vxlan=True, vlan=False, physical_networks=("physnet1",),
                       missing={"vlan": "802.1Q: the kernel has no vlan support"})
ALL = Capabilities(flat=True, vxlan=True, vlan=True, physical_networks=("physnet1",))


def test_a_vlan_boot_avoids_hosts_without_802_1q_and_says_why() -> None:
    """A host whose kernel lacks 802.1Q never gets a VLAN network's server, however much
    room it has; with no VLAN host at all the reasons name the cause."""
    vlan = PlacementRequest(instance_id="i", vcpus=1, ram_mb=512, disk_gb=1,
                            network_types=("vlan",), physical_networks=("physnet1",))
    hosts = [view("big", ram_mb=65536, networks=NO_VLAN), view("small", networks=ALL)]
    assert place(vlan, hosts) == ["small"]
    assert place(request(), hosts) == ["big", "small"]
    passing, reasons = filter_hosts(vlan, hosts[:1])
    assert passing == [] and reasons == [
        "1 host(s) unable to carry vlan networks on physical network(s) physnet1"]


def test_a_network_boot_needs_the_physical_network_and_a_network_driver() -> None:
    """A flat network on physnet2 fits no host that lacks physnet2; a host reporting no
    network driver carries no network at all."""
    flat2 = PlacementRequest(instance_id="i", vcpus=1, ram_mb=512, disk_gb=1,
                             network_types=("flat",), physical_networks=("physnet2",))
    vxlan = PlacementRequest(instance_id="i", vcpus=1, ram_mb=512, disk_gb=1,
                             network_types=("vxlan",))
    hosts = [view("a", networks=ALL), view("bare", ram_mb=65536)]
    assert place(flat2, hosts) == []
    assert place(vxlan, hosts) == ["a"]
