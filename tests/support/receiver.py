"""A real webhook receiver for tests: an aiohttp server that records every request and
answers what the test tells it to, verified with the Standard Webhooks reference library."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.support.backends import eventually
from tests.support.serve import free_port


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def verified(self, secret: str) -> dict[str, Any]:
        """The body, after the reference library checked the signature with ``secret``."""
        doc: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return doc


@dataclass
class Receiver:
    """Records POSTs to any path; ``answer(path, n)`` gives the status of the n-th request
    to a path (default 200); ``delay`` seconds before each answer."""

    got: list[Received] = field(default_factory=list)
    answer: Callable[[str, int], int] = lambda _path, _n: 200
    delay: float = 0.0
    url: str = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        n = sum(1 for r in self.got if r.path == request.path)
        status = self.answer(request.path, n)
        self.got.append(Received(request.path, dict(request.headers), body, time.time(),
                                 status))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=status)

    def accepted(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path and 200 <= r.status < 300]

    def documents(self, path: str, secret: str) -> list[dict[str, Any]]:
        """The verified bodies ``path`` accepted, in arrival order."""
        return [r.verified(secret) for r in self.accepted(path)]

    async def wait_for(self, path: str, count: int, timeout: float = 30.0) -> None:
        async def enough() -> bool:
            return len({r.headers["webhook-id"] for r in self.accepted(path)}) >= count
        await eventually(enough, timeout=timeout, what=f"{count} deliveries to {path}")


@asynccontextmanager
async def receiving(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    """Serve a receiver on a free loopback port until exit."""
    receiver = receiver or Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def per_stream(docs: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The versions each stream's documents arrived with, in arrival order."""
    seen: dict[str, list[int]] = {}
    for doc in docs:
        seen.setdefault(doc["stream"], []).append(doc["version"])
    return seen
