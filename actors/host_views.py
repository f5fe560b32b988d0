"""The ``hosts`` projection: each host's state, capacity, usage, last beat and ratios.

``HostsProjection`` folds the host kind's events into the ``hosts`` table (run it with a
``store.projections.ProjectionRunner``), and each host's network capabilities (the types
it carries, its physical networks, its VXLAN underlay address) into ``host_networks``;
``read_hosts`` / ``read_host`` read them back as ``HostView`` rows (capabilities in
``capacity.networks``), which is what the scheduler, the host network planner and
``os-hypervisors`` consume.

``host_networks`` is a table of its own rather than a column of ``hosts`` so that a log
folded before it existed keeps working: the table is created empty and filled by the next
capacity report that carries capabilities (``orrery replay`` rebuilds it from the start).
``host_storage`` is the same for storage hosts: what each offers for volumes
(``capacity.storage``) and the block storage its volumes claim (``used.volume_gb``);
volume claims do not count as instances.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from actors.host import (
    KIND,
    AllocationRatios,
    HostClaimed,
    HostDown,
    HostHeartbeat,
    HostInventoryChanged,
    HostRegistered,
    HostReleased,
    HostUp,
    Resources,
    free,
)
from schemas import EventEnvelope
from schemas.hostd import Capacity, StorageCapacity
from schemas.hostnet import Capabilities
from store.protocol import SqlTx
from store.rowset import Carried, RowSet
from store.tables import Table

TABLE = "hosts"
UP, DOWN = "up", "down"

_COLUMNS = (
    "h.id, h.state, h.vcpus, h.ram_mb, h.disk_gb, h.used_vcpus, h.used_ram_mb,"
    " h.used_disk_gb, h.instances, h.last_heartbeat, h.cpu_ratio, h.ram_ratio, h.disk_ratio,"
    " n.networks, s.storage, s.used_gb, s.volumes"
)
_FROM = (" FROM hosts h LEFT JOIN host_networks n ON n.id = h.id"
         " LEFT JOIN host_storage s ON s.id = h.id")
_STORAGE = (
    "INSERT INTO host_storage (id, storage, used_gb, volumes) VALUES ($1, $2, 0, 0)"
    " ON CONFLICT (id) DO UPDATE SET storage = excluded.storage"
)
_STORAGE_USAGE = (
    "INSERT INTO host_storage (id, storage, used_gb, volumes) VALUES ($1, NULL, $2, $3)"
    " ON CONFLICT (id) DO UPDATE SET used_gb = host_storage.used_gb + excluded.used_gb,"
    " volumes = host_storage.volumes + excluded.volumes"
)
_NETWORKS = (
    "INSERT INTO host_networks (id, networks) VALUES ($1, $2)"
    " ON CONFLICT (id) DO UPDATE SET networks = excluded.networks"
)
_JSON = msgspec.json.Encoder()
_CAPABILITIES = msgspec.json.Decoder(Capabilities)
_STORAGE_CAPACITY = msgspec.json.Decoder(StorageCapacity)


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the ``hosts`` table."""

    id: str
    state: str
    capacity: Capacity
    used: Resources
    instances: int
    last_heartbeat: dt.datetime | None
    ratios: AllocationRatios
    #: volumes holding a claim here (a storage host's)
    volumes: int = 0

    @property
    def up(self) -> bool:
        return self.state == UP

    @property
    def free(self) -> Resources:
        """What is left to claim under the allocation ratios."""
        return free(self.capacity, self.ratios, self.used)


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    t.__struct_config__.tag: msgspec.json.Decoder(t)  # type: ignore[misc]
    for t in (HostRegistered, HostInventoryChanged, HostHeartbeat, HostDown, HostUp,
              HostClaimed, HostReleased)
}


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


class HostsProjection:
    """Folds ``host.*`` events into ``hosts`` (one row per host that ever reported)."""

    name = TABLE
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS hosts (id TEXT PRIMARY KEY, state TEXT NOT NULL,"
        " vcpus BIGINT NOT NULL, ram_mb BIGINT NOT NULL, disk_gb BIGINT NOT NULL,"
        " used_vcpus BIGINT NOT NULL, used_ram_mb BIGINT NOT NULL,"
        " used_disk_gb BIGINT NOT NULL, instances BIGINT NOT NULL, last_heartbeat TEXT,"
        " cpu_ratio DOUBLE PRECISION NOT NULL, ram_ratio DOUBLE PRECISION NOT NULL,"
        " disk_ratio DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS host_networks (id TEXT PRIMARY KEY, networks TEXT)",
        "CREATE TABLE IF NOT EXISTS host_storage (id TEXT PRIMARY KEY, storage TEXT,"
        " used_gb BIGINT NOT NULL, volumes BIGINT NOT NULL)",
    )
    drop: Sequence[str] = ("DROP TABLE IF EXISTS hosts", "DROP TABLE IF EXISTS host_networks",
                           "DROP TABLE IF EXISTS host_storage")

    def __init__(self) -> None:
        #: the host rows as the last batch left them (hosts are few and busy)
        self._carried: Carried[RowSet] = Carried()

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        """A batch's host rows folded in memory (a host's claims and beats in one batch
        are one row written); capabilities and storage as statements, in order."""
        hosts = self._carried.take(tx.since) or RowSet(HOSTS)
        mine = [(ev.stream[len(_PREFIX):], decoder.decode(ev.data)) for ev in events
                if (decoder := _DECODERS.get(ev.type)) is not None
                and ev.stream.startswith(_PREFIX)]
        if mine:
            await hosts.load(tx, "id", [host_id for host_id, _ in mine])
            for host_id, event in mine:
                await _apply_one(tx, hosts, host_id, event)
            await hosts.flush(tx)
        self._carried.keep(hosts, events[-1].position, len(hosts))


