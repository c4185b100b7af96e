"""The HTTP transport under ApiClient (``frame_batch._transport``), on real loopback sockets:
TLS, keep-alive connections the server closed, httpx's exception classes, and env proxies."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import trustme

from frame_batch._http import ApiClient, HttpConfig
from frame_batch._transport import PooledTransport, env_proxies

Serve = Callable[..., int]  # (handler class, server TLS context or None) -> port
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    close_after_answer = False  # answer as keep-alive, then hang up anyway (an idle timeout)

    def do_GET(self) -> None:
        body = orjson.dumps({"path": self.path, "port": self.client_address[1]})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.close_after_answer:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Closing(_Handler):
    close_after_answer = True


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handler: type[_Handler], tls: ssl.SSLContext | None = None) -> int:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _get_twice(transport: httpx.AsyncBaseTransport, url: str, pause: float = 0.0) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            first = (await client.get(f"{url}/one")).json()
            await asyncio.sleep(pause)
            second = (await client.get(f"{url}/two")).json()
            return [first, second]

    return asyncio.run(go())


def test_tls_requests_verify_the_server_and_reuse_the_connection(serve: Serve) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    port = serve(_Handler, server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    first, second = _get_twice(PooledTransport(client_tls, LIMITS), f"https://localhost:{port}")
    assert (first["path"], second["path"]) == ("/one", "/two")
    assert first["port"] == second["port"]  # one TLS connection, kept alive

    untrusting = ssl.create_default_context()  # the test CA is not in it
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _get_twice(PooledTransport(untrusting, LIMITS), f"https://localhost:{port}")


def test_a_keep_alive_connection_the_server_closed_is_not_reused(serve: Serve) -> None:
    """The server hangs up after each answer without saying so: the pool must see the idle
    connection is closed (readable at EOF) and open a new one, not send into the dead one."""
    port = serve(_Closing)
    transport = PooledTransport(ssl.create_default_context(), LIMITS)
    first, second = _get_twice(transport, f"http://127.0.0.1:{port}", pause=0.2)
    assert (first["path"], second["path"]) == ("/one", "/two")
    assert first["port"] != second["port"]  # a second connection


def test_httpcore_errors_surface_as_httpx_errors(serve: Serve) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    transport = PooledTransport(ssl.create_default_context(), LIMITS)
    with pytest.raises(httpx.ConnectError):
        _get_twice(transport, f"http://127.0.0.1:{closed_port}")

    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:

        async def go() -> None:
            async with httpx.AsyncClient(transport=transport, timeout=0.2) as client:
                await client.get(f"http://127.0.0.1:{silent.getsockname()[1]}/")

        with pytest.raises(httpx.ReadTimeout):
            asyncio.run(go())
    finally:
        silent.close()


class _Proxy(_Handler):
    """A forward proxy that answers every request itself, saying what it was asked for."""

    def do_GET(self) -> None:
        body = orjson.dumps({"proxied": self.path})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_proxy_named_in_the_environment_is_used(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    port = serve(_Proxy)
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not env_proxies()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    assert env_proxies()
    config = HttpConfig(provider="respell", base_url="http://vendor.invalid", headers={}, key_hint="-")

    async def go() -> object:
        api = ApiClient(config, secrets=())
        try:
            return (await api.read("GET", "/spells/x")).json()
        finally:
            await api.aclose()

    assert asyncio.run(go()) == {"proxied": "http://vendor.invalid/spells/x"}


# -- the pool and the protocol, against servers that misbehave on purpose ----------------
Raw = Callable[[Callable[[socket.socket], None]], int]  # (per-connection handler) -> port


@pytest.fixture
def raw() -> Iterator[Raw]:
    """A loopback TCP server running ``handler(connection)`` in a thread per connection."""
    listeners: list[socket.socket] = []

    def start(handler: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return  # the listener was closed: the test is over
                threading.Thread(target=_serve_one, args=(handler, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def _serve_one(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        handler(conn)


def _read_request(conn: socket.socket) -> bytes:
    """One request's head and body (by content-length); b"" when the client hung up."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return b""
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def _answer(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


def _port_echo(conn: socket.socket) -> None:
    """Answers every request on the connection with the client's port and the body's length."""
    while request := _read_request(conn):
        body = request.partition(b"\r\n\r\n")[2]
        conn.sendall(_answer(orjson.dumps({"port": conn.getpeername()[1], "length": len(body)})))


def _client(transport: httpx.AsyncBaseTransport, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, **timeouts))


def test_requests_in_flight_never_exceed_max_connections_and_connections_are_reused(raw: Raw) -> None:
    port = raw(_port_echo)
    transport = PooledTransport(ssl.create_default_context(), httpx.Limits(max_connections=2))

    async def go() -> list[int]:
        async with _client(transport) as client:
            answers = await asyncio.gather(*(client.get(f"http://127.0.0.1:{port}/") for _ in range(12)))
            return [a.json()["port"] for a in answers]

    ports = asyncio.run(go())
    assert len(ports) == 12
    assert len(set(ports)) <= 2  # two connections at most, each used again and again


def test_a_request_body_larger_than_the_write_buffer_arrives_whole(raw: Raw) -> None:
    port = raw(_port_echo)
    body = b"x" * (3 << 20)

    async def go() -> object:
        async with _client(PooledTransport(ssl.create_default_context(), LIMITS)) as client:
            return (await client.post(f"http://127.0.0.1:{port}/", content=body)).json()

    assert asyncio.run(go())["length"] == len(body)  # type: ignore[index]


