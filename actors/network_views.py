"""The ``networking`` projection: networks, subnets and ports as query tables.

One projection folds the three kinds (so a write waits for one checkpoint): tables
``net_networks``, ``net_subnets``, ``net_ports`` and ``net_port_ips`` (one row per
fixed IP, for the ``fixed_ips=subnet_id=…`` / ``ip_address=…`` filters). Lists, DNS
servers, pools and host routes are JSON text, shown and never filtered on in SQL.
Booleans are 0/1; timestamps ISO text; deleted resources lose their rows, as Neutron
hard-deletes. ``revision_number`` counts the changes of a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Any, Protocol

import msgspec

from actors import ipam
from actors.network import NetworkCreated, NetworkDeleted, NetworkUpdated
from actors.port import (
    FixedIp,
    PortBound,
    PortCreated,
    PortDeleted,
    PortIpBound,
    PortIpReleased,
    PortPlugged,
    PortUnbound,
    PortUpdated,
)
from actors.subnet import HostRoute, SubnetCreated, SubnetDeleted, SubnetUpdated
from schemas import EventEnvelope
from store.protocol import SqlTx

PROJECTION_NAME = "networking"
_EVENTS: tuple[type[msgspec.Struct], ...] = (
    NetworkCreated, NetworkUpdated, NetworkDeleted, SubnetCreated, SubnetUpdated,
    SubnetDeleted, PortCreated, PortUpdated, PortDeleted, PortIpBound, PortIpReleased,
    PortBound, PortPlugged, PortUnbound)
_TAGS = {t.__struct_config__.tag for t in _EVENTS}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, _EVENTS))
_JSON = msgspec.json.Encoder()

NET_COLUMNS = ("id, project_id, name, description, admin_state_up, shared, network_type,"
               " physical_network, segmentation_id, mtu, created_at, updated_at, revision")
SUBNET_COLUMNS = ("id, network_id, project_id, name, description, cidr, gateway_ip,"
                  " enable_dhcp, pools, dns_nameservers, host_routes, created_at,"
                  " updated_at, revision")
PORT_COLUMNS = ("id, network_id, project_id, name, description, mac_address, fixed_ips,"
                " device_id, device_owner, admin_state_up, status, host_id, created_at,"
                " updated_at, revision")

DDL = (
    """CREATE TABLE IF NOT EXISTS net_networks (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL,
        description TEXT NOT NULL, admin_state_up INTEGER NOT NULL, shared INTEGER NOT NULL,
        network_type TEXT NOT NULL, physical_network TEXT, segmentation_id BIGINT,
        mtu INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        revision INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS net_networks_project ON net_networks (project_id)",
    "CREATE INDEX IF NOT EXISTS net_networks_name ON net_networks (name)",
    """CREATE TABLE IF NOT EXISTS net_subnets (
        id TEXT PRIMARY KEY, network_id TEXT NOT NULL, project_id TEXT NOT NULL,
        name TEXT NOT NULL, description TEXT NOT NULL, cidr TEXT NOT NULL, gateway_ip TEXT,
        enable_dhcp INTEGER NOT NULL, pools TEXT NOT NULL, dns_nameservers TEXT NOT NULL,
        host_routes TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        revision INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS net_subnets_network ON net_subnets (network_id)",
    """CREATE TABLE IF NOT EXISTS net_ports (
        id TEXT PRIMARY KEY, network_id TEXT NOT NULL, project_id TEXT NOT NULL,
        name TEXT NOT NULL, description TEXT NOT NULL, mac_address TEXT NOT NULL,
        fixed_ips TEXT NOT NULL, device_id TEXT NOT NULL, device_owner TEXT NOT NULL,
        admin_state_up INTEGER NOT NULL, status TEXT NOT NULL, host_id TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revision INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS net_ports_network ON net_ports (network_id)",
    "CREATE INDEX IF NOT EXISTS net_ports_device ON net_ports (device_id)",
    """CREATE TABLE IF NOT EXISTS net_port_ips (
        port_id TEXT NOT NULL, subnet_id TEXT NOT NULL, ip_address TEXT NOT NULL,
        PRIMARY KEY (port_id, subnet_id, ip_address))""",
    "CREATE INDEX IF NOT EXISTS net_port_ips_subnet ON net_port_ips (subnet_id, ip_address)",
)
DROP = tuple(f"DROP TABLE IF EXISTS {t}"
             for t in ("net_networks", "net_subnets", "net_ports", "net_port_ips"))


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: object) -> str:
    return _JSON.encode(value).decode()