_PREFIX = f"{KIND}:"
HOSTS = Table(TABLE, (
    ("id", "text"), ("state", "text"), ("vcpus", "bigint"), ("ram_mb", "bigint"),
    ("disk_gb", "bigint"), ("used_vcpus", "bigint"), ("used_ram_mb", "bigint"),
    ("used_disk_gb", "bigint"), ("instances", "bigint"), ("last_heartbeat", "text"),
    ("cpu_ratio", "double precision"), ("ram_ratio", "double precision"),
    ("disk_ratio", "double precision")))


async def _apply_one(tx: SqlTx, hosts: RowSet, host_id: str, event: msgspec.Struct) -> None:
    row = hosts.get(host_id)
    match event:
        case HostRegistered(capacity=c, ratios=r, at=at) | HostInventoryChanged(
            capacity=c, ratios=r, at=at
        ):
            inventory = {"vcpus": c.vcpus, "ram_mb": c.ram_mb, "disk_gb": c.disk_gb,
                         "cpu_ratio": r.cpu, "ram_ratio": r.ram, "disk_ratio": r.disk}
            if row is None:  # first report: up, nothing used yet
                hosts.put({"id": host_id, "state": UP, **inventory, "used_vcpus": 0,
                           "used_ram_mb": 0, "used_disk_gb": 0, "instances": 0,
                           "last_heartbeat": _iso(at)})
            else:
                _change(hosts, row, **inventory)
            networks = None if c.networks is None else _JSON.encode(c.networks).decode()
            await tx.execute(_NETWORKS, host_id, networks)
            if c.storage is not None:
                await tx.execute(_STORAGE, host_id, _JSON.encode(c.storage).decode())
        case HostClaimed(volume_gb=g) | HostReleased(volume_gb=g) if g:
            sign = 1 if isinstance(event, HostClaimed) else -1
            await tx.execute(_STORAGE_USAGE, host_id, sign * g, sign)
        case _ if row is None:
            return  # as an UPDATE of no row: a host that never reported
        case HostHeartbeat(at=at):
            _change(hosts, row, last_heartbeat=_iso(at))
        case HostUp(at=at):
            _change(hosts, row, state=UP, last_heartbeat=_iso(at))
        case HostDown():
            _change(hosts, row, state=DOWN)
        case HostClaimed(vcpus=v, ram_mb=m, disk_gb=d):
            _use(hosts, row, v, m, d, 1)
        case HostReleased(vcpus=v, ram_mb=m, disk_gb=d):
            _use(hosts, row, -v, -m, -d, -1)


def _change(hosts: RowSet, row: dict[str, Any], **columns: Any) -> None:
    row.update(columns)
    hosts.changed(row)


def _use(hosts: RowSet, row: dict[str, Any], vcpus: int, ram_mb: int, disk_gb: int,
         instances: int) -> None:
    _change(hosts, row, used_vcpus=row["used_vcpus"] + vcpus,
            used_ram_mb=row["used_ram_mb"] + ram_mb, used_disk_gb=row["used_disk_gb"] + disk_gb,
            instances=row["instances"] + instances)


class QueryStore(Protocol):
    """What reading the table needs: a read-only query (both of our stores have it)."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


def _row(row: tuple[Any, ...]) -> HostView:
    (hid, state, vcpus, ram, disk, uv, ur, ud, n, beat, cr, rr, dr, nets, storage, used_gb,
     volumes) = row
    return HostView(
        id=hid, state=state,
        capacity=Capacity(vcpus=int(vcpus), ram_mb=int(ram), disk_gb=int(disk),
                          networks=_CAPABILITIES.decode(nets) if nets else None,
                          storage=_STORAGE_CAPACITY.decode(storage) if storage else None),
        used=Resources(vcpus=int(uv), ram_mb=int(ur), disk_gb=int(ud),
                       volume_gb=int(used_gb or 0)),
        instances=int(n),
        last_heartbeat=dt.datetime.fromisoformat(beat) if beat else None,
        ratios=AllocationRatios(cpu=float(cr), ram=float(rr), disk=float(dr)),
        volumes=int(volumes or 0),
    )


async def read_hosts(store: QueryStore) -> list[HostView]:
    """Every host in the table, by id."""
    rows = await store.query(f"SELECT {_COLUMNS}{_FROM} ORDER BY h.id")
    return [_row(r) for r in rows]


async def read_host(store: QueryStore, host_id: str) -> HostView | None:
    """One host's row, or None when it never reported."""
    rows = await store.query(f"SELECT {_COLUMNS}{_FROM} WHERE h.id = $1", host_id)
    return _row(rows[0]) if rows else None
