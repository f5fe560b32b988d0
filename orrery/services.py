"""The cloud's parts in one place: the actor kinds workers run, the projections API
processes keep, and the OpenStack APIs the gateway serves. A new service adds itself here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.client import ActorClient
from actors.flavor import FLAVOR
from actors.flavor_views import FlavorProjection
from actors.host import HOST
from actors.host_views import HostsProjection, read_hosts
from actors.hostnet_planner import HostNetworkPlanner
from actors.identity import IDENTITY_KINDS
from actors.identity_views import IdentityProjection
from actors.image import IMAGE
from actors.image_views import ImageProjection
from actors.instance import INSTANCE, Place
from actors.instance_views import InstancesProjection
from actors.kind import ActorKind
from actors.net_carriers import CarriersProjection
from actors.network import make_network_kind
from actors.network_views import NetworkingProjection
from actors.port import make_port_kind
from actors.runtime import EffectHandler
from actors.scheduler import Placement
from actors.segment import NetworkSettings, make_segment_kind
from actors.subnet import make_subnet_kind
from actors.subscription import SUBSCRIPTION
from actors.subscription_views import SubscriptionProjection
from actors.volume import VOLUME
from actors.volume_messages import PlaceVolume
from actors.volume_views import VolumesProjection
from bus.protocol import Bus
from gateway.app import ServiceApi
from gateway.compute import ComputeApi
from gateway.events import EventFeedApi
from gateway.image import ImageApi
from gateway.networking import NetworkingApi
from gateway.subscriptions import SubscriptionsApi
from gateway.volumes import VolumesApi
from orrery.config import Config, load_config
from store.blobs import DirectoryImageStore
from store.projections import Projection
from webhooks.destinations import DestinationPolicy
from webhooks.dispatcher import Dispatcher, DispatcherSettings
from webhooks.outbox import RetryPolicy
from webhooks.tables import DeliveryRecords


def network_settings(cfg: Config | None = None) -> NetworkSettings:
    """The networking settings of ``cfg`` (default: the configured ones)."""
    c = cfg or load_config()
    return NetworkSettings.parse(
        vni_ranges=c.network_vni_ranges, vlan_ranges=c.network_vlan_ranges,
        flat_networks=c.network_flat_networks, tenant_type=c.network_tenant_type,
        mtu=c.network_mtu, hold_lease=c.network_hold_lease)


def cloud_kinds(net: NetworkSettings | None = None) -> list[ActorKind[Any]]:
    """Every resource kind a worker hosts."""
    net = net or network_settings()
    return [*IDENTITY_KINDS, HOST, IMAGE, FLAVOR, INSTANCE, make_network_kind(net.hold_lease),
            make_subnet_kind(net.hold_lease), make_port_kind(net.hold_lease),
            make_segment_kind(net), SUBSCRIPTION, VOLUME]


def cloud_effects(store: Any, bus: Bus) -> dict[type, EffectHandler]:
    """The kind-specific effects a worker carries out (Tell/TellHost are built in)."""
    async def hosts() -> Any:
        return await read_hosts(store)

    placement = Placement(bus, hosts)  # one scheduler for instances and volumes
    return {Place: placement, PlaceVolume: placement}


def cloud_services(store: Any, bus: Bus) -> list[HostNetworkPlanner]:
    """The components a worker runs beside its actors, each with ``run()`` (until
    cancelled) and ``shutdown()``: the host network planner."""
    return [HostNetworkPlanner(store, bus)]


def worker_projections() -> list[Projection]:
    """The projections a worker reads itself (the scheduler's hosts view, and the
    networking and carriers views the host network planner reads)."""
    return [HostsProjection(), NetworkingProjection(), CarriersProjection()]


def cloud_projections() -> list[Projection]:
    """Every projection an API process keeps folded (the tables its reads come from)."""
    return [IdentityProjection(), HostsProjection(), ImageProjection(), FlavorProjection(),
            InstancesProjection(), NetworkingProjection(), SubscriptionProjection(),
            VolumesProjection()]


def destination_policy(cfg: Config) -> DestinationPolicy:
    """Which addresses webhooks may reach, as configured."""
    return DestinationPolicy(allow_loopback=cfg.webhooks_allow_loopback,
                             allow_private=cfg.webhooks_allow_private)


def dispatcher_settings(cfg: Config | None = None) -> DispatcherSettings:
    """How webhooks are delivered, as configured (default: the configured settings)."""
    c = cfg or load_config()
    retry = RetryPolicy(period=c.webhooks_retry_period, base=c.webhooks_retry_base,
                        timeout=c.webhooks_timeout)
    return DispatcherSettings(retry=retry, destinations=destination_policy(c),
                              retention=c.webhooks_retention)


def webhook_dispatcher(store: Any, client: ActorClient,
                       settings: DispatcherSettings | None = None) -> Dispatcher:
    """The webhook dispatcher a worker runs (it delivers while it leads)."""
    return Dispatcher(store, client, settings or dispatcher_settings())


def cloud_apis(store: Any, client: ActorClient, data_dir: str | None = None, *,
               destinations: DestinationPolicy | None = None,
               heartbeat: float | None = None) -> list[ServiceApi]:
    """The OpenStack APIs besides Identity (which the cloud app always serves), and the
    event feed with its webhook subscriptions.

    Image data lives in ``<data_dir>/images``; without `data_dir`, the configured one
    (``ORRERY_DATA_DIR`` or ``$ORRERY_CONFIG``; pass ``cfg.data_dir`` when ``--config``).
    ``destinations`` and ``heartbeat`` default to the configured ones too.
    """
    cfg = load_config()
    images = DirectoryImageStore(Path(data_dir or cfg.data_dir) / "images")
    networking = NetworkingApi(store, client, settings=network_settings(cfg))
    policy = destinations or destination_policy(cfg)
    return [ImageApi(store, client, images),
            ComputeApi(store, client, networking=networking, block_storage=True),
            networking, VolumesApi(store, client),
            EventFeedApi(store, heartbeat=heartbeat or cfg.events_heartbeat),
            SubscriptionsApi(store, client, policy.check, DeliveryRecords(store))]