class NetworkingProjection:
    """Folds network, subnet and port events into the ``net_*`` tables."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    #: all it folds (a rebuild reads only these)
    types = tuple(sorted(map(str, _TAGS)))
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            if ev.type in _TAGS:
                await _apply(tx, _DECODER.decode(ev.data))


async def _apply(tx: SqlTx, e: msgspec.Struct) -> None:
    match e:
        case NetworkCreated():
            await tx.execute(
                f"INSERT INTO net_networks ({NET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6,"
                " $7, $8, $9, $10, $11, $11, 0) ON CONFLICT (id) DO NOTHING",
                e.network_id, e.project_id, e.name, e.description, int(e.admin_state_up),
                int(e.shared), e.network_type, e.physical_network, e.segmentation_id, e.mtu,
                _stamp(e.at))
        case NetworkUpdated():
            await tx.execute(
                "UPDATE net_networks SET name = $2, description = $3, admin_state_up = $4,"
                " shared = $5, updated_at = $6, revision = revision + 1 WHERE id = $1",
                e.network_id, e.name, e.description, int(e.admin_state_up), int(e.shared),
                _stamp(e.at))
        case NetworkDeleted():
            await tx.execute("DELETE FROM net_networks WHERE id = $1", e.network_id)
        case SubnetCreated() | SubnetUpdated() | SubnetDeleted():
            await _apply_subnet(tx, e)
        case _:
            await _apply_port(tx, e)


async def _apply_subnet(tx: SqlTx, e: msgspec.Struct) -> None:
    match e:
        case SubnetCreated():
            await tx.execute(
                f"INSERT INTO net_subnets ({SUBNET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6,"
                " $7, $8, $9, $10, $11, $12, $12, 0) ON CONFLICT (id) DO NOTHING",
                e.subnet_id, e.network_id, e.project_id, e.name, e.description, e.cidr,
                e.gateway_ip, int(e.enable_dhcp), _json(e.pools), _json(e.dns_nameservers),
                _json(e.host_routes), _stamp(e.at))
        case SubnetUpdated():
            await tx.execute(
                "UPDATE net_subnets SET name = $2, description = $3, enable_dhcp = $4,"
                " dns_nameservers = $5, host_routes = $6, updated_at = $7,"
                " revision = revision + 1 WHERE id = $1",
                e.subnet_id, e.name, e.description, int(e.enable_dhcp),
                _json(e.dns_nameservers), _json(e.host_routes), _stamp(e.at))
        case SubnetDeleted():
            await tx.execute("DELETE FROM net_subnets WHERE id = $1", e.subnet_id)


_TOUCH = ", updated_at = $2, revision = revision + 1 WHERE id = $1"


async def _apply_port(tx: SqlTx, e: msgspec.Struct) -> None:
    match e:
        case PortCreated():
            await tx.execute(
                f"INSERT INTO net_ports ({PORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " $8, $9, $10, 'DOWN', '', $11, $11, 0) ON CONFLICT (id) DO NOTHING",
                e.port_id, e.network_id, e.project_id, e.name, e.description, e.mac_address,
                _json(e.fixed_ips), e.device_id, e.device_owner, int(e.admin_state_up),
                _stamp(e.at))
        case PortUpdated():
            await tx.execute(
                "UPDATE net_ports SET name = $3, description = $4, admin_state_up = $5,"
                " device_id = $6, device_owner = $7, fixed_ips = $8" + _TOUCH,
                e.port_id, _stamp(e.at), e.name, e.description, int(e.admin_state_up),
                e.device_id, e.device_owner, _json(e.fixed_ips))
        case PortIpBound():
            await tx.execute(
                "INSERT INTO net_port_ips (port_id, subnet_id, ip_address) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING", e.port_id, e.subnet_id, e.ip_address)
        case PortIpReleased():
            await tx.execute(
                "DELETE FROM net_port_ips WHERE port_id = $1 AND subnet_id = $2"
                " AND ip_address = $3", e.port_id, e.subnet_id, e.ip_address)
        case PortBound():
            await tx.execute(
                "UPDATE net_ports SET host_id = $3, device_id = $4, device_owner = $5,"
                " status = 'DOWN'" + _TOUCH,
                e.port_id, _stamp(e.at), e.host_id, e.device_id, e.device_owner)
        case PortPlugged():
            await tx.execute("UPDATE net_ports SET status = 'ACTIVE'" + _TOUCH,
                             e.port_id, _stamp(e.at))
        case PortUnbound():
            await tx.execute("UPDATE net_ports SET host_id = '', device_id = '',"
                             " device_owner = '', status = 'DOWN'" + _TOUCH,
                             e.port_id, _stamp(e.at))
        case PortDeleted():
            await tx.execute("DELETE FROM net_ports WHERE id = $1", e.port_id)
            await tx.execute("DELETE FROM net_port_ips WHERE port_id = $1", e.port_id)


# -- reads ---------------------------------------------------------------------------------


class QueryStore(Protocol):
    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


class NetworkView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    project_id: str
    name: str
    description: str
    admin_state_up: bool
    shared: bool
    network_type: str
    physical_network: str | None
    segmentation_id: int | None
    mtu: int
    created_at: str
    updated_at: str
    revision: int


class SubnetView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    network_id: str
    project_id: str
    name: str
    description: str
    cidr: str
    gateway_ip: str | None
    enable_dhcp: bool
    pools: ipam.Ranges
    dns_nameservers: list[str]
    host_routes: list[HostRoute]
    created_at: str
    updated_at: str
    revision: int


class PortView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    network_id: str
    project_id: str
    name: str
    description: str
    mac_address: str
    fixed_ips: list[FixedIp]
    device_id: str
    device_owner: str
    admin_state_up: bool
    status: str
    host_id: str
    created_at: str
    updated_at: str
    revision: int


_RANGES = msgspec.json.Decoder(ipam.Ranges)
_STRS = msgspec.json.Decoder(list[str])
_ROUTES = msgspec.json.Decoder(list[HostRoute])
_IPS = msgspec.json.Decoder(list[FixedIp])


def _network(r: tuple[Any, ...]) -> NetworkView:
    return NetworkView(id=r[0], project_id=r[1], name=r[2], description=r[3],
                       admin_state_up=bool(r[4]), shared=bool(r[5]), network_type=r[6],
                       physical_network=r[7],
                       segmentation_id=None if r[8] is None else int(r[8]), mtu=int(r[9]),
                       created_at=r[10], updated_at=r[11], revision=int(r[12]))


def _subnet(r: tuple[Any, ...]) -> SubnetView:
    return SubnetView(id=r[0], network_id=r[1], project_id=r[2], name=r[3], description=r[4],
                      cidr=r[5], gateway_ip=r[6], enable_dhcp=bool(r[7]),
                      pools=_RANGES.decode(r[8]), dns_nameservers=_STRS.decode(r[9]),
                      host_routes=_ROUTES.decode(r[10]), created_at=r[11], updated_at=r[12],
                      revision=int(r[13]))


def _port(r: tuple[Any, ...]) -> PortView:
    return PortView(id=r[0], network_id=r[1], project_id=r[2], name=r[3], description=r[4],
                    mac_address=r[5], fixed_ips=_IPS.decode(r[6]), device_id=r[7],
                    device_owner=r[8], admin_state_up=bool(r[9]), status=r[10], host_id=r[11],
                    created_at=r[12], updated_at=r[13], revision=int(r[14]))


class Where:
    """An SQL ``WHERE`` built from equality filters, with numbered placeholders."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[object] = []

    def eq(self, column: str, value: object) -> Where:
        self.args.append(value)
        self.parts.append(f"{column} = ${len(self.args)}")
        return self

    def any_of(self, column: str, values: Sequence[object]) -> Where:
        """``column`` equal to one of ``values`` (several values of one filter, as Neutron
        lets ``?id=a&id=b`` mean either)."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.parts.append(f"{column} IN ({', '.join(marks)})" if marks else "1 = 0")
        return self

    def raw(self, sql: str, *values: object) -> Where:
        """A condition with ``{}`` placeholders, filled with numbered ones for ``values``."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.parts.append(sql.format(*marks))
        return self

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.parts)) if self.parts else ""


