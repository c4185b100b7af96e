"""The HTTP transport under ApiClient (``frame_batch._transport``), on real loopback sockets:
TLS, keep-alive connections the server closed, httpx's exception classes, and env proxies."""

from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpcore
import httpx
import orjson
import pytest
import trustme

from frame_batch._http import ApiClient, HttpConfig
from frame_batch._transport import _EXCEPTIONS, PooledTransport, env_proxies

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


def test_each_httpcore_error_maps_to_its_httpx_namesake_most_specific_first() -> None:
    for source, target in _EXCEPTIONS:
        assert source.__name__ == target.__name__
    sources = [source for source, _ in _EXCEPTIONS]
    for i, source in enumerate(sources):  # no class is shadowed by a base listed before it
        assert not any(issubclass(source, earlier) for earlier in sources[:i]), source
    exported = {getattr(httpcore, name) for name in httpcore.__all__}
    errors = {e for e in exported if isinstance(e, type) and issubclass(e, Exception)}
    assert errors - {httpcore.ConnectionNotAvailable} == set(sources)  # that one the pool handles itself


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
