"""When to retry, and how long to wait. No I/O here: the HTTP layer asks, this module answers.

Rules (reliability notes §1.3):
- Reads (status, results) are idempotent: retried on connection errors, timeouts, 408, 429
  and 5xx, with full-jitter exponential backoff, honouring ``Retry-After`` (seconds or an HTTP
  date) up to ``max_retry_after``. A read's schedule may start shorter (``first``: the run's
  poll interval): its first retry comes no later than the next poll would have, and the
  ceiling grows ``READ_GROWTH`` times a retry until it meets the standard schedule. So a
  failed poll or two cost about a poll interval, not a second or more, while the retries
  still span about a minute of outage; ``Retry-After`` still wins.
- Creates are retried only when the request certainly never reached the server: a connect
  error or pool timeout, or an explicit 429 refusal. Anything else after sending (a reset, a
  read timeout, a 5xx) is *ambiguous*: the caller reconciles instead of blindly resending.
  (A 5xx answer to a create may come from a server that started the work and then failed.)
- One ``RetryBudget`` is shared by every request of a run (AWS-style token bucket), so an
  outage cannot multiply the load: each retry spends tokens, each success refunds one.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# Growth of a read's short schedule. 4x, not 2x: from a 20 ms poll interval, the 7 retries of
# the default policy still span ~53 s (2x would give up after ~2.5 s of outage).
READ_GROWTH = 4.0

# Failures where the request bytes never left this machine: safe to resend anything.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff settings. ``RetryPolicy.testing()`` keeps the logic and removes the waiting."""

    attempts: int = 8  # per request, first try included
    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 120.0
    budget: int = 500  # tokens; a retry costs 5, a success refunds 1

    @classmethod
    def testing(cls) -> RetryPolicy:
        return cls(initial=0.0, maximum=0.0, max_retry_after=0.0)

    def backoff(self, attempt: int, rng: random.Random, *, first: float | None = None) -> float:
        """Full jitter: uniform(0, min(maximum, initial * 2**attempt)); with ``first``, at most
        ``first * READ_GROWTH**attempt`` (the short schedule of a read, see the module rules)."""
        ceiling = min(self.maximum, self.initial * (2.0**attempt))
        if first is not None:
            ceiling = min(ceiling, max(first, 0.0) * READ_GROWTH**attempt)
        return rng.uniform(0.0, ceiling)

    def wait_for(
        self, attempt: int, retry_after: float | None, rng: random.Random, *, first: float | None = None
    ) -> float:
        """The wait before retry number ``attempt`` (0-based), Retry-After taking precedence."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(attempt, rng, first=first)


class RetryBudget:
    """A token bucket shared by all requests of one run; thread-safe."""

    def __init__(self, tokens: int, *, cost: int = 5, refund: int = 1) -> None:
        self._capacity = tokens
        self._tokens = tokens
        self._cost = cost
        self._refund = refund
        self._lock = threading.Lock()

    def try_spend(self) -> bool:
        with self._lock:
            if self._tokens < self._cost:
                return False
            self._tokens -= self._cost
            return True

    def refund(self) -> None:
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + self._refund)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if _looks_like_date(value) else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return seconds


def _looks_like_date(value: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError, IndexError):
        return False


def is_retryable_status(status: int, *, create: bool) -> bool:
    """A status worth retrying; for creates only 429, the one that says 'not processed'."""
    if create:
        return status == 429
    return status in RETRYABLE_STATUS


def is_retryable_exception(exc: Exception, *, create: bool) -> bool:
    """A transport error worth retrying; for creates only those raised before sending."""
    if isinstance(exc, NEVER_SENT):
        return True
    return not create and isinstance(exc, httpx.TransportError)
