"""Small shared helpers of the benchmarks: fresh databases, payloads, percentiles, result lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import asyncpg
import msgspec

ADMIN_DSN = os.environ.get("ORRERY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class Payload(msgspec.Struct, frozen=True, kw_only=True, tag="bench.instance_state"):
    """The ~300-byte event payload of /work/shared/tools/raw/pg_append.py."""

    instance_id: str
    host: str
    flavor: dict[str, object]
    image_ref: str
    state: str
    task_state: str | None
    metadata: dict[str, object]


def make_payload(i: int) -> bytes:
    """One encoded Payload, as the raw ceiling script builds it."""
    return msgspec.json.encode(Payload(
        instance_id=str(uuid.uuid4()), host=f"compute-{i % 64:03d}",
        flavor={"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
        image_ref=str(uuid.uuid4()), state="building", task_state="spawning",
        metadata={"project": "demo", "seq": i, "note": "x" * 40}))


def dsn_for(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


@contextlib.asynccontextmanager
async def fresh_database(label: str) -> AsyncIterator[str]:
    """A new database for one benchmark run (its DSN), dropped afterwards."""
    name = f"orrery_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"', timeout=60)
        yield dsn_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60)
        await admin.close()


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def result_line(figures: dict[str, float], ceiling: float, ratio: float) -> str:
    """The last line every benchmark prints."""
    parts = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    return f"result {parts} ceiling={_fmt(ceiling)} ratio={ratio:.3f}"


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop (as production processes do) unless --no-uvloop is given."""
    if "--no-uvloop" in sys.argv:
        asyncio.run(main)
        return
    import uvloop

    uvloop.run(main)


def loop_name() -> str:
    return "asyncio" if "--no-uvloop" in sys.argv else "uvloop"
