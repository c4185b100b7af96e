"""The exceptions frame-batch raises, all in one tree.

A failed *row* is data (a status and an error in the result frame), never an exception.
These are raised when the *run* cannot go on, or when the input is wrong before anything
is sent::

    FrameBatchError
    ├── InputError                   bad arguments or a frame we cannot read; nothing was sent
    │   ├── ColumnError              missing, duplicate or non-string column names
    │   ├── ConfigError              unknown provider, missing API key, bad option value
    │   └── WebhookError             a webhook delivery failed verification (headers, time, signature)
    │       └── WebhookReplayed      the webhook-id was already accepted: answer 2xx, do not redo
    ├── StoreError                   the cache directory is unusable (locked, corrupt, foreign)
    ├── ProviderError                the vendor answered with an error for the whole run
    │   ├── AuthenticationError      401 / 403: the key is missing, wrong or not allowed
    │   ├── NotFoundError            404: unknown workflow / spell / batch id
    │   ├── RequestRejected          400 / 409 / 413 / 422: the vendor refused the request body
    │   │   └── RequestTooLarge      413: one row alone is too large (larger batches are split)
    │   ├── RateLimited              429 after the retry budget was spent
    │   ├── ServerError              5xx after the retry budget was spent
    │   └── PaymentRequired          402: out of credits; new submissions stop
    └── TransportError               the vendor could not be reached (after retries)

Every exception carries context on attributes (``provider``, ``status_code``, ``body``, ...)
and a message that says what to do next. None of them ever holds an API key: bodies and
URLs are redacted before they are attached (see ``_http.redact``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthenticationError",
    "ColumnError",
    "ConfigError",
    "FrameBatchError",
    "InputError",
    "NotFoundError",
    "PaymentRequired",
    "ProviderError",
    "RateLimited",
    "RequestRejected",
    "RequestTooLarge",
    "ServerError",
    "StoreError",
    "TransportError",
    "WebhookError",
    "WebhookReplayed",
]


class FrameBatchError(Exception):
    """Base class of every error frame-batch raises on purpose."""


class InputError(FrameBatchError, ValueError):
    """The input cannot be used as given; nothing was sent."""


class ColumnError(InputError, KeyError):
    """A column is missing, duplicated or not named by a string."""

    def __init__(self, message: str, *, available: Sequence[object] = ()) -> None:
        self.available = tuple(available)
        if self.available:
            shown = ", ".join(repr(c) for c in self.available[:50])
            more = f" (and {len(self.available) - 50} more)" if len(self.available) > 50 else ""
            message = f"{message}; columns are: {shown}{more}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class ConfigError(InputError):
    """An option, provider name or API key is missing or invalid."""


class WebhookError(InputError):
    """A webhook delivery failed verification; do not act on its body.

    The message says which check failed and never holds the secret or the expected signature.
    """


class WebhookReplayed(WebhookError):
    """The delivery is authentic, but its ``webhook-id`` was already accepted.

    Delivery is at-least-once: answer 2xx so the sender stops retrying, and do not process it again.
    """


class StoreError(FrameBatchError):
    """The cache directory cannot be used."""


class ProviderError(FrameBatchError):
    """The vendor rejected the run as a whole.

    ``status_code`` and ``body`` (redacted, at most a few KB) say what the vendor answered.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.body = body


class AuthenticationError(ProviderError):
    """The API key is missing, wrong or lacks permission (HTTP 401/403)."""


class NotFoundError(ProviderError):
    """The workflow or remote batch does not exist (HTTP 404)."""


class RequestRejected(ProviderError):
    """The vendor refused the request body (HTTP 400/409/413/422)."""


class RequestTooLarge(RequestRejected):
    """HTTP 413. The engine splits the batch and sends the halves; this reaches the user only
    when a request for a single row is still too large (that row then fails)."""


class RateLimited(ProviderError):
    """HTTP 429 kept coming after the retry budget was spent."""


class ServerError(ProviderError):
    """HTTP 5xx kept coming after the retry budget was spent."""


class PaymentRequired(ProviderError):
    """HTTP 402: the account is out of credits. Submitted work stays resumable."""


class TransportError(FrameBatchError):
    """The vendor could not be reached (connection refused, reset, timed out)."""

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message)
        self.provider = provider
