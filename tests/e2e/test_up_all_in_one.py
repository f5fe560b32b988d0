"""`orrery up` as a newcomer runs it: one command, then the real openstack CLI works with
the clouds.yaml it wrote, and its in-process compute hosts are listed as hypervisors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_openstack_cli_identity import OPENSTACK
from tests.support.procs import ROOT
from tests.support.serve import free_port


def _openstack(clouds: Path, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [str(OPENSTACK), "--os-cloud", "orrery", *args, "-f", "json"],
        env=dict(os.environ, OS_CLIENT_CONFIG_FILE=str(clouds)),
        capture_output=True, text=True, timeout=60, check=True,
    )
    value: list[dict[str, object]] = json.loads(out.stdout)
    return value


def test_up_writes_clouds_yaml_and_its_hosts_are_hypervisors(tmp_path: Path) -> None:
    """`orrery up --port P --data-dir D --hosts 2` needs nothing running, writes
    D/clouds.yaml, and `openstack hypervisor list` shows host-1 and host-2 up."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    port, data = free_port(), tmp_path / "cloud"
    env = dict(os.environ, ORRERY_ADMIN_PASSWORD="s3cret", ORRERY_LOG_FORMAT="json",
               PYTHONPATH=str(ROOT))
    for name in ("ORRERY_DATABASE_URL", "ORRERY_AMQP_URL", "ORRERY_API_PORT", "ORRERY_DATA_DIR"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orrery.cli", "up", "--port", str(port), "--data-dir", str(data),
         "--hosts", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    clouds = data / "clouds.yaml"
    try:
        deadline = time.monotonic() + 30
        while not clouds.exists():
            assert proc.poll() is None, "orrery up exited"
            assert time.monotonic() < deadline, "no clouds.yaml written"
            time.sleep(0.2)
        assert "s3cret" in clouds.read_text() and oct(clouds.stat().st_mode)[-3:] == "600"
        assert (data / "orrery.sqlite").exists()
        deadline = time.monotonic() + 30
        while True:
            hosts = _openstack(clouds, "hypervisor", "list")
            names = sorted(str(h["Hypervisor Hostname"]) for h in hosts)
            if names == ["host-1", "host-2"] and all(h["State"] == "up" for h in hosts):
                break
            assert time.monotonic() < deadline, f"hypervisors never listed up: {hosts}"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
