"""The HTTP layer: one httpx client per run, retries, and status -> error mapping.

Providers describe requests; this module sends them. ``read`` is for idempotent calls
(status, results, cancel) and ``create`` for calls that start paid work. A create that fails
*after* its bytes may have left raises ``AmbiguousCreate``, never a blind resend: the engine
decides what to do with it (reconcile, or the run's documented policy).

API keys live in ``Secret`` (redacting repr) and only ever travel in request headers; every
text that may reach an exception is passed through ``redact`` first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import hashlib
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from . import errors
from ._retry import (
    RetryBudget,
    RetryPolicy,
    is_retryable_exception,
    is_retryable_status,
    parse_retry_after,
)
from ._sse import aiter_events
from ._transport import PooledTransport, env_proxies

log = logging.getLogger("frame_batch")

Sleep = Callable[[float], Awaitable[None]]
MAX_BODY_IN_ERROR = 2000

# Called as each request attempt leaves, for whoever set it (``on_send``): the engine learns
# when a batch's create really went out, retries and a busy event loop aside.
_ON_SEND: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "frame_batch_on_send", default=None
)


# Set by whoever holds a scarce place while its requests are sent (the engine's in-flight
# slot): a request refused with 429 waits by awaiting it, and the holder decides whether the
# wait keeps that place (a refused create ran nothing; a batch whose read is refused may be done).
_ON_REFUSED: contextvars.ContextVar[Callable[[float], Awaitable[None]] | None] = contextvars.ContextVar(
    "frame_batch_on_refused", default=None
)


@contextlib.contextmanager
def on_refused(wait: Callable[[float], Awaitable[None]]) -> Iterator[None]:
    """A request refused with 429 in this block (tasks started in it too) waits its backoff by
    awaiting ``wait(seconds)`` instead of sleeping: the caller may let its slot go meanwhile."""
    token = _ON_REFUSED.set(wait)
    try:
        yield
    finally:
        _ON_REFUSED.reset(token)


@contextlib.contextmanager
def on_send(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` as each request attempt made in this block leaves, in tasks started
    in the block too (they copy the context): its last call is the attempt that was answered."""
    token = _ON_SEND.set(callback)
    try:
        yield
    finally:
        _ON_SEND.reset(token)


class Secret:
    """An API key that never shows itself in a repr, str, log line or pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """8 hex chars of SHA-256: enough to notice a changed key, useless to an attacker."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("API keys are not pickled; pass the environment variable name instead")


