"""What every emulator shares: its books (charges, requests) and its fault controls.

A mixin: an emulator calls ``_init_books(faults)`` in its ``__init__`` and provides
``handler(request)``; it then has the same public accounting surface as every other one,
so tests and benchmarks read any vendor's emulator the same way.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Literal

import httpx

from frame_batch.testing._faults import FaultInjector, FaultKind, FaultOp, Faults, RequestOp, fault_response
from frame_batch.testing._server import DropConnection, ServerHandle, serve

_RATE_WINDOW = 60.0  # seconds: vendors quote their limits per minute


class Books:
    _lock: threading.Lock
    _faults: FaultInjector
    _charges: Counter[str]
    _requests: Counter[str]
    _create_requests: int
    _clock: Callable[[], float]
    _windows: dict[str, deque[float]]

    def _init_books(self, faults: Faults) -> None:
        self._lock = threading.Lock()  # one lock guards all of an emulator's state
        self._faults = FaultInjector(faults)
        self._charges = Counter()
        self._requests = Counter()
        self._create_requests = 0
        self._windows = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        raise NotImplementedError

    def _with_faults(self, name: str, op: RequestOp, process: Callable[[], httpx.Response]) -> httpx.Response:
        """Count the request, then apply the next fault for ``op``, or ``process`` it.

        429 / 5xx / ``drop_before``: never processed. ``drop`` on a create or cancel: the
        work is done (and charged), then the answer is lost; on a read it is dropped first.
        """
        fault = self._faults.pick(op)
        with self._lock:
            self._requests[name] += 1
            if fault is not None:
                self._requests[f"fault:{fault}"] += 1
        drop_after = fault == "drop" and op != "read"
        if fault in ("429", "500", "503"):
            return self._fault_response(fault)
        if fault == "drop_before" or (fault == "drop" and not drop_after):
            raise DropConnection(before_request=fault == "drop_before")
        response = process()
        if drop_after:
            raise DropConnection()
        return response

    def _over_rate(self, key: str, limit: int | None) -> int | None:
        """A per-key sliding-window limit on the clock: whole seconds to wait when ``key`` is
        over ``limit`` requests in the last minute (the request is refused, not counted),
        else None (the request is counted)."""
        if limit is None:
            return None
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - _RATE_WINDOW:
                window.popleft()
            if len(window) >= limit:
                return max(1, math.ceil(window[0] + _RATE_WINDOW - now))
            window.append(now)
            return None

    def _fault_response(self, kind: Literal["429", "500", "503"]) -> httpx.Response:
        """The answer to a refused request; emulators override it with their vendor's shape."""
        return fault_response(kind, self._faults.faults.retry_after)

    def inject(self, kind: FaultKind, *, op: FaultOp = "any", count: int = 1) -> None:
        """Queue ``count`` faults of ``kind`` ("429", "500", "503", "drop", "drop_before")
        for the next requests of ``op`` ("create" = requests that start paid work,
        "read", "cancel", "any")."""
        self._faults.inject(kind, op=op, count=count)

    def clear_faults(self) -> None:
        """Forget queued faults and switch random faults off (e.g. to end a simulated outage)."""
        self._faults.clear()

    def serve(
        self, *, host: str = "127.0.0.1", port: int = 0, allow_non_loopback: bool = False
    ) -> AbstractContextManager[ServerHandle]:
        """Serve this emulator over a real loopback socket for the ``with`` block."""
        return serve(self.handler, host=host, port=port, allow_non_loopback=allow_non_loopback)

    def charges(self) -> Counter[str]:
        """How many times each distinct input was charged (key: its canonical JSON)."""
        with self._lock:
            return Counter(self._charges)

    def duplicates(self) -> dict[str, int]:
        """The inputs charged more than once, with their charge counts."""
        with self._lock:
            return {key: n for key, n in self._charges.items() if n > 1}

    @property
    def create_requests(self) -> int:
        """How many create requests were accepted (each one is a paid batch)."""
        with self._lock:
            return self._create_requests

    def requests(self) -> Counter[str]:
        """Requests seen per route (faulted ones included), plus ``fault:<kind>`` per fault."""
        with self._lock:
            return Counter(self._requests)
