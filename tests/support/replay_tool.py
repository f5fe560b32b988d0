"""Running ``orrery replay …`` as an operator does: a process of its own on a database."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from tests.support.procs import ROOT

TOOL_TIMEOUT = 120.0


@dataclass
class Ran:
    """What one run of the tool printed, and how it exited."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def tool_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ORRERY_DATABASE_URL", None)
    return env


async def replay(*args: str) -> Ran:
    """``orrery replay ARGS`` in a subprocess, while the caller's loop goes on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orrery.cli", "replay", *args, cwd=ROOT, env=tool_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(TOOL_TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def database_url(which: str, tmp_path: Any, pg_dsn: str | None) -> str:
    """The URL of the log ``running_cloud`` opened on ``which`` backends."""
    if which == "embedded":
        return f"sqlite:///{tmp_path / 'log.sqlite'}"
    assert pg_dsn is not None
    return pg_dsn


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``orrery.cli.main`` configures logging for the process (the tool logs warnings
    only): put structlog and the root logger back for the tests that follow."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