def resolve_key(explicit: str | Secret | None, env_var: str, provider: str) -> Secret:
    """The key from the argument, else the environment; a clear error when neither has one."""
    if isinstance(explicit, Secret):
        return explicit
    value = explicit if explicit is not None else os.environ.get(env_var, "")
    if not value.strip():
        raise errors.ConfigError(
            f"no API key for {provider}: set the {env_var} environment variable "
            f"or pass api_key=... (to try things offline, see frame_batch.testing)"
        )
    return Secret(value.strip())


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class AmbiguousCreate(Exception):
    """A create request may have reached the server, but its answer was lost.

    ``slow`` says the request ran out of time (a gateway 504 or a read timeout): the batch
    may simply be too big to finish in one request, so the engine sends smaller ones.
    """

    def __init__(self, reason: str, *, slow: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.slow = slow


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """What a provider tells the engine about talking to it."""

    provider: str
    base_url: str
    headers: Mapping[str, str]
    key_hint: str  # how the user fixes a bad key, e.g. "RESPELL_API_KEY or api_key="
    timeout: float = 60.0
    # Per-status overrides of the error class and advice, where a vendor's status means
    # something specific (Parallel's 403 is an invalid processor, not a bad key).
    errors: Mapping[int, tuple[type[errors.ProviderError], str]] = field(default_factory=dict)


class ApiClient:
    """Sends requests for one run with the run's retry policy and shared retry budget."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        secrets: Iterable[str],
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        max_connections: int = 16,
        creates_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        first_read_retry: float | None = None,
    ) -> None:
        self.config = config
        self.policy = policy or RetryPolicy()
        self.budget = RetryBudget(self.policy.budget)
        self.create_requests = 0  # creates the server saw or may have seen (429 refusals excluded)
        self.retries = 0
        # Where a read's retry schedule starts (Retry-After aside, see RetryPolicy.backoff); the
        # engine sets it to its poll interval: a failed poll is retried no later than the next
        # poll would have come, and a second failure soon after too.
        self.first_read_retry = first_read_retry
        self._secrets = tuple(secrets)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._pacer = Pacer(creates_per_minute, clock, sleep) if creates_per_minute else None
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if transport is None and not env_proxies():
            transport = PooledTransport(_tls_context(), limits)  # see _transport: ~3x less CPU a request
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            headers=dict(config.headers),
            transport=transport,
            verify=_tls_context() if transport is None else True,  # with a transport, httpx builds none
            timeout=httpx.Timeout(config.timeout, connect=10.0),
            limits=limits,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def read(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """An idempotent call: retried on transport errors, 408, 429 and 5xx."""
        return await self._send(method, path, json=json, content=None, params=params, create=False)

    async def create(
        self,
        method: str,
        path: str,
        *,
        content: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A call that starts paid work: retried only when it certainly never arrived."""
        return await self._send(
            method, path, json=None, content=content, params=params, create=True, headers=headers
        )

    async def events(
        self,
        path: str,
        *,
        params: Mapping[str, str],
        cursor: Callable[[Any], str | None],
        cursor_param: str = "last_event_id",
    ) -> AsyncIterator[Any]:
        """GET a server-sent-events stream; yield each event's JSON ``data``.

        When the connection breaks mid-stream the request is sent again with
        ``cursor_param`` set to the last event's cursor, so the stream resumes where it
        broke instead of starting over. Reconnects spend the run's retry budget.
        """
        last: str | None = None
        attempt = 0
        while True:
            query = dict(params) if last is None else {**params, cursor_param: last}
            try:
                response = await self._send(
                    "GET", path, json=None, content=None, params=query, create=False, stream=True
                )
                try:
                    async for event in aiter_events(response.aiter_bytes()):
                        data = _loads(event.data)
                        last = cursor(data) or last
                        yield data
                finally:
                    await response.aclose()
                return
            except httpx.TransportError as exc:
                if not self._may_retry(attempt):
                    raise self._transport_error("GET", path, exc) from None
                await self._wait(attempt, None, f"GET {path}: stream broke ({type(exc).__name__})", read=True)
                attempt += 1

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        content: bytes | None,
        params: Mapping[str, str] | None,
        create: bool,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        sent = {"content-type": "application/json", **(headers or {})} if content is not None else None
        attempt = 0
        leaving = _ON_SEND.get()
        while True:
            if create and self._pacer is not None:
                await self._pacer.wait()
            request = self._client.build_request(
                method, path, json=json, content=content, params=params, headers=sent
            )
            if leaving is not None:
                leaving()
            try:
                response = await self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if create and not is_retryable_exception(exc, create=True):
                    self.create_requests += 1  # it may have reached the server
                    raise AmbiguousCreate(
                        f"{type(exc).__name__}: {self._clean(str(exc))}",
                        slow=isinstance(exc, httpx.TimeoutException),
                    ) from None
                if not is_retryable_exception(exc, create=create) or not self._may_retry(attempt):
                    raise self._transport_error(method, path, exc) from None
                await self._wait(attempt, None, f"{method} {path}: {type(exc).__name__}", read=not create)
                attempt += 1
                continue
            if create and response.status_code != 429:
                self.create_requests += 1  # the server saw it (a 429 is an explicit refusal)
            if response.is_success:
                self.budget.refund()
                return response
            if stream:
                await response.aread()  # the error body, for the message
            if is_retryable_status(response.status_code, create=create) and self._may_retry(attempt):
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                why = f"{method} {path}: HTTP {response.status_code}"
                refused = _ON_REFUSED.get() if response.status_code == 429 else None
                await self._wait(attempt, retry_after, why, read=not create, sleep=refused)
                attempt += 1
                continue
            if create and response.status_code >= 500:
                # The server may have started the work before failing: not safe to resend blindly.
                raise AmbiguousCreate(
                    f"HTTP {response.status_code}: {self._clean(response.text[:200])}",
                    slow=response.status_code == 504,
                )
            raise self._status_error(method, path, response)

    def _may_retry(self, attempt: int) -> bool:
        return attempt + 1 < self.policy.attempts and self.budget.try_spend()

    async def _wait(
        self, attempt: int, retry_after: float | None, why: str, *, read: bool, sleep: Sleep | None = None
    ) -> None:
        first = self.first_read_retry if read else None
        delay = self.policy.wait_for(attempt, retry_after, self._rng, first=first)
        self.retries += 1
        log.info("%s: retrying in %.2fs (retry %d)", why, delay, attempt + 1)
        await (sleep or self._sleep)(delay)

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)

    def _transport_error(self, method: str, path: str, exc: Exception) -> errors.TransportError:
        name = self.config.provider
        return errors.TransportError(
            f"could not reach {name} at {self.config.base_url} ({method} {path}: "
            f"{type(exc).__name__}: {self._clean(str(exc))}); check the network or base_url. "
            "Work already submitted is recorded: run again to resume.",
            provider=name,
        )

    def _status_error(self, method: str, path: str, response: httpx.Response) -> errors.ProviderError:
        status = response.status_code
        body = self._clean(response.text[:MAX_BODY_IN_ERROR])
        default = _ERRORS.get(status, _ERRORS[500 if status >= 500 else 400])
        cls, advice = self.config.errors.get(status, default)
        advice = advice.format(key_hint=self.config.key_hint)
        name = self.config.provider
        message = f"{name} answered HTTP {status} to {method} {path}: {body.strip() or '(no body)'}; {advice}"
        return cls(message, provider=name, status_code=status, body=body)


