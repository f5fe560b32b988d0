"""The ``orrery`` command as an operator runs it: all-in-one on embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.procs import ROOT
from tests.support.serve import free_port


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_up_runs_all_in_one_and_serves_health_and_metrics(tmp_path: Path) -> None:
    """`orrery up` needs nothing running: it opens a SQLite log in its data directory,
    answers /healthz, and exposes the runtime, bus, log, relay and projection metrics."""
    port = free_port()
    env = dict(os.environ, ORRERY_API_PORT=str(port), ORRERY_LOG_FORMAT="json",
               PYTHONPATH=str(ROOT))
    env.pop("ORRERY_DATABASE_URL", None)
    env.pop("ORRERY_AMQP_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "orrery.cli", "up"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = json.loads(_get(f"http://127.0.0.1:{port}/healthz"))
                break
            except OSError:
                assert proc.poll() is None, "orrery up exited"
                assert time.monotonic() < deadline, "orrery up never answered"
                time.sleep(0.1)
        assert health == {"status": "ok"}
        metrics = _get(f"http://127.0.0.1:{port}/metrics")
        for name in ("orrery_actor_mailbox_depth", "orrery_actor_messages_total",
                     "orrery_store_append_seconds", "orrery_store_batch_events",
                     "orrery_relay_lag_seconds", "orrery_projection_lag_events",
                     "orrery_dead_letters_total"):
            assert f"# HELP {name}" in metrics, name
        assert (tmp_path / "var" / "orrery.sqlite").exists()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert any(line["event"] == "orrery_started" for line in lines)
    assert proc.returncode == 0
