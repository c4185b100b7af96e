"""A loopback HTTP/1.1 server that runs any emulator handler over a real socket.

An emulator is a plain function ``httpx.Request -> httpx.Response`` (the same shape
``httpx.MockTransport`` takes), so one handler serves both in-process tests and tests
that need real sockets: connection reuse, dropped connections, a client killed mid-call.

Rules kept here:

- Loopback only, unless ``allow_non_loopback=True``: an emulator accepts any key and
  logs nothing, which is fine on 127.0.0.1 and wrong on a shared network.
- Keep-alive works (``Content-Length`` on every fixed body); a streaming body is sent
  chunked and flushed chunk by chunk, so server-sent events arrive as they are produced.
- A handler raising :class:`DropConnection` closes the socket without a byte of answer;
  any other exception becomes a JSON 500 and the server keeps serving. A streamed body
  raising :class:`DropConnection` while it is sent cuts the connection mid-body (the
  client sees an incomplete chunked body), e.g. to test resuming an SSE stream.
- Leaving :func:`serve` stops the accept loop *and* closes idle keep-alive connections,
  so it never waits on a client that holds a connection open.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson

__all__ = ["DropConnection", "Handler", "ServerHandle", "serve", "serve_forever"]

Handler = Callable[[httpx.Request], httpx.Response]

_POLL_INTERVAL = 0.05  # how fast shutdown() is noticed by the accept loop
_IDLE_TIMEOUT = 30.0  # backstop for idle keep-alive sockets (shutdown closes them anyway)
_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})


class DropConnection(Exception):
    """Raised by a handler: close the connection without sending any answer.

    ``before_request`` marks a drop that, for the client, looks like the request never
    reached the server (in-process it becomes ``httpx.ConnectError``; over a socket the
    server can only close the accepted connection, so the client sees a disconnect).
    """

    def __init__(self, *, before_request: bool = False) -> None:
        super().__init__("connection dropped by the emulator")
        self.before_request = before_request


@dataclass(frozen=True)
class ServerHandle:
    """Where a running emulator listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8787``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextmanager
def serve(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_non_loopback: bool = False,
) -> Iterator[ServerHandle]:
    """Serve ``handler`` on ``host:port`` (port 0 = any free port) in a background thread."""
    server = _make_server(handler, host, port, allow_non_loopback)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL},
        name=f"emulator-{server.handle.port}",
        daemon=True,
    )
    thread.start()
    try:
        yield server.handle
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()


def serve_forever(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    on_ready: Callable[[ServerHandle], None] | None = None,
    allow_non_loopback: bool = False,
) -> None:
    """Serve ``handler`` in the calling thread until Ctrl-C (for ``frame-batch emulate``)."""
    server = _make_server(handler, host, port, allow_non_loopback)
    try:
        if on_ready is not None:
            on_ready(server.handle)  # the socket already listens: clients may connect now
        server.serve_forever(poll_interval=_POLL_INTERVAL)
    except KeyboardInterrupt:
        return
    finally:
        server.close_connections()
        server.server_close()


def _make_server(handler: Handler, host: str, port: int, allow_non_loopback: bool) -> _Server:
    if not allow_non_loopback:
        _require_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _Server((host, port), handler, family)


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to serve the emulator on {host!r}: it is not a loopback address and "
            "an emulator accepts requests from anyone who can reach it; use '127.0.0.1', "
            "or pass allow_non_loopback=True if you really mean to expose it"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client thread must never keep the process alive
    # The stock backlog of 5 overflows when 16+ clients connect at once: connections reset
    # before a request is read would look like vendor faults nobody injected.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Handler, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.app = handler
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)
        self.handle = ServerHandle(host=address[0], port=int(self.server_address[1]))

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can
        # take seconds in sandboxes; a loopback fake has no use for the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every connection thread blocked on an idle keep-alive socket."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-answer is routine here (drop tests, killed clients).
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real vendors do
    # Headers and body go out in two sends; with Nagle on, every answer waited ~40 ms for
    # the client's delayed ACK, so latency measured the emulator, not the vendor's knobs.
    disable_nagle_algorithm = True
    timeout = _IDLE_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request stderr lines would drown test output (and never hold keys anyway)

    def _dispatch(self) -> None:
        try:
            request = self._read_request()
        except (ValueError, httpx.InvalidURL) as exc:
            self._write(_json_response(400, {"error": f"Malformed HTTP request: {exc}"}))
            return
        try:
            response = self.server.app(request)
        except DropConnection:
            self._drop()
            return
        except Exception as exc:  # a fake must keep serving after a handler bug
            response = _json_response(500, {"error": f"Emulator error: {type(exc).__name__}"})
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _read_request(self) -> httpx.Request:
        handle = self.server.handle
        host = f"[{handle.host}]" if ":" in handle.host else handle.host
        return httpx.Request(
            self.command,
            f"http://{host}:{handle.port}{self.path}",
            headers=[(k, v) for k, v in self.headers.items() if k.lower() != "transfer-encoding"],
            content=self._read_body(),
        )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _drop(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, response: httpx.Response) -> None:
        try:
            body: bytes | None = response.content
        except httpx.ResponseNotRead:
            body = None  # an iterator body: stream it
        self.send_response(response.status_code, response.reason_phrase)
        for name, value in response.headers.multi_items():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if response.headers.get("connection", "").lower() == "close":
            self.send_header("Connection", "close")  # also sets close_connection
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in response.iter_raw():
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()  # each SSE frame must leave now, not at the end
            self.wfile.write(b"0\r\n\r\n")
        except DropConnection:
            self._drop()  # a scripted cut mid-body: no final chunk, no traceback
        except BaseException:
            self.close_connection = True  # the body is cut short: the framing is broken
            raise
        finally:
            response.close()


def _json_response(status: int, body: dict[str, object]) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": "application/json"})