class Pacer:
    """Spaces create requests to stay under a per-minute limit (a sliding 60 s window).

    The vendor counts creates per key in a rolling minute; waiting here costs nothing,
    while a 429 costs a round trip and backoff for every task that hits it.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float], sleep: Sleep) -> None:
        self._sent: collections.deque[float] = collections.deque(maxlen=per_minute)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:  # one waiter at a time keeps the window exact
            sent = self._sent
            if len(sent) == sent.maxlen:
                delay = sent[0] + 60.0 - self._clock()
                if delay > 0:
                    log.info("pacing create requests: %d in the last minute, waiting %.2fs", len(sent), delay)
                    await self._sleep(delay)
            sent.append(self._clock())


_TLS = threading.local()


def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context httpx would build for ``verify=True``, built once per thread
    instead of once per client (loading the CA bundle costs ~20 ms). Not shared between
    threads: httpcore sets ALPN on the context at every connection. Keyed by the variables
    httpx reads, ``$SSL_CERT_FILE`` and ``$SSL_CERT_DIR``, so changing them still applies."""
    contexts: dict[tuple[str | None, str | None], ssl.SSLContext] | None = getattr(_TLS, "contexts", None)
    if contexts is None:
        contexts = _TLS.contexts = {}
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = contexts.get(key)
    if context is None:
        context = contexts[key] = httpx.create_ssl_context()
    return context


def json_or_none(content: bytes | str) -> Any:
    """A vendor's answer parsed as JSON, or None when it is not JSON (adapters then say so)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"type": "<not JSON>", "data": data[:200]}


_RESUME = "work already submitted is recorded: run again to resume"
_ERRORS: dict[int, tuple[type[errors.ProviderError], str]] = {
    400: (errors.RequestRejected, "the request was refused; check the workflow's input names"),
    401: (errors.AuthenticationError, "check the API key ({key_hint})"),
    402: (errors.PaymentRequired, f"add credits to the account; {_RESUME}"),
    403: (errors.AuthenticationError, "the key is not allowed to do this; check it ({key_hint})"),
    404: (errors.NotFoundError, "check the workflow id (and base_url)"),
    409: (errors.RequestRejected, "the request conflicts with the server's state"),
    413: (errors.RequestTooLarge, "the request is too large; pass a smaller batch_size or max_bytes"),
    422: (errors.RequestRejected, "the request was refused; check the workflow's input names"),
    429: (errors.RateLimited, f"the rate limit held through every retry; {_RESUME} later"),
    500: (errors.ServerError, f"the service kept failing through every retry; {_RESUME}"),
}
