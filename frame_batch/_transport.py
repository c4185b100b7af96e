"""The HTTP transport under ``ApiClient``: keep-alive HTTP/1.1 on asyncio, framed by h11.

Why not httpx's own transport (httpcore): it cost about 1 ms of client CPU per request at
16 requests in flight, most of it in the pool's bookkeeping and in the anyio locks, cancel
scopes and ``sniffio`` look-ups around every step (encode/httpx#3215; the reliability notes
§4.1 measured 110–280 µs for aiohttp and 35–71 µs for a plain asyncio client). A bulk run
sends a few requests per batch and is often bound by that CPU on one event loop.

Here each connection is one ``asyncio.Protocol``; h11, the HTTP/1.1 state machine httpcore
itself uses, frames requests and parses answers; idle connections wait in a list per origin
(newest first) and a semaphore caps the requests in flight at ``max_connections``. asyncio
tells a connection when the server closes it (``eof_received``), so reusing one costs no
system call. httpx keeps everything above: requests, responses, redirects, and its
exception classes and timeouts (connect, read, write, pool), which this module raises.

Left to httpx's transport: HTTP/2, unix sockets and proxies (``ApiClient`` keeps httpx's
transport when the environment names a proxy).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

Origin = tuple[str, str, int]  # scheme, host, port
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DISCONNECTED = "Server disconnected without sending a response."


def env_proxies() -> bool:
    """Whether the environment names an HTTP(S) proxy (httpx's transport honours those)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive connections, at most ``limits.max_connections`` in use."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._ssl = ssl_context
        self._max = limits.max_connections or 100
        self._keep = (
            self._max if limits.max_keepalive_connections is None else limits.max_keepalive_connections
        )
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(self._max)
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request.url)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        await self._acquire(timeouts.get("pool"))
        conn: _Connection | None = None
        try:
            conn = self._checkout(origin) or await self._connect(origin, timeouts.get("connect"))
            head = await conn.send(request, timeouts.get("write"), timeouts.get("read"))
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    # -- the pool -----------------------------------------------------------------------
    async def _acquire(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a new run): what the old one had is gone
            self._loop, self._slots, self._idle = loop, asyncio.Semaphore(self._max), {}
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without suspending
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no connection free within {timeout}s") from None

    def _checkout(self, origin: Origin) -> _Connection | None:
        """The newest idle connection to ``origin`` still open; closed and stale ones are dropped."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.reusable() and (self._expiry is None or now - conn.idle_since < self._expiry):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl if scheme == "https" else None
        conn = _Connection(origin)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            conn.close()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} took over {timeout}s") from None
        except OSError as exc:  # refused, unreachable, unknown host, TLS verification (ssl.SSLError)
            conn.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return conn

    def _finished(self, conn: _Connection, reusable: bool) -> None:
        """A response is over: its connection goes back to the pool (or is closed), its slot is free."""
        self._slots.release()
        idle = self._idle.setdefault(conn.origin, [])
        if reusable and not self._closed and conn.next_cycle() and len(idle) < self._keep:
            conn.idle_since = asyncio.get_running_loop().time()
            idle.append(conn)
        else:
            conn.close()


class _Body(httpx.AsyncByteStream):
    """A response's body, read from its connection as it is iterated; frees the connection at the end."""

    def __init__(self, pool: PooledTransport, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        try:
            while True:
                event = await conn.next_event(self._timeout)
                if type(event) is h11.Data:
                    yield bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    break
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")
        except BaseException:
            self._finish(reusable=False)
            raise
        self._finish(reusable=True)

    async def aclose(self) -> None:
        self._finish(reusable=False)  # closed before its end: the connection cannot be reused

    def _finish(self, *, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._finished(conn, reusable)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: bytes in from asyncio, h11 events out."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._h11 = h11.Connection(our_role=h11.CLIENT)
        self._transport: asyncio.Transport | None = None
        self._received: list[bytes] = []
        self._eof = False
        self._error: Exception | None = None  # why the connection was lost, if not a clean close
        self._waiter: asyncio.Future[None] | None = None
        self._writable = True
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio's callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._received.append(data)
        self._wake()

    def eof_received(self) -> None:
        self._eof = True  # returning None: asyncio closes the transport
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._writable = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- what the pool asks -------------------------------------------------------------
    def reusable(self) -> bool:
        """Open, idle, and nothing unasked-for arrived (the server has not closed it)."""
        transport = self._transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self._eof
            and not self._received
            and self._h11.our_state is h11.IDLE
        )

    def next_cycle(self) -> bool:
        """After a complete exchange: ready for the next request, or False (close it)."""
        h = self._h11
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            return False  # e.g. "Connection: close", or a request body never sent in full
        h.start_next_cycle()
        return not h.trailing_data[0]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- one exchange -------------------------------------------------------------------
    async def send(
        self, request: httpx.Request, write_timeout: float | None, read_timeout: float | None
    ) -> Any:
        """Send ``request``; return h11's response head (the body is read by ``_Body``)."""
        h = self._h11
        try:
            out = [
                h.send(
                    h11.Request(
                        method=request.method, target=request.url.raw_path, headers=request.headers.raw
                    )
                )
            ]
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    out.append(h.send(h11.Data(data=chunk)))
            out.append(h.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from None
        await self._write(b"".join(part for part in out if part), write_timeout)
        while True:
            event = await self.next_event(read_timeout)
            if type(event) is h11.Response:
                return event
            if type(event) is h11.ConnectionClosed:
                raise httpx.RemoteProtocolError(_DISCONNECTED)
            # an informational answer (100 Continue): the real one follows

    async def _write(self, data: bytes, timeout: float | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._error is not None:
            raise httpx.WriteError("the connection was closed before the request could be sent")
        transport.write(data)
        if self._writable:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError:
            raise httpx.WriteTimeout(f"sending the request took over {timeout}s") from None
        finally:
            self._drained = None
        if self._error is not None:
            raise httpx.WriteError(str(self._error))

    async def next_event(self, timeout: float | None) -> Any:
        h = self._h11
        while True:
            waiting = h.their_state is h11.SEND_RESPONSE  # nothing of the answer parsed yet
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if self._error is not None:  # a reset, not a protocol mistake
                    raise httpx.ReadError(str(self._error)) from None
                raise httpx.RemoteProtocolError(
                    _DISCONNECTED if waiting and self._eof else str(exc)
                ) from None
            if event is not h11.NEED_DATA:
                return event
            h.receive_data(await self._read(timeout))

    async def _read(self, timeout: float | None) -> bytes:
        """What arrived since the last read, b"" at the end of the connection."""
        if not self._received and not self._eof:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _time_out, waiter, timeout) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        received = self._received
        if not received:
            return b""
        data = received[0] if len(received) == 1 else b"".join(received)
        received.clear()
        return data


def _time_out(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"no answer within {timeout}s"))


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}: use http or https")
    return scheme, url.host, url.port or _DEFAULT_PORTS[scheme]
