"""Verify Parallel's webhook deliveries (the Standard Webhooks v1 scheme).

Each delivery carries three headers:

* ``webhook-id``: the event's id (e.g. ``whevent_…``); retries of one event reuse it;
* ``webhook-timestamp``: when it was signed, in integer Unix seconds;
* ``webhook-signature``: one or more space-separated ``v1,<base64>`` entries (several while
  the sender rotates its secret).

The signature is::

    base64(HMAC-SHA256(key=secret, msg=f"{webhook-id}.{webhook-timestamp}.".encode() + raw_body))

in standard Base64 with padding. **The key is the secret's raw UTF-8 bytes**, as Parallel's
documentation says (Settings → Webhooks): it is *not* base64-decoded and a ``whsec_`` prefix
gets no special handling, unlike the generic Standard Webhooks libraries.

A receiver must check the signature against the raw body bytes *before* parsing JSON, compare
in constant time against every ``v1`` entry, reject timestamps too far from its clock (replays
of a captured delivery), and deduplicate on ``webhook-id`` (delivery is at-least-once).
:func:`verify` does all of that, in that order::

    from frame_batch.webhooks import ReplayGuard, verify
    from frame_batch.errors import WebhookError, WebhookReplayed

    guard = ReplayGuard()

    def handle(request):  # any framework: headers mapping + raw body bytes
        try:
            event = verify(request.headers, request.body, secret, seen=guard)
        except WebhookReplayed:
            return 204  # already handled: acknowledge so the sender stops retrying
        except WebhookError:
            return 400
        ...  # event["type"] == "task_run.status"; fetch the result, polling stays the truth
        return 204

:func:`sign` builds a header value, for tests of your own receiver.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from ._http import Secret
from .errors import ConfigError, WebhookError, WebhookReplayed

__all__ = ["DEFAULT_TOLERANCE", "ReplayGuard", "sign", "verify"]

DEFAULT_TOLERANCE = 300.0
"""Seconds a timestamp may differ from the clock; Parallel sets none, 300 is the common choice."""

HeadersLike = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
SecretLike = str | bytes | Secret
Secrets = SecretLike | Sequence[SecretLike]

_ID, _TIMESTAMP, _SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


class ReplayGuard:
    """Remembers accepted ``webhook-id`` values, for ``ttl`` seconds and at most ``max_ids`` of them.

    Thread-safe; share one guard between the threads of a receiver. It lives in memory, so each
    process has its own: with several workers, deduplicate in shared storage as well.
    """

    # A signed delivery can be replayed only while its timestamp is within ±tolerance of the
    # clock (older or newer ones fail verify() before reaching the guard): a window of
    # 2 × tolerance, whose very start may be the first acceptance. Remembering each id for
    # 2 × tolerance after it was accepted therefore covers every replay, and longer is useless.
    # (The sender's own retries carry fresh timestamps and may come hours later; the guard is
    # not meant to catch those: processing should be idempotent, and polling stays the truth.)

    def __init__(self, ttl: float = 2 * DEFAULT_TOLERANCE, max_ids: int = 100_000) -> None:
        if not ttl >= 0:
            raise ConfigError(f"ReplayGuard ttl must be >= 0 seconds, got {ttl!r}")
        if isinstance(max_ids, bool) or not isinstance(max_ids, int) or max_ids < 1:
            raise ConfigError(f"ReplayGuard max_ids must be an int >= 1, got {max_ids!r}")
        self.ttl = float(ttl)
        self.max_ids = max_ids
        self._expiry: OrderedDict[str, float] = OrderedDict()  # id -> forget after; oldest first
        self._lock = threading.Lock()

    def check_and_add(self, webhook_id: str, now: float | None = None) -> bool:
        """True, and remember it, if ``webhook_id`` is new; False if it was accepted before."""
        now = time.time() if now is None else now
        with self._lock:
            while self._expiry and next(iter(self._expiry.values())) < now:
                self._expiry.popitem(last=False)
            if self._expiry.get(webhook_id, -math.inf) >= now:
                return False
            self._expiry[webhook_id] = now + self.ttl
            self._expiry.move_to_end(webhook_id)
            while len(self._expiry) > self.max_ids:  # the oldest go first: memory stays bounded
                self._expiry.popitem(last=False)
            return True

    def discard(self, webhook_id: str) -> None:
        """Forget an id, e.g. when handling it failed and the sender's retry should be processed."""
        with self._lock:
            self._expiry.pop(webhook_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


def sign(secret: SecretLike, webhook_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for this delivery."""
    (key,) = _keys(secret)
    digest = _digest(key, webhook_id, str(int(timestamp)), _bytes(body))
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    headers: HeadersLike,
    body: bytes | str,
    secret: Secrets,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
    seen: ReplayGuard | None = None,
) -> dict[str, Any]:
    """Check a delivery and return its JSON body; raise :class:`~frame_batch.errors.WebhookError`.

    ``headers`` is any mapping (``dict``, ``httpx.Headers``, a framework's headers) or a list of
    ``(name, value)`` pairs, looked up case-insensitively. ``body`` is the raw bytes as received
    (a ``str`` is encoded as UTF-8). ``secret`` is the webhook secret, used as its raw UTF-8 bytes
    (no base64 decoding, no ``whsec_`` handling), or a sequence of secrets any of which may match
    (for rotating your copy). ``now`` defaults to ``time.time()``. With ``seen``, an id it already
    accepted raises :class:`~frame_batch.errors.WebhookReplayed`; an id is recorded only when
    ``verify`` returns (call ``seen.discard(id)`` if you then want the sender's retry processed).
    """
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0 seconds, got {tolerance!r}")
    if seen is not None and seen.ttl < 2 * tolerance:
        raise ConfigError(
            f"ReplayGuard(ttl={seen.ttl:g}) would forget ids while a replay is still within the "
            f"tolerance of {tolerance:g} s: use ttl >= {2 * tolerance:g}"
        )
    keys = _keys(secret)
    webhook_id, timestamp, signatures = _read_headers(headers)
    now = time.time() if now is None else now
    _check_timestamp(timestamp, now, tolerance)
    raw = _bytes(body)
    _check_signature(keys, webhook_id, timestamp, raw, signatures)
    event = _parse(raw)  # before recording the id: a delivery we could not read is not "accepted"
    if seen is not None and not seen.check_and_add(webhook_id, now):
        raise WebhookReplayed(
            f"webhook-id {webhook_id[:100]!r} was already accepted: this is a duplicate delivery "
            f"(or a replay); acknowledge it with 2xx and do not process it again"
        )
    return event


def _keys(secret: Secrets) -> list[bytes]:
    items: Sequence[object] = [secret] if isinstance(secret, str | bytes | bytearray | Secret) else secret
    keys = []
    for item in items:
        value = item.reveal() if isinstance(item, Secret) else item
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes | bytearray):
            raise ConfigError(f"a webhook secret must be str or bytes, not {type(value).__name__}")
        if not value:
            raise ConfigError("the webhook secret is empty: copy it from Parallel's Settings → Webhooks")
        keys.append(bytes(value))
    if not keys:
        raise ConfigError("no webhook secret given: copy it from Parallel's Settings → Webhooks")
    return keys


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _read_headers(headers: HeadersLike) -> tuple[str, str, str]:
    """The id, timestamp and signature header values; WebhookError when one is missing."""
    multi_items = getattr(headers, "multi_items", None)  # httpx.Headers: items() joins repeats
    pairs: Iterable[tuple[str | bytes, str | bytes]]
    if callable(multi_items):
        pairs = multi_items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    found: dict[str, list[str]] = {_ID: [], _TIMESTAMP: [], _SIGNATURE: []}
    for name, value in pairs:
        values = found.get(_text(name).strip().lower())
        if values is not None and _text(value).strip():
            values.append(_text(value).strip())
    missing = [name for name, values in found.items() if not values]
    if missing:
        raise WebhookError(
            f"missing header(s) {', '.join(missing)}: is this a webhook delivery from Parallel, "
            f"and does your framework or proxy pass these headers through?"
        )
    for name in (_ID, _TIMESTAMP):
        if len(set(found[name])) > 1:
            raise WebhookError(f"header {name} is repeated with different values: refusing to guess")
    return found[_ID][0], found[_TIMESTAMP][0], " ".join(found[_SIGNATURE])


def _check_timestamp(timestamp: str, now: float, tolerance: float) -> None:
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookError(
            f"webhook-timestamp {timestamp[:40]!r} is not an integer of Unix seconds: "
            f"the header is malformed, or the request is not a Parallel webhook"
        )
    age = now - int(timestamp)
    if age > tolerance:
        raise WebhookError(
            f"webhook-timestamp is {_secs(age)} s old (tolerance {_secs(tolerance)} s): "
            f"the delivery is stale or the clocks differ (check this host's NTP)"
        )
    if -age > tolerance:
        raise WebhookError(
            f"webhook-timestamp is {_secs(-age)} s in the future (tolerance {_secs(tolerance)} s): "
            f"the clocks differ; check this host's clock (NTP)"
        )


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds == int(seconds) else f"{seconds:.1f}"


def _candidates(header: str) -> tuple[list[bytes], str]:
    """The decoded ``v1`` signatures, and a note on the entries that were skipped."""
    signatures: list[bytes] = []
    skipped = {"without 'v1,'": 0, "not 32 bytes of padded standard base64": 0}
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if not comma or version != "v1":
            skipped["without 'v1,'"] += 1
            continue
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != hashlib.sha256().digest_size:
            skipped["not 32 bytes of padded standard base64"] += 1
            continue
        signatures.append(decoded)
    note = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
    return signatures, note


def _check_signature(keys: list[bytes], webhook_id: str, timestamp: str, body: bytes, header: str) -> None:
    signatures, skipped = _candidates(header)
    if not signatures:
        raise WebhookError(
            f"webhook-signature has no usable 'v1,<base64>' entry ({skipped}): the header is "
            f"malformed, or the sender uses a signature version this library does not know"
        )
    expected = [_digest(key, webhook_id, timestamp, body) for key in keys]
    if not any(hmac.compare_digest(e, s) for e in expected for s in signatures):
        n = len(signatures)
        entries = "the v1 entry does not match" if n == 1 else f"none of the {n} v1 entries matches"
        secrets = "the secret" if len(keys) == 1 else f"any of the {len(keys)} secrets"
        raise WebhookError(
            f"webhook-signature: {entries} {secrets}: check the secret (Parallel's "
            f"Settings → Webhooks, as plain text, no stray whitespace) and that the body is the "
            f"raw bytes received, not parsed and re-encoded"
        )


def _digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _parse(body: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookError(f"the signed body is not valid JSON ({exc}): the sender sent it so") from exc
    if not isinstance(event, dict):
        raise WebhookError(f"the signed body is JSON {type(event).__name__}, not an object: not an event")
    return event
