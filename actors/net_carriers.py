"""The ``net_carriers`` projection: which hosts carry which network, kept as a count.

A host carries a network while a guest port of it (not one of the network's own
``network:*`` ports) is bound there (`actors.hostnet`). The host network planner asks
this for every touched network and every touched host on each round; reading it from
``net_ports`` would scan every port of the network, so the count per (network, host) is
folded here instead: ``net_carriers`` (one row per pair with at least one such port) and
``net_carrier_ports`` (each port's network, host and whether it is a guest's, so an
event that names only the port can move the count). Its own projection, so it folds the
whole log from its start wherever it is added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce
from operator import or_
from typing import Any, Protocol

import msgspec

from actors.port import PortBound, PortCreated, PortDeleted, PortUnbound, PortUpdated
from schemas import EventEnvelope
from store.protocol import SqlTx

PROJECTION_NAME = "net_carriers"
#: device owners of the ports a network owns itself (they make no host carry it)
NETWORK_OWNED = "network:"
_EVENTS: tuple[type[msgspec.Struct], ...] = (PortCreated, PortUpdated, PortBound, PortUnbound,
                                             PortDeleted)
_TAGS = {t.__struct_config__.tag for t in _EVENTS}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, _EVENTS))

DDL = (
    """CREATE TABLE IF NOT EXISTS net_carrier_ports (
        port_id TEXT PRIMARY KEY, network_id TEXT NOT NULL, host_id TEXT NOT NULL,
        guest INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS net_carriers (
        network_id TEXT NOT NULL, host_id TEXT NOT NULL, ports BIGINT NOT NULL,
        PRIMARY KEY (network_id, host_id))""",
    "CREATE INDEX IF NOT EXISTS net_carriers_host ON net_carriers (host_id)",
)
DROP = ("DROP TABLE IF EXISTS net_carrier_ports", "DROP TABLE IF EXISTS net_carriers")


def is_guest(device_owner: str) -> bool:
    return not device_owner.startswith(NETWORK_OWNED)


class CarriersProjection:
    """Folds port events into ``net_carriers`` (see the module)."""

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
        case PortCreated():
            await tx.execute(
                "INSERT INTO net_carrier_ports (port_id, network_id, host_id, guest)"
                " VALUES ($1, $2, '', $3) ON CONFLICT (port_id) DO NOTHING",
                e.port_id, e.network_id, int(is_guest(e.device_owner)))
        case PortUpdated():
            await _move(tx, e.port_id, None, is_guest(e.device_owner))
        case PortBound():
            await _move(tx, e.port_id, e.host_id, is_guest(e.device_owner))
        case PortUnbound():
            await _move(tx, e.port_id, "", True)
        case PortDeleted():
            await _move(tx, e.port_id, "", True)
            await tx.execute("DELETE FROM net_carrier_ports WHERE port_id = $1", e.port_id)


async def _move(tx: SqlTx, port_id: str, host: str | None, guest: bool) -> None:
    """The port is now on ``host`` (None: where it was) and a guest's or not: the
    carrier counts follow."""
    rows = await tx.fetch("SELECT network_id, host_id, guest FROM net_carrier_ports"
                          " WHERE port_id = $1", port_id)
    if not rows:
        return
    network_id, old_host, old_guest = str(rows[0][0]), str(rows[0][1]), bool(rows[0][2])
    new_host = old_host if host is None else host
    if (new_host, guest) == (old_host, old_guest):
        return
    await tx.execute("UPDATE net_carrier_ports SET host_id = $2, guest = $3"
                     " WHERE port_id = $1", port_id, new_host, int(guest))
    if old_host and old_guest:
        await _count(tx, network_id, old_host, -1)
    if new_host and guest:
        await _count(tx, network_id, new_host, 1)


async def _count(tx: SqlTx, network_id: str, host: str, delta: int) -> None:
    await tx.execute(
        "INSERT INTO net_carriers (network_id, host_id, ports) VALUES ($1, $2, $3)"
        " ON CONFLICT (network_id, host_id) DO UPDATE SET ports = net_carriers.ports"
        " + excluded.ports", network_id, host, delta)
    if delta < 0:
        await tx.execute("DELETE FROM net_carriers WHERE network_id = $1 AND host_id = $2"
                         " AND ports <= 0", network_id, host)


# -- reads ---------------------------------------------------------------------------------


class QueryStore(Protocol):
    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(f'${i + 1}' for i in range(len(values)))})"


async def carriers_of(store: QueryStore, network_ids: Sequence[str]
                      ) -> Mapping[str, frozenset[str]]:
    """The hosts carrying each of ``network_ids`` (every id is a key)."""
    found: dict[str, set[str]] = {n: set() for n in network_ids}
    if network_ids:
        rows = await store.query("SELECT network_id, host_id FROM net_carriers WHERE "
                                 + _in("network_id", network_ids), *network_ids)
        for network_id, host in rows:
            found[str(network_id)].add(str(host))
    return {n: frozenset(h) for n, h in found.items()}


async def carried_by(store: QueryStore, hosts: Sequence[str]) -> set[str]:
    """The networks any of ``hosts`` carries."""
    if not hosts:
        return set()
    rows = await store.query("SELECT DISTINCT network_id FROM net_carriers WHERE "
                             + _in("host_id", hosts), *hosts)
    return {str(r[0]) for r in rows}
