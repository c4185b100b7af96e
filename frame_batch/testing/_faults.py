"""Fault injection shared by the emulators: random rates plus a scripted queue.

Rules kept here:

- Random faults (:class:`Faults`) hit the request kinds chosen by ``on``: ``"reads"``
  (polls), ``"creates"`` (requests that start paid work) or ``"all"`` (also cancels).
- Scripted faults (:meth:`FaultInjector.inject`) fire first, in the order they were
  queued, on the next requests whose op matches; tests use them to be deterministic.
- A 429 / 5xx / ``drop_before`` fault means the request was never processed. A ``drop``
  on a mutating request (create, cancel) is applied *after* processing: the work was done
  and charged, only the answer is lost — the ambiguous case a client must reconcile.
  A ``drop`` on a read is applied before processing (nothing to lose there).
- In-process, a dropped connection becomes the httpx error a real socket would give.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

import httpx
import orjson

from frame_batch.testing._server import DropConnection, Handler

__all__ = ["FaultInjector", "FaultKind", "FaultOp", "Faults", "fault_response", "in_process"]

FaultKind = Literal["429", "500", "503", "drop", "drop_before"]
FaultOp = Literal["create", "read", "cancel", "any"]
RequestOp = Literal["create", "read", "cancel"]

_RANDOM_OPS: dict[str, frozenset[str]] = {
    "reads": frozenset({"read"}),
    "creates": frozenset({"create"}),
    "all": frozenset({"create", "read", "cancel"}),
}
_DISCONNECTED = "Server disconnected without sending a response."


@dataclass(frozen=True)
class Faults:
    """Random fault rates (each a probability per request; their sum must be <= 1)."""

    rate_429: float = 0.0
    retry_after: float = 1.0  # seconds, sent as the Retry-After header of every 429
    rate_5xx: float = 0.0
    rate_drop: float = 0.0
    on: Literal["reads", "creates", "all"] = "reads"
    seed: int = 0

    def __post_init__(self) -> None:
        rates = {"rate_429": self.rate_429, "rate_5xx": self.rate_5xx, "rate_drop": self.rate_drop}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1, got {rate!r}")
        if sum(rates.values()) > 1.0:
            raise ValueError("Faults rates must add up to at most 1 (one fault per request)")
        if self.retry_after < 0:
            raise ValueError(f"Faults.retry_after must be >= 0 seconds, got {self.retry_after!r}")
        if self.on not in _RANDOM_OPS:
            raise ValueError(f"Faults.on must be one of {sorted(_RANDOM_OPS)}, got {self.on!r}")


@dataclass
class _Scripted:
    kind: FaultKind
    op: FaultOp
    remaining: int


class FaultInjector:
    """Decides, per request, which fault (if any) to inject. Thread-safe."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._queue: list[_Scripted] = []
        self._lock = threading.Lock()

    def inject(self, kind: FaultKind, *, op: FaultOp = "any", count: int = 1) -> None:
        """Queue ``count`` faults of ``kind`` for the next requests matching ``op``."""
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {kind!r}; use one of {get_args(FaultKind)}")
        if op not in get_args(FaultOp):
            raise ValueError(f"unknown op {op!r}; use one of {get_args(FaultOp)}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        with self._lock:
            self._queue.append(_Scripted(kind, op, count))

    def clear(self) -> None:
        """Drop every queued fault and stop random ones: the outage is over."""
        with self._lock:
            self._queue.clear()
            self.faults = Faults(seed=self.faults.seed)

    def pick(self, op: RequestOp) -> FaultKind | None:
        """The fault for one request of kind ``op``, or None to process it normally."""
        with self._lock:
            return self._scripted(op) or self._random(op)

    def _scripted(self, op: RequestOp) -> FaultKind | None:
        for entry in self._queue:
            if entry.op in (op, "any"):
                entry.remaining -= 1
                if entry.remaining == 0:
                    self._queue.remove(entry)
                return entry.kind
        return None

    def _random(self, op: RequestOp) -> FaultKind | None:
        f = self.faults
        if op not in _RANDOM_OPS[f.on] or f.rate_429 + f.rate_5xx + f.rate_drop == 0:
            return None
        draw = self._rng.random()  # one draw per request: the rates partition [0, 1)
        if draw < f.rate_429:
            return "429"
        if draw < f.rate_429 + f.rate_5xx:
            return "503" if self._rng.random() < 0.5 else "500"
        if draw < f.rate_429 + f.rate_5xx + f.rate_drop:
            return "drop"
        return None


def fault_response(kind: Literal["429", "500", "503"], retry_after: float) -> httpx.Response:
    """The answer a vendor gives when it refuses a request before doing any work."""
    if kind == "429":
        return _json(429, "Too many requests", {"retry-after": _seconds(retry_after)})
    if kind == "503":
        return _json(503, "Service unavailable", {})
    return _json(500, "Internal server error", {})


def in_process(handler: Handler) -> Handler:
    """Wrap ``handler`` for ``httpx.MockTransport``: dropped connections become httpx errors."""

    def wrapped(request: httpx.Request) -> httpx.Response:
        try:
            return handler(request)
        except DropConnection as drop:
            if drop.before_request:
                raise httpx.ConnectError(
                    "All connection attempts failed (emulated)", request=request
                ) from None
            raise httpx.RemoteProtocolError(_DISCONNECTED, request=request) from None

    return wrapped


def _json(status: int, error: str, headers: dict[str, str]) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return httpx.Response(status, content=orjson.dumps({"error": error}), headers=headers)


def _seconds(value: float) -> str:
    """Retry-After text: ``1`` for whole seconds, ``0.05`` (never ``5e-02``) otherwise."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
