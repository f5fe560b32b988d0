"""A lean HTTP/1.1 client for webhook POSTs: only what a delivery needs, and cheap.

A delivery needs one thing from the receiver: the status of its answer. aiohttp's client
spends most of a dispatcher's time per POST (timers, tracing hooks, cookie jar, header
multidicts); this one writes the request in one go and parses the answer's status line,
the headers that frame its body, and skips the body (at most ``max_body`` bytes are
read; a longer one closes the connection). Connections are kept alive per destination
and reused; a reused one that turns out closed before anything was read is replaced once.

Every new connection resolves the host and applies the `DestinationPolicy` to each
address before connecting, so a name that resolves elsewhere later (DNS rebinding) still
cannot reach a forbidden address. https uses the default TLS context (certificates and
host names verified). Redirects are not followed: a 3xx is just a status.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

from webhooks.destinations import DestinationPolicy, DestinationRefused, resolve

#: the most header bytes an answer may have
MAX_HEADER = 64 * 1024
_Key = tuple[str, str, int]


class ProtocolError(ConnectionError):
    """The receiver's answer is not HTTP/1.x as this client reads it."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer parsed as it comes."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._headers_done = False
        #: body bytes still to skip (Content-Length), -1 chunked, -2 until the close
        self._left = 0
        self._skipped = 0
        self.got_bytes = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._headers_done and self._left == -2:
                self.reusable = False
                self._done()
            else:
                self._waiter.set_exception(ConnectionError(
                    f"connection closed before the answer ended{f': {exc}' if exc else ''}"))

    # -- requests ------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._buf.clear()
        self._headers_done, self._status, self._left, self.got_bytes = False, 0, 0, False
        self._skipped = 0
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing -------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._waiter is None or self._waiter.done():
            if self._buf:  # bytes nobody asked for: the connection cannot be trusted
                self.reusable = False
                self.close()
            return
        if not self._headers_done and not self._head():
            return
        self._body()

    def _head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER:
                raise ProtocolError("the answer's headers are too long")
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[:end + 4]
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(parts[1])
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return self._head() if self._buf.find(b"\r\n\r\n") >= 0 else False
        length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise ProtocolError("a bad Content-Length") from None
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = close or b"close" in value.lower()
                close = close and b"keep-alive" not in value.lower()
        self._status, self._headers_done = status, True
        if close:
            self.reusable = False
        if status in (204, 304):
            self._left = 0
        elif chunked:
            self._left = -1
        elif length is not None:
            self._left = length
            if length > self.max_body:  # not worth reading: the status is all we need
                self.reusable = False
                self._left = 0
                self._buf.clear()
        else:
            self._left, self.reusable = -2, False
        return True

    def _body(self) -> None:
        if self._left == -2:  # until the close: skip, and stop early when too long
            self._skipped += len(self._buf)
            self._buf.clear()
            if self._skipped > self.max_body:
                self._done()
            return
        if self._left == -1:
            self._chunks()
            return
        take = min(self._left, len(self._buf))
        del self._buf[:take]
        self._left -= take
        if self._left == 0:
            self._done()

    def _chunks(self) -> None:
        while True:
            end = self._buf.find(b"\r\n")
            if end < 0:
                return
            try:
                size = int(bytes(self._buf[:end]).split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError("a bad chunk size") from None
            if size == 0:  # the last chunk, then trailers up to an empty line
                tail = self._buf.find(b"\r\n\r\n", end)
                if tail < 0:
                    return
                del self._buf[:tail + 4]
                self._done()
                return
            if len(self._buf) < end + 2 + size + 2:
                return
            del self._buf[:end + 2 + size + 2]
            self._skipped += size
            if self._skipped > self.max_body:
                self.reusable = False
                self._done()
                return

    def _done(self) -> None:
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result(self._status)
        if self._buf:
            self.reusable = False

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()


class WebhookHttp:
    """POSTs to webhook destinations over kept-alive connections (see the module doc)."""

    def __init__(self, policy: DestinationPolicy, *, max_body: int = 64 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.max_body = max_body
        self._ssl = ssl_context
        self._idle: dict[_Key, list[_Connection]] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The answer's status. Raises OSError (DestinationRefused, ConnectionError, ...)
        when there is none; the caller bounds the time (a cancelled POST's connection is
        closed)."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise DestinationRefused(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        head = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
                f"Content-Length: {len(body)}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in headers.items()
                 if k.lower() not in ("host", "content-length", "content-type")]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for reused in (True, False):
            conn = self._take(key) if reused else None
            if conn is None:
                reused = False
                conn = await self._connect(key)
            try:
                status = await conn.send(request)
            except ConnectionError:
                conn.close()
                if reused and not conn.got_bytes:
                    continue  # the receiver had closed the kept-alive connection
                raise
            except BaseException:
                conn.close()
                raise
            if conn.reusable and not conn.closed:
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
            return status
        raise AssertionError("unreachable")

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        addresses = await resolve(host, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for address in addresses:
            problem = self.policy.refusal(address)
            if problem is not None:
                raise DestinationRefused(f"destination refused: {problem}")
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        for address in addresses:  # the first that answers, as a browser would
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_body), str(address), port, ssl=context,
                    server_hostname=host if context is not None else None)
                return conn
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    async def close(self) -> None:
        """Close every kept-alive connection."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
