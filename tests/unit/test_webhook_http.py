"""The webhook HTTP client against real servers on loopback: an aiohttp receiver (what
the deliveries meet in the wild), and a raw asyncio server for the framings and failures
aiohttp does not produce on demand (chunked bodies, close-delimited bodies, closed
kept-alive connections, garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import web

from webhooks.destinations import DestinationPolicy, DestinationRefused
from webhooks.http import ProtocolError, WebhookHttp

LOOPBACK = DestinationPolicy(allow_loopback=True)
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """An aiohttp app noting each POST's body and headers; /gone answers 410 with a body."""
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        if request.path == "/gone":
            return web.Response(status=410, text="gone " * 100)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def raw_server(answer: Answer) -> tuple[asyncio.Server, str, list[int]]:
    """A server that runs ``answer`` per connection; also counts the connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook", connections


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_posts_the_body_and_headers_and_reuses_the_connection(receiver: tuple[
        str, list[tuple[bytes, dict[str, str]]]]) -> None:
    url, seen = receiver
    http = WebhookHttp(LOOPBACK)
    try:
        statuses = [await http.post(f"{url}/hook?x=1", b'{"n":%d}' % i,
                                    {"webhook-id": f"msg_{i}"}) for i in range(3)]
        assert statuses == [204, 204, 204]
        assert [body for body, _ in seen] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert seen[2][1]["webhook-id"] == "msg_2"
        assert seen[0][1]["Content-Type"] == "application/json"
        # one kept-alive connection served all three
        assert sum(len(c) for c in http._idle.values()) == 1
        assert await http.post(f"{url}/gone", b"{}", {}) == 410
        assert await http.post(f"{url}/after", b"{}", {}) == 204  # the body was skipped
    finally:
        await http.close()


async def test_concurrent_posts_each_get_their_own_answer(receiver: tuple[
        str, list[tuple[bytes, dict[str, str]]]]) -> None:
    url, seen = receiver
    http = WebhookHttp(LOOPBACK)
    try:
        statuses = await asyncio.gather(*(http.post(f"{url}/{i}", b"{}", {})
                                          for i in range(50)))
        assert statuses == [204] * 50 and len(seen) == 50
    finally:
        await http.close()


async def test_chunked_and_close_delimited_answers_are_read_to_their_end() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n")
        await read_request(reader)  # the same connection is used again
        writer.write(b"HTTP/1.0 202 Accepted\r\n\r\nno length, ends at the close")
        await writer.drain()

    server, url, connections = await raw_server(answer)
    http = WebhookHttp(LOOPBACK)
    try:
        assert await http.post(url, b"{}", {}) == 200
        assert await http.post(url, b"{}", {}) == 202
        assert len(connections) == 1
    finally:
        await http.close()
        server.close()


async def test_a_kept_alive_connection_the_receiver_closed_is_replaced() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()  # then closes: the client still holds the connection

    server, url, connections = await raw_server(answer)
    http = WebhookHttp(LOOPBACK)
    try:
        assert await http.post(url, b"{}", {}) == 204
        await asyncio.sleep(0.05)
        assert await http.post(url, b"{}", {}) == 204
        assert len(connections) == 2
    finally:
        await http.close()
        server.close()


async def test_garbage_and_a_connection_dropped_mid_answer_are_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def dropped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    for answer, error in ((garbage, ProtocolError), (dropped, ConnectionError)):
        server, url, _ = await raw_server(answer)
        http = WebhookHttp(LOOPBACK)
        try:
            with pytest.raises(error):
                await http.post(url, b"{}", {})
        finally:
            await http.close()
            server.close()


async def test_the_policy_is_applied_when_connecting() -> None:
    http = WebhookHttp(DestinationPolicy())
    with pytest.raises(DestinationRefused, match="loopback"):
        await http.post("http://127.0.0.1:9/hook", b"{}", {})
    with pytest.raises(DestinationRefused, match="link-local"):
        await http.post("http://169.254.169.254/latest", b"{}", {})


async def test_nothing_listening_is_an_oserror_and_a_timeout_closes_the_connection() -> None:
    http = WebhookHttp(LOOPBACK)
    server, url, _ = await raw_server(lambda r, w: asyncio.sleep(5))
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await http.post(url, b"{}", {})
        assert not any(http._idle.values())
    finally:
        server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await http.post(f"http://127.0.0.1:{port}/hook", b"{}", {})


def test_works_on_uvloop_as_the_worker_runs_it() -> None:
    """The processes run on uvloop, whose transports are not asyncio's classes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> list[int]:
        server, url, _ = await raw_server(answer)
        http = WebhookHttp(LOOPBACK)
        try:
            return [await http.post(url, b"{}", {}) for _ in range(2)]
        finally:
            await http.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [200, 200]