def test_a_chunked_body_is_streamed_as_it_arrives(raw: Raw) -> None:
    """The second chunk is sent only after the client has seen the first: a transport that
    waited for the whole body would hang here until the read timeout."""
    first_seen = threading.Event()

    def chunked(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        first_seen.wait(5)
        conn.sendall(b"6\r\n world\r\n0\r\n\r\n")

    port = raw(chunked)

    async def go() -> list[bytes]:
        parts = []
        transport = PooledTransport(ssl.create_default_context(), LIMITS)
        async with (
            _client(transport, read=2.0) as client,
            client.stream("GET", f"http://127.0.0.1:{port}/") as response,
        ):
            async for part in response.aiter_raw():
                parts.append(part)
                first_seen.set()
        return parts

    parts = asyncio.run(go())
    assert b"".join(parts) == b"hello world"
    assert parts[0] == b"hello"


def test_the_server_closing_before_answering_or_mid_body_is_a_protocol_error(raw: Raw) -> None:
    def hang_up(conn: socket.socket) -> None:
        _read_request(conn)

    def short_body(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")

    for handler, message in ((hang_up, "without sending a response"), (short_body, "closed")):
        port = raw(handler)

        async def go(port: int = port) -> None:
            async with _client(PooledTransport(ssl.create_default_context(), LIMITS)) as client:
                await client.get(f"http://127.0.0.1:{port}/")

        with pytest.raises(httpx.RemoteProtocolError, match=message):
            asyncio.run(go())


def test_connection_close_and_an_early_closed_body_mean_a_new_connection(raw: Raw) -> None:
    def close_after_first(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(_answer(orjson.dumps({"port": conn.getpeername()[1]}), b"connection: close"))

    for handler, partial_read in ((close_after_first, False), (_port_echo, True)):
        port = raw(handler)
        transport = PooledTransport(ssl.create_default_context(), httpx.Limits(max_connections=1))

        async def go(
            port: int = port, partial_read: bool = partial_read, transport: PooledTransport = transport
        ) -> list[int]:
            async with _client(transport, pool=1.0) as client:
                if partial_read:  # the body is let go unread: that connection cannot serve another
                    async with client.stream("GET", f"http://127.0.0.1:{port}/"):
                        pass
                first = (await client.get(f"http://127.0.0.1:{port}/")).json()["port"]
                second = (await client.get(f"http://127.0.0.1:{port}/")).json()["port"]
                return [first, second]

        first, second = asyncio.run(go())
        assert (first != second) == (handler is close_after_first)


def test_a_cancelled_request_frees_its_slot_and_its_connection_is_not_reused(raw: Raw) -> None:
    release = threading.Event()

    def slow_first(conn: socket.socket) -> None:
        while request := _read_request(conn):
            if b"/slow" in request.split(b"\r\n", 1)[0]:
                release.wait(5)  # never answered in time: the client gives up first
                return
            conn.sendall(_answer(orjson.dumps({"port": conn.getpeername()[1]})))

    port = raw(slow_first)
    transport = PooledTransport(ssl.create_default_context(), httpx.Limits(max_connections=1))

    async def go() -> int:
        async with _client(transport, pool=1.0) as client:
            slow = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            answer = await client.get(f"http://127.0.0.1:{port}/fast")  # would be a PoolTimeout
            return int(answer.json()["port"])

    try:
        asyncio.run(go())
    finally:
        release.set()


def test_pool_timeout_when_every_connection_is_busy(raw: Raw) -> None:
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        _read_request(conn)
        release.wait(5)

    port = raw(stall)
    transport = PooledTransport(ssl.create_default_context(), httpx.Limits(max_connections=1))

    async def go() -> None:
        async with _client(transport, pool=0.1, read=3.0) as client:
            busy = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/"))
            await asyncio.sleep(0.05)
            try:
                await client.get(f"http://127.0.0.1:{port}/")
            finally:
                busy.cancel()

    try:
        with pytest.raises(httpx.PoolTimeout):
            asyncio.run(go())
    finally:
        release.set()


def test_idle_connections_expire_and_a_new_event_loop_starts_clean(raw: Raw) -> None:
    port = raw(_port_echo)
    url = f"http://127.0.0.1:{port}/"
    expiring = PooledTransport(ssl.create_default_context(), httpx.Limits(keepalive_expiry=0.0))
    kept = PooledTransport(ssl.create_default_context(), httpx.Limits(keepalive_expiry=60.0))

    async def two(transport: PooledTransport) -> tuple[int, int]:
        client = _client(transport)  # not closed: the transport is used again below
        return (await client.get(url)).json()["port"], (await client.get(url)).json()["port"]

    first, second = asyncio.run(two(expiring))
    assert first != second
    first, second = asyncio.run(two(kept))
    assert first == second
    third, fourth = asyncio.run(two(kept))  # another loop: the old loop's connections are not used
    assert third == fourth != first


def test_other_url_schemes_are_refused() -> None:
    transport = PooledTransport(ssl.create_default_context(), LIMITS)
    with pytest.raises(httpx.UnsupportedProtocol, match="ftp"):
        asyncio.run(transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/")))
