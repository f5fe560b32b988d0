"""Network namespaces for tests: make them, run commands in them, remove them and
everything a HostNetwork driver left in them (DHCP namespaces, dnsmasq processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from pyroute2 import netns

from tests.conftest import REQUIRE

#: Programs the namespace tests run.
NEEDED = ("ip", "dnsmasq")


def need_netns(*programs: str) -> None:
    """Fail (ORRERY_REQUIRE_SERVICES=1) or skip unless root can make namespaces and the
    programs are installed."""
    problems = [] if os.geteuid() == 0 else ["network namespaces need root"]
    problems += [f"{p} is not installed" for p in (*NEEDED, *programs) if not shutil.which(p)]
    if not problems:
        return
    message = "; ".join(problems)
    if REQUIRE:
        pytest.fail(message + " and ORRERY_REQUIRE_SERVICES=1")
    pytest.skip(message + " (set ORRERY_REQUIRE_SERVICES=1 to make this a failure)")


def unique(prefix: str) -> str:
    """A namespace name nobody else uses."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def sh(*args: str, check: bool = True, timeout: float = 30.0) -> str:
    """Run a command; its stdout. A non-zero exit fails the test when ``check``."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {err.decode()}")
    return out.decode()


async def in_ns(ns: str, *args: str, check: bool = True, timeout: float = 30.0) -> str:
    """Run a command inside namespace ``ns``."""
    return await sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


def stop_dnsmasqs(state_dir: Path) -> None:
    """Kill every dnsmasq whose pid file lies under ``state_dir``."""
    if not state_dir.is_dir():
        return
    for pid_file in state_dir.glob("*/pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if str(pid_file).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def remove_namespaces(prefix: str) -> None:
    """Remove every namespace whose name starts with ``prefix`` (and what is in it)."""
    for name in netns.listnetns():
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                netns.remove(name)
