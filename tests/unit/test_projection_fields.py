"""A projection that names the envelope fields it reads (``fields``) reads no others: each
of the cloud's projections folds every recorded history (tests/histories) from envelopes
that refuse any field it did not name. A rebuild on PostgreSQL reads only the named
columns of the log and hands over placeholders in the others
(tests/integration/test_pg_rebuild.py checks that)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.timers import TimerProjection
from orrery.services import cloud_kinds, cloud_projections, worker_projections
from orrery.wiring import event_types
from schemas import EventEnvelope
from store.projections import ALWAYS_READ, Projection, read_fields
from store.protocol import SqlTx
from store.sqlite import SqliteEventStore
from tests.unit.test_histories import HISTORIES, envelopes

PROJECTIONS: dict[str, Projection] = {
    p.name: p for p in [*cloud_projections(), *worker_projections(),
                        TimerProjection(lambda position, at: None)]}
SPARING = sorted(name for name, p in PROJECTIONS.items() if hasattr(p, "fields"))


class Guarded:
    """An envelope that refuses to show the fields not in ``allowed``."""

    __slots__ = ("_allowed", "_envelope")

    def __init__(self, envelope: EventEnvelope, allowed: frozenset[str]) -> None:
        self._envelope, self._allowed = envelope, allowed

    def __getattr__(self, name: str) -> Any:
        if name not in self._allowed:
            raise AssertionError(f"read the envelope's {name!r}, not among its fields")
        return getattr(self._envelope, name)


def recorded() -> list[EventEnvelope]:
    """Every recorded history's events, each history on a stream of its own, in one log."""
    log: list[EventEnvelope] = []
    for path in HISTORIES:
        history = json.loads(path.read_text())
        for event in envelopes(history):
            log.append(EventEnvelope(
                event.event_id, event.stream, event.version, len(log) + 1, event.type,
                event.data, event.occurred_at, user_id="u-recorded"))
    return log


async def fold_guarded(projection: Projection, events: Sequence[EventEnvelope],
                       tmp_path: Path) -> None:
    """``projection`` folds ``events`` on a fresh SQLite log, from guarded envelopes."""
    fields = read_fields([projection])
    assert fields is not None
    guarded: Any = [Guarded(e, fields) for e in events]
    store = await SqliteEventStore.open(str(tmp_path / "log.sqlite"),
                                        event_types(cloud_kinds()))
    try:
        await store.run_ddl(projection.ddl)
        async with store.projections_tx({projection.name: 0}, events[-1].position) as tx:
            await projection.apply(tx, guarded)
    finally:
        await store.close()


def test_the_cloud_projections_that_a_rebuild_reads_sparingly_for() -> None:
    """The rebuild benchmark's projections (and every other of the cloud's) name their
    fields, so the check below cannot pass for want of any."""
    assert {"instances_v3", "timers"} <= set(SPARING)


@pytest.mark.parametrize("name", SPARING)
async def test_a_projection_reads_only_the_envelope_fields_it_names(
    name: str, tmp_path: Path,
) -> None:
    await fold_guarded(PROJECTIONS[name], recorded(), tmp_path)


class ReadsTheTime:
    """Claims to read nothing beyond what every projection gets, then reads the time."""

    name = "reads_the_time"
    ddl: Sequence[str] = ("CREATE TABLE IF NOT EXISTS reads_the_time (x TEXT)",)
    drop: Sequence[str] = ("DROP TABLE IF EXISTS reads_the_time",)
    fields: tuple[str, ...] = ()

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            await tx.execute("INSERT INTO reads_the_time (x) VALUES ($1)",
                             event.occurred_at.isoformat())


async def test_the_guard_catches_a_projection_reading_a_field_it_did_not_name(
    tmp_path: Path,
) -> None:
    assert ALWAYS_READ == {"stream", "type", "data", "position"}
    with pytest.raises(AssertionError, match="occurred_at"):
        await fold_guarded(ReadsTheTime(), recorded(), tmp_path)