async def read_networks(store: QueryStore, where: Where) -> list[NetworkView]:
    rows = await store.query(f"SELECT {NET_COLUMNS} FROM net_networks{where.sql()}"
                             " ORDER BY created_at, id", *where.args)
    return [_network(r) for r in rows]


async def read_subnets(store: QueryStore, where: Where) -> list[SubnetView]:
    rows = await store.query(f"SELECT {SUBNET_COLUMNS} FROM net_subnets{where.sql()}"
                             " ORDER BY created_at, id", *where.args)
    return [_subnet(r) for r in rows]


async def read_ports(store: QueryStore, where: Where) -> list[PortView]:
    rows = await store.query(f"SELECT {PORT_COLUMNS} FROM net_ports{where.sql()}"
                             " ORDER BY created_at, id", *where.args)
    return [_port(r) for r in rows]


async def subnet_ids_of(store: QueryStore, network_ids: Sequence[str]) -> dict[str, list[str]]:
    """The subnets of each network (for a network's ``subnets`` list)."""
    if not network_ids:
        return {}
    where = Where().any_of("network_id", list(network_ids))
    rows = await store.query(f"SELECT network_id, id FROM net_subnets{where.sql()}"
                             " ORDER BY created_at, id", *where.args)
    found: dict[str, list[str]] = {n: [] for n in network_ids}
    for network_id, subnet_id in rows:
        found[network_id].append(subnet_id)
    return found
