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


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process (clock ticks), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class CpuMeter:
    """CPU seconds spent by named groups of processes between ``start()`` and ``stop()``.

    A group is the processes whose command line contains one of its markers (a database
    name picks that database's PostgreSQL backends, ``beam.smp`` the broker), or explicit
    pids. Shared processes (the broker) count whatever else they did meanwhile.
    """

    def __init__(self, groups: dict[str, list[str | int]]) -> None:
        self.groups = groups
        self._start: dict[int, tuple[str, int]] = {}

    def _sample(self) -> dict[int, tuple[str, int]]:
        found: dict[int, tuple[str, int]] = {}
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        for group, markers in self.groups.items():
            for marker in markers:
                if isinstance(marker, int):
                    found[marker] = (group, _cpu_ticks(marker))
                    continue
                for pid in pids:
                    if int(pid) not in found and marker in _cmdline(pid):
                        found[int(pid)] = (group, _cpu_ticks(int(pid)))
        return found

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since ``start()``."""
        end = self._sample()
        hz = os.sysconf("SC_CLK_TCK")
        spent = dict.fromkeys(self.groups, 0.0)
        for pid, (group, ticks) in end.items():
            spent[group] += (ticks - self._start.get(pid, (group, 0))[1]) / hz
        return spent
