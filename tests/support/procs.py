"""Running real ``orrery`` processes in tests, and killing them for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Procs:
    """Starts ``orrery <role>`` processes against given backends; stops them all at exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def start(self, role: str) -> subprocess.Popen[bytes]:
        self.count += 1
        log = open(self.log_dir / f"{role}-{self.count}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "orrery.cli", role],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        self.running.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no clean shutdown, exactly like a crash."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def log_lines(self, proc: subprocess.Popen[bytes]) -> list[dict[str, object]]:
        """The JSON log lines one process has written so far."""
        index = self.running.index(proc) + 1
        path = next(self.log_dir.glob(f"*-{index}.log"))
        lines = []
        for raw in path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.log_dir.glob("*.log"))

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def orrery_processes(
    *, pg_dsn: str, amqp_url: str, prefix: str, shards: int, log_dir: Path
) -> Iterator[Procs]:
    env = dict(os.environ)
    env.update(
        ORRERY_DATABASE_URL=pg_dsn,
        ORRERY_AMQP_URL=amqp_url,
        ORRERY_BUS_PREFIX=prefix,
        ORRERY_SHARDS=str(shards),
        ORRERY_KINDS="tests.support.counter:COUNTER",
        ORRERY_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",  # logs reach the file as they happen, even before a SIGKILL
    )
    procs = Procs(env, log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()
