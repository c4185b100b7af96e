"""A stateful fake of Parallel's Task API (see ``api-contracts.md`` §2).

Emulated as the OpenAPI reference and the official SDK (``parallel-web`` 1.3.7) describe
it, every ``tasks`` path under both ``/v1`` and ``/v1beta``, ``x-api-key`` auth:

- Task Groups: ``POST /v1/tasks/groups``; ``GET …/groups/{id}`` (aggregated status);
  ``POST …/groups/{id}/runs`` (add up to 1,000 runs; each run is charged once, here);
  ``GET …/groups/{id}/runs`` (SSE: one ``task_run.state`` event per run, in insertion
  order, then the stream closes); ``GET …/groups/{id}/events`` (SSE: a
  ``task_group_status`` event, then one ``task_run.state`` event per run that reached a
  non-active status, in the order they did); ``GET …/groups/{id}/runs/{run_id}``.
- Single runs: ``POST /v1/tasks/runs`` (202, ``queued``), ``GET /v1/tasks/runs/{id}``,
  ``…/result`` (answers at once: 408 while the run is active, 404 when it failed),
  ``…/input`` and ``…/events`` (one ``task_run.state`` event, with the output once done).
- Errors: ``ErrorResponse`` ``{type: "error", error: {ref_id, message, detail?}}`` for
  every non-2xx except 422, which has FastAPI's ``{detail: [{loc, msg, type}]}`` shape.
- Limits: 1,000 runs per add-runs request; task spec + input <= 25,000 characters;
  metadata keys <= 16 and string values <= 512 characters; creating POSTs rate-limited per
  key in a sliding 60 s window (429 with ``retry-after``); credits reserved up front for a
  whole request (402, nothing created, when short).
- Webhooks: a run with ``webhook: {url}`` is POSTed ``{timestamp, type:
  "task_run.status", data: TaskRun}`` once it is completed or failed, signed
  ``v1,<base64 HMAC-SHA256>`` over ``"{webhook-id}.{webhook-timestamp}.{body}"``. The
  emulator notices a settled run on the next request it handles (or on
  :meth:`ParallelEmulator.deliver_webhooks`) and sends the webhook then, synchronously.

Inferred, not published (the vendor page is only partly retrievable): the legacy v0
Batch API paths and shapes — ``POST /v0/tasks/{task_id}/batches``,
``GET /v0/tasks/{task_id}/batches/{batch_run_id}`` (status map),
``GET …/results?format=json|csv`` and ``GET /v0/tasks/{task_id}/runs/{run_id}`` — plus
the ``callback_webhook`` payload (taken to be the v1 webhook), the ``neon`` runner's
latency and price, the id formats of batches, and which requests the rate limit counts
(every authenticated creating POST it admits, including ones that then fail validation).

Simplified on purpose: the real ``/events`` stream stays open up to an hour while runs are
active and ``/result`` blocks up to ``timeout`` seconds; here both answer at once (tests
must never wait). There is no cancel endpoint (the public API has none), no per-run
progress events beyond the state, and a webhook is sent once, without the real 48-hour
retries. Run states are computed from the injectable clock: ``queued`` for the first
quarter of a run's duration, then ``running``, then ``completed``, ``failed`` or
``action_required``. Outcomes are decided at creation and a failure depends only on the
input's content, so a rerun of the same input fails the same way. One lock guards all
state; user callables (``task``, ``action_required``, ``webhook_sender``) run outside it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import heapq
import hmac
import io
import itertools
import math
import random
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal, cast

import httpx
import orjson

from frame_batch.testing._books import Books
from frame_batch.testing._faults import (
    Faults,
    fault_response,
    in_process,
)
from frame_batch.testing._routing import Route, find_route
from frame_batch.testing._routing import route as _route
from frame_batch.testing._server import DropConnection

__all__ = [
    "DEFAULT_PRICES",
    "DEFAULT_PROCESSORS",
    "ParallelEmulator",
    "Task",
    "WebhookSender",
    "default_task",
]

Json = dict[str, object]
TaskInput = str | dict[str, object]
Task = Callable[[TaskInput, dict[str, object] | str], dict[str, object] | str]
WebhookSender = Callable[[str, dict[str, str], bytes], None]
Loc = tuple[str | int, ...]
_Settled = Literal["completed", "failed", "action_required"]

_SIZES = {"lite": 1.0, "base": 1.5, "core": 3.0, "core2x": 4.0, "pro": 6.0, "ultra": 12.0}
_SIZES |= {"ultra2x": 18.0, "ultra4x": 24.0, "ultra8x": 36.0}
_COSTS = {"lite": 0.005, "base": 0.01, "core": 0.025, "core2x": 0.05, "pro": 0.1, "ultra": 0.3}
_COSTS |= {"ultra2x": 0.6, "ultra4x": 1.2, "ultra8x": 2.4}
# Latency multipliers of ``latency``: bigger processors are slower, "-fast" ones ~3x faster.
DEFAULT_PROCESSORS: Mapping[str, float] = {
    **_SIZES,
    **{f"{name}-fast": size / 3 for name, size in _SIZES.items()},
}
# Price per run (USD, the published per-1,000 prices / 1,000); "-fast" costs the same.
DEFAULT_PRICES: Mapping[str, float] = {
    **_COSTS,
    **{f"{name}-fast": cost for name, cost in _COSTS.items()},
    "neon": 0.01,  # the legacy v0 runner: price not published, assumed like "base"
}

_STATUSES = ("queued", "action_required", "running", "completed", "failed", "cancelling", "cancelled")
_ACTIVE = frozenset({"queued", "running", "cancelling"})
_LEGACY_STATUS = {
    "queued": "queued",
    "running": "running",
    "action_required": "awaiting_tool_calls",
    "completed": "complete",
    "failed": "failed",
}
_LEGACY_RUNNER = "neon"
_V0_RUN_KEYS = frozenset({"run_id", "status", "runner", "input", "output"})
_LEGACY_SCHEMA: Json = {"type": "object", "properties": {"answer": {"type": "string"}}}
_AUTO_SCHEMA: Json = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "The answer to the task."}},
    "required": ["answer"],
    "additionalProperties": False,
}
_MAX_RUNS = 1000
_MAX_SPEC_AND_INPUT = 25_000
_MAX_METADATA_KEY = 16
_MAX_METADATA_VALUE = 512
_QUEUED_SHARE = 0.25  # a run waits in the queue for this share of its duration
_MIN_SPREAD = 1.0  # out_of_order spreads finishes over >= this many seconds, even at latency 0
_WEBHOOK_TIMEOUT = 2.0
_EMULATED_FAILURE = "Task run failed (emulated failure_rate)"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def default_task(task_input: TaskInput, output_schema: dict[str, object] | str) -> dict[str, object] | str:
    """Deterministic output from the input: a value of the declared type for every schema
    property (dates, timestamps, numbers, arrays, nested objects), or a text answer."""
    key = _canonical(task_input)
    if isinstance(output_schema, str):
        preview = task_input if isinstance(task_input, str) else key
        return f"Emulated answer ({_hash(key, 'text'):08x}) for: {preview[:200]}"
    return _fake_object(output_schema, key, "", 0)


class _ApiError(Exception):
    """A non-422 error answer, raised from deep inside a route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: Json | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


class _Invalid(Exception):
    """A 422 in FastAPI's HTTPValidationError shape; carries every issue found."""

    def __init__(self, issues: list[Json]) -> None:
        super().__init__(f"{len(issues)} validation issue(s)")
        self.issues = issues


_V1 = "/(?:v1|v1beta)/tasks"
_ROUTES = (
    _route("create_group", "POST", f"{_V1}/groups", "read"),
    _route("get_group", "GET", f"{_V1}/groups/{{group}}", "read"),
    _route("add_runs", "POST", f"{_V1}/groups/{{group}}/runs", "create"),
    _route("runs_stream", "GET", f"{_V1}/groups/{{group}}/runs", "read"),
    _route("events_stream", "GET", f"{_V1}/groups/{{group}}/events", "read"),
    _route("group_run", "GET", f"{_V1}/groups/{{group}}/runs/{{run}}", "read"),
    _route("create_run", "POST", f"{_V1}/runs", "create"),
    _route("get_run", "GET", f"{_V1}/runs/{{run}}", "read"),
    _route("run_result", "GET", f"{_V1}/runs/{{run}}/result", "read"),
    _route("run_input", "GET", f"{_V1}/runs/{{run}}/input", "read"),
    _route("run_events", "GET", f"{_V1}/runs/{{run}}/events", "read"),
    _route("create_batch", "POST", "/v0/tasks/{task}/batches", "create"),
    _route("get_batch", "GET", "/v0/tasks/{task}/batches/{batch}", "read"),
    _route("batch_results", "GET", "/v0/tasks/{task}/batches/{batch}/results", "read"),
    _route("legacy_run", "GET", "/v0/tasks/{task}/runs/{run}", "read"),
)


@dataclass(frozen=True)
class _Call:
    request: httpx.Request
    params: dict[str, str]
    in_process: bool

    @property
    def query(self) -> httpx.QueryParams:
        return self.request.url.params

    def cut(self) -> BaseException:
        """What a cut stream raises: the client's own error in-process, a socket drop otherwise."""
        if self.in_process:
            message = "peer closed connection without sending complete message body (emulated cut)"
            return httpx.RemoteProtocolError(message, request=self.request)
        return DropConnection()


@dataclass(frozen=True)
class _Schema:
    kind: Literal["json", "text", "auto"]
    json_schema: Json | None = None
    description: str = ""

    def task_arg(self) -> dict[str, object] | str:
        return self.description if self.json_schema is None else self.json_schema


@dataclass(frozen=True)
class _TaskSpec:
    raw: object  # as sent: counted against the 25,000-character limit
    schema: _Schema


_TEXT_SPEC = _TaskSpec(None, _Schema("text"))


@dataclass(frozen=True)
class _Spec:
    """One validated run request (v1 TaskRunInput or v0 task run request)."""

    echo: Json  # what /input and include_input return
    input: TaskInput
    processor: str
    task_spec: _TaskSpec
    metadata: Json | None = None
    webhook: str | None = None

    @property
    def charge_key(self) -> str:
        return _canonical(self.input)


@dataclass(frozen=True)
class _Outcome:
    status: _Settled
    content: Json | str | None = None
    output: Json | None = None  # TaskRunJsonOutput / TaskRunTextOutput
    error: str | None = None


@dataclass
class _Group:
    id: str
    created_at: float
    metadata: Json | None
    runs: list[_Run] = field(default_factory=list)
    events: int = 0  # run events numbered so far in /events (its cursor)


@dataclass
class _Batch:
    id: str
    task_id: str
    runs: list[_Run] = field(default_factory=list)


@dataclass(eq=False)
class _Run:
    id: str
    position: int  # 1-based place in its group: its event id in the runs stream
    spec: _Spec
    outcome: _Outcome
    created_at: float
    started_at: float
    finishes_at: float
    group: _Group | None = None
    batch: _Batch | None = None
    event_id: int | None = None  # set when the emulator notices it settled
    ref_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def status(self, now: float) -> str:
        if now < self.started_at:
            return "queued"
        return "running" if now < self.finishes_at else self.outcome.status

    def modified_at(self, now: float) -> float:
        if now >= self.finishes_at:
            return self.finishes_at
        return self.started_at if now >= self.started_at else self.created_at


@dataclass(frozen=True)
class _Delivery:
    url: str
    data: Json  # the TaskRun at the moment the emulator noticed it settled


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streamed body for sync and async clients alike (a plain generator is sync-only)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class ParallelEmulator(Books):
    """A fake Parallel Task API: in-process via :meth:`transport`, over a socket via :meth:`serve`.

    Knobs: ``latency`` seconds per run, times the run's ``processors`` multiplier (bigger
    processors are slower), plus up to ``jitter``; ``out_of_order`` reorders completions;
    ``failure_rate`` fails inputs by content; ``task(input, schema)`` computes the output
    (a dict for JSON schemas, a str for text; raising fails the run with its message);
    ``action_required(input)`` parks runs in ``action_required``; ``credits`` (None =
    unlimited) and ``prices`` per run; ``rate_limit_per_minute`` creating POSTs per key
    (None = off); ``cut_runs_streams_after`` cuts every runs stream after that many
    events; ``webhook_secrets`` sign webhooks and ``webhook_sender(url, headers, body)``
    sends them (default: a real POST; a sender's exception is swallowed like a receiver
    that is down); ``tasks`` maps v0 task ids to output schemas (None accepts any id).

    Accounting (:meth:`charges`, :meth:`duplicates`, :meth:`cost`, :meth:`requests`,
    :attr:`create_requests`) lets a test prove that nothing was paid for twice. Top up
    :attr:`credits` between requests to end a 402.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        failure_rate: float = 0.0,
        out_of_order: bool = False,
        faults: Faults = Faults(),  # noqa: B008 - frozen, so one shared default is safe
        api_keys: Collection[str] | None = None,
        processors: Mapping[str, float] | None = None,
        prices: Mapping[str, float] | None = None,
        task: Task | None = None,
        action_required: Callable[[TaskInput], bool] | None = None,
        credits: float | None = None,
        rate_limit_per_minute: int | None = 2000,
        cut_runs_streams_after: int | None = None,
        webhook_secrets: Sequence[str] = (),
        webhook_sender: WebhookSender | None = None,
        tasks: Mapping[str, dict[str, object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        _check_knobs(latency, jitter, failure_rate, rate_limit_per_minute, cut_runs_streams_after)
        _check_rates("processors", processors)
        _check_rates("prices", prices)
        self.latency = latency
        self.jitter = jitter
        self.failure_rate = failure_rate
        self.out_of_order = out_of_order
        self.credits = credits
        self.rate_limit_per_minute = rate_limit_per_minute
        self.cut_runs_streams_after = cut_runs_streams_after
        self.seed = seed
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._processors = dict(DEFAULT_PROCESSORS if processors is None else processors)
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._task = task or default_task
        self._action_required = action_required
        self._webhook_secrets = tuple(webhook_secrets)
        self._webhook_sender = webhook_sender or _post_webhook
        self._tasks = None if tasks is None else {k: _unwrap_schema(v) for k, v in tasks.items()}
        self._clock = clock
        self._wall_offset = time.time() - clock()  # maps the clock onto RFC 3339 timestamps
        self._rng = random.Random(seed)
        self._init_books(faults)
        self._groups: dict[str, _Group] = {}
        self._runs: dict[str, _Run] = {}
        self._batches: dict[str, _Batch] = {}
        self._legacy_runs: dict[str, _Run] = {}
        self._pending: list[tuple[float, int, _Run]] = []  # heap of unsettled runs by finish time
        self._order = itertools.count()
        self._stream_cuts: deque[int] = deque()
        self._cost = 0.0
        self._routes: dict[str, Callable[[_Call], httpx.Response]] = {
            route.name: getattr(self, f"_{route.name}") for route in _ROUTES
        }

    def __repr__(self) -> str:
        keys = "any" if self._api_keys is None else f"<{len(self._api_keys)} keys>"
        return (
            f"ParallelEmulator(latency={self.latency}, jitter={self.jitter}, "
            f"failure_rate={self.failure_rate}, out_of_order={self.out_of_order}, "
            f"credits={self.credits}, faults={self._faults.faults}, api_keys={keys}, "
            f"webhook_secrets=<{len(self._webhook_secrets)}>)"
        )

    # -- public surface ------------------------------------------------------------------

    def cut_next_runs_stream(self, after_events: int, *, count: int = 1) -> None:
        """Cut the next ``count`` runs streams (``GET …/groups/{id}/runs``) after
        ``after_events`` events; a stream with fewer events is cut at its end instead of
        closing cleanly. The client sees a broken body and can resume with last_event_id."""
        if after_events < 0 or count < 1:
            raise ValueError("after_events must be >= 0 and count >= 1")
        with self._lock:
            self._stream_cuts.extend([after_events] * count)

    def clear_faults(self) -> None:
        """Forget queued faults and stream cuts and switch random faults off."""
        super().clear_faults()
        with self._lock:
            self._stream_cuts.clear()
            self.cut_runs_streams_after = None

    def transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client`` and ``httpx.AsyncClient`` alike."""
        return httpx.MockTransport(in_process(self._handle_in_process))

    def cost(self) -> float:
        """Total price of every run charged so far."""
        with self._lock:
            return round(self._cost, 9)

    def group_runs(self, group_id: str) -> list[dict[str, object]]:
        """The TaskRun objects of a group, in insertion order (KeyError if unknown)."""
        with self._lock:
            now = self._clock()
            return [self._task_run(run, now) for run in self._groups[group_id].runs]

    def deliver_webhooks(self) -> int:
        """Send the webhooks of runs that settled since the last request; returns how many."""
        deliveries = self._advance()
        for delivery in deliveries:
            self._send_webhook(delivery)
        return len(deliveries)

    # -- request handling ----------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer one request; raises :class:`DropConnection` for an injected drop."""
        return self._handle(request, in_process=False)

    def _handle_in_process(self, request: httpx.Request) -> httpx.Response:
        return self._handle(request, in_process=True)

    def _handle(self, request: httpx.Request, *, in_process: bool) -> httpx.Response:
        self.deliver_webhooks()  # any request is a chance to notice runs that settled
        found = _match(request)
        if isinstance(found, httpx.Response):
            return found
        route, params = found
        return self._with_faults(
            route.name, route.op, lambda: self._process(route, _Call(request, params, in_process))
        )

    def _process(self, route: Route, call: _Call) -> httpx.Response:
        try:
            key = self._authenticate(call.request)
            if route.op == "create":
                self._admit(key)
            return self._routes[route.name](call)
        except _ApiError as exc:
            return _error(exc.status, exc.message, detail=exc.detail, headers=exc.headers)
        except _Invalid as exc:
            return _json(422, {"detail": exc.issues})

    def _fault_response(self, kind: Literal["429", "500", "503"]) -> httpx.Response:
        # The shared helper formats Retry-After; the body is Parallel's ErrorResponse.
        shared = fault_response(kind, self._faults.faults.retry_after)
        messages = {
            "429": "Too many requests: quota temporarily exceeded",
            "500": "Internal server error",
            "503": "Service unavailable",
        }
        retry_after = shared.headers.get("retry-after")
        headers = {} if retry_after is None else {"retry-after": retry_after}
        return _error(shared.status_code, messages[kind], headers=headers)

    def _authenticate(self, request: httpx.Request) -> str:
        key = str(request.headers.get("x-api-key", "")).strip()
        if not key:
            raise _ApiError(401, "Missing API key: send it in the x-api-key header")
        if self._api_keys is not None and key not in self._api_keys:
            raise _ApiError(401, "Invalid API key")  # never echo the key
        return key

    def _admit(self, key: str) -> None:
        """The per-key sliding-window rate limit of creating POSTs."""
        wait = self._over_rate(key, self.rate_limit_per_minute)
        if wait is not None:
            message = "Too many requests: quota temporarily exceeded"
            raise _ApiError(429, message, headers={"retry-after": str(wait)})

    # -- task groups -----------------------------------------------------------------------

    def _create_group(self, call: _Call) -> httpx.Response:
        body = _json_body(call.request, allow_empty=True)
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _Invalid([_issue(("body", "metadata"), "Input should be a valid dictionary", "dict_type")])
        with self._lock:
            group = _Group(_new_id("tgrp_"), self._clock(), metadata)
            self._groups[group.id] = group
            return _json(200, self._group_json(group, group.created_at))

    def _get_group(self, call: _Call) -> httpx.Response:
        with self._lock:
            group = self._group(call.params["group"])
            return _json(200, self._group_json(group, self._clock()))

    def _add_runs(self, call: _Call) -> httpx.Response:
        body = _json_body(call.request)
        specs = _parse_add_runs(body)
        with self._lock:
            self._group(call.params["group"])  # 404 before any work
        self._check_processors(specs)
        _check_sizes(specs, [("body", "inputs", i) for i in range(len(specs))])
        outcomes = [self._execute(spec) for spec in specs]  # user code: no lock held
        with self._lock:
            group = self._group(call.params["group"])
            run_cursor = str(len(group.runs)) if group.runs else None
            event_cursor = str(group.events) if group.runs else None
            runs = self._create(specs, outcomes, group=group)
            return _json(
                200,
                {
                    "run_ids": [run.id for run in runs],
                    "status": self._group_status(group, self._clock()),
                    "run_cursor": run_cursor,
                    "event_cursor": event_cursor,
                },
            )

    def _runs_stream(self, call: _Call) -> httpx.Response:
        include_input = _flag(call.query, "include_input")
        include_output = _flag(call.query, "include_output")
        status = _status_param(call.query)
        after = _cursor(call.query)
        with self._lock:
            group = self._group(call.params["group"])
            now = self._clock()
            events = [
                self._run_event(
                    run, now, str(run.position), include_input=include_input, include_output=include_output
                )
                for run in group.runs
                if run.position > after and (status is None or run.status(now) == status)
            ]
            cut_after = self._stream_cuts.popleft() if self._stream_cuts else self.cut_runs_streams_after
        return _sse(events, cut_after, call)

    def _events_stream(self, call: _Call) -> httpx.Response:
        """What the real stream would have sent by now, then close: the real one stays open
        up to an hour while runs are active, which a test must never wait for."""
        after = _cursor(call.query)
        _number_param(call.query, "timeout")  # validated, then ignored: we never hold the stream open
        with self._lock:
            group = self._group(call.params["group"])
            now = self._clock()
            status_event: Json = {
                "type": "task_group_status",
                "event_id": str(group.events),
                "status": self._group_status(group, now),
            }
            settled = sorted(
                (run for run in group.runs if run.event_id is not None and run.event_id > after),
                key=lambda run: run.event_id or 0,
            )
            events = [status_event] + [self._run_event(run, now, str(run.event_id)) for run in settled]
        return _sse(events, None, call)

    def _group_run(self, call: _Call) -> httpx.Response:
        with self._lock:
            group = self._group(call.params["group"])
            run = self._runs.get(call.params["run"])
            if run is None or run.group is not group:
                raise _ApiError(404, "Run not found")
            return _json(200, self._task_run(run, self._clock()))

    # -- single runs -----------------------------------------------------------------------

    def _create_run(self, call: _Call) -> httpx.Response:
        spec = _parse_run_input(_json_body(call.request), ("body",), None)
        self._check_processors([spec])
        _check_sizes([spec], [("body",)])
        outcome = self._execute(spec)  # user code: no lock held
        with self._lock:
            (run,) = self._create([spec], [outcome])
            # The answer is a snapshot taken on acceptance: always queued, as documented.
            return _json(202, self._task_run(run, run.created_at, status="queued"))

    def _get_run(self, call: _Call) -> httpx.Response:
        with self._lock:
            return _json(200, self._task_run(self._run(call.params["run"]), self._clock()))

    def _run_result(self, call: _Call) -> httpx.Response:
        _number_param(call.query, "timeout")  # validated, then ignored: we answer at once
        with self._lock:
            run = self._runs.get(call.params["run"])
            now = self._clock()
            status = None if run is None else run.status(now)
            if run is None or status == "failed":
                raise _ApiError(404, "Run failed or run id not found")
            if status != "completed":
                raise _ApiError(408, f"Request timed out; run still {status}")
            return _json(200, {"run": self._task_run(run, now), "output": run.outcome.output})

    def _run_input(self, call: _Call) -> httpx.Response:
        with self._lock:
            return _json(200, self._run(call.params["run"]).spec.echo)

    def _run_events(self, call: _Call) -> httpx.Response:
        with self._lock:
            run = self._run(call.params["run"])
            event = self._run_event(run, self._clock(), None, include_output=True)
        return _sse([event], None, call)

    # -- legacy v0 batches ------------------------------------------------------------------

    def _create_batch(self, call: _Call) -> httpx.Response:
        task_id = call.params["task"]
        schema = self._legacy_schema(task_id)
        specs = _parse_batch(_json_body(call.request), schema)
        self._check_processors(specs, legacy=True)
        outcomes = [self._execute(spec) for spec in specs]  # user code: no lock held
        with self._lock:
            batch = _Batch(_new_id("brun_"), task_id)
            self._batches[batch.id] = batch
            runs = self._create(specs, outcomes, batch=batch)
            return _json(
                200,
                {
                    "task_id": task_id,
                    "batch_run_id": batch.id,
                    "run_ids": [run.id for run in runs],
                    "created_at": self._stamp(self._clock()),
                },
            )

    def _get_batch(self, call: _Call) -> httpx.Response:
        with self._lock:
            batch = self._batch(call.params["task"], call.params["batch"])
            now = self._clock()
            status: dict[str, list[str]] = {name: [] for name in _LEGACY_STATUS.values()}
            for run in batch.runs:
                status[_LEGACY_STATUS[run.status(now)]].append(run.id)
            return _json(200, {"task_id": batch.task_id, "batch_run_id": batch.id, "status": status})

    def _batch_results(self, call: _Call) -> httpx.Response:
        export = call.query.get("format", "json")
        if export not in ("json", "csv"):
            raise _Invalid([_issue(("query", "format"), "Input should be 'json' or 'csv'", "enum")])
        with self._lock:
            batch = self._batch(call.params["task"], call.params["batch"])
            now = self._clock()
            rows = [
                self._legacy_row(run, now) for run in batch.runs if run.status(now) in ("completed", "failed")
            ]
        if export == "csv":
            return _streamed("text/csv; charset=utf-8", _csv_export(rows))
        return _streamed("application/json", _json_export(rows))

    def _legacy_run(self, call: _Call) -> httpx.Response:
        with self._lock:
            run = self._legacy_runs.get(call.params["run"])
            if run is None or run.batch is None or run.batch.task_id != call.params["task"]:
                raise _ApiError(404, "Run not found")
            now = self._clock()
            status = run.status(now)
            row = {key: value for key, value in self._legacy_row(run, now).items() if key in _V0_RUN_KEYS}
            row["error"] = run.outcome.error if status == "failed" else None
            return _json(200, row)

    def _legacy_schema(self, task_id: str) -> Json:
        if self._tasks is None:
            return _LEGACY_SCHEMA
        schema = self._tasks.get(task_id)
        if schema is None:
            raise _ApiError(404, "Task not found")
        return schema

    def _legacy_row(self, run: _Run, now: float) -> Json:
        assert run.batch is not None  # only batch runs reach here
        status = run.status(now)
        return {
            "task_id": run.batch.task_id,
            "batch_run_id": run.batch.id,
            "run_id": run.id,
            "status": _LEGACY_STATUS[status],
            "runner": run.spec.processor,
            "input": run.spec.echo,
            "output": run.outcome.content if status == "completed" else None,
        }

    # -- running and accounting (callers hold the lock where state is touched) --------------

    def _check_processors(self, specs: Sequence[_Spec], *, legacy: bool = False) -> None:
        """403 for an unknown processor (v0: runner), checked after schema validation."""
        for spec in specs:
            known = spec.processor in self._processors or (legacy and spec.processor == _LEGACY_RUNNER)
            if not known:
                raise _ApiError(403, "invalid processor", detail={"processor": spec.processor})

    def _execute(self, spec: _Spec) -> _Outcome:
        if self._fails(spec.charge_key):
            return _Outcome("failed", error=_EMULATED_FAILURE)
        schema = spec.task_spec.schema
        try:  # user code: trust nothing about what it returns or raises
            if self._action_required is not None and self._action_required(spec.input):
                return _Outcome("action_required")
            content: object = self._task(spec.input, schema.task_arg())
        except Exception as exc:  # the task's exception is that run's failure, not ours
            return _Outcome("failed", error=str(exc) or type(exc).__name__)
        expected = str if schema.kind == "text" else dict
        if not isinstance(content, expected):
            wanted = "a string" if expected is str else "an object"
            return _Outcome("failed", error=f"task returned {type(content).__name__}, expected {wanted}")
        try:
            orjson.dumps(content)  # a result the API could never send must fail here, not in a read
        except TypeError as exc:
            return _Outcome("failed", error=f"task returned content that is not JSON: {exc}")
        content = cast(Json | str, content)
        return _Outcome("completed", content, _output(schema, content, spec.charge_key))

    def _fails(self, key: str) -> bool:
        """Decided by content alone, so the same input fails on every rerun."""
        if self.failure_rate <= 0:
            return False
        return _hash(key, f"fail:{self.seed}") / 2**64 < self.failure_rate

    def _create(
        self,
        specs: Sequence[_Spec],
        outcomes: Sequence[_Outcome],
        *,
        group: _Group | None = None,
        batch: _Batch | None = None,
    ) -> list[_Run]:
        price = round(sum(self._prices.get(spec.processor, 0.0) for spec in specs), 9)
        self._reserve(price)
        now = self._clock()
        first = len(group.runs) + 1 if group is not None else 1
        runs = [
            self._new_run(spec, outcome, now, duration, first + i, group, batch)
            for i, (spec, outcome, duration) in enumerate(
                zip(specs, outcomes, self._durations(specs), strict=True)
            )
        ]
        self._charges.update(spec.charge_key for spec in specs)
        self._cost += price
        self._create_requests += 1
        return runs

    def _reserve(self, price: float) -> None:
        """Credits are reserved for every run of a request up front: all or nothing."""
        if self.credits is None:
            return
        if price > self.credits + 1e-12:
            message = f"Insufficient credit: this request needs {price:g}, {self.credits:g} available"
            raise _ApiError(402, message, detail={"required": price, "available": self.credits})
        self.credits = round(self.credits - price, 9)

    def _new_run(
        self,
        spec: _Spec,
        outcome: _Outcome,
        now: float,
        duration: float,
        position: int,
        group: _Group | None,
        batch: _Batch | None,
    ) -> _Run:
        run = _Run(
            id=_new_id("trun_"),
            position=position,
            spec=spec,
            outcome=outcome,
            created_at=now,
            started_at=now + duration * _QUEUED_SHARE,
            finishes_at=now + duration,
            group=group,
            batch=batch,
        )
        if batch is not None:
            batch.runs.append(run)
            self._legacy_runs[run.id] = run
        else:
            self._runs[run.id] = run
        if group is not None:
            group.runs.append(run)
        heapq.heappush(self._pending, (run.finishes_at, next(self._order), run))
        return run

    def _durations(self, specs: Sequence[_Spec]) -> list[float]:
        bases = [self.latency * self._processors.get(spec.processor, 1.0) for spec in specs]
        durations = [base + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0) for base in bases]
        if not self.out_of_order or len(specs) < 2:
            return durations
        ranks = list(range(len(specs)))
        while ranks == sorted(ranks):  # a shuffle may be the identity; never let it be
            self._rng.shuffle(ranks)
        # Later ranks finish later, whatever their insertion order: completion is reordered.
        spread = max(self.latency, _MIN_SPREAD)
        return [d + spread * rank / len(specs) for d, rank in zip(durations, ranks, strict=True)]

    def _advance(self) -> list[_Delivery]:
        """Notice the runs that settled: number their /events entries, collect webhooks."""
        deliveries: list[_Delivery] = []
        with self._lock:
            now = self._clock()
            while self._pending and self._pending[0][0] <= now:
                run = heapq.heappop(self._pending)[2]
                if run.group is not None:
                    run.group.events += 1
                    run.event_id = run.group.events
                if run.spec.webhook and run.outcome.status in ("completed", "failed"):
                    deliveries.append(_Delivery(run.spec.webhook, self._task_run(run, now)))
        return deliveries

    def _send_webhook(self, delivery: _Delivery) -> None:
        # Real time, not the emulator clock: receivers check it against their own clock.
        sent_at = time.time()
        body = orjson.dumps(
            {"timestamp": _rfc3339(sent_at), "type": "task_run.status", "data": delivery.data}
        )
        webhook_id = _new_id("whevent_")
        timestamp = str(int(sent_at))
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
        }
        if self._webhook_secrets:
            signatures = (_sign(secret, webhook_id, timestamp, body) for secret in self._webhook_secrets)
            headers["webhook-signature"] = " ".join(signatures)
        try:
            self._webhook_sender(delivery.url, headers, body)
        except Exception:  # a receiver that is down; the real service retries, we do not
            return

    # -- views (callers hold the lock) ------------------------------------------------------

    def _task_run(self, run: _Run, now: float, *, status: str | None = None) -> Json:
        status = status or run.status(now)
        body: Json = {
            "run_id": run.id,
            "interaction_id": run.id,
            "status": status,
            "is_active": status in _ACTIVE,
            "processor": run.spec.processor,
            "created_at": self._stamp(run.created_at),
            "modified_at": self._stamp(run.created_at if status == "queued" else run.modified_at(now)),
            "metadata": run.spec.metadata,
            "taskgroup_id": None if run.group is None else run.group.id,
            "warnings": None,
        }
        if status == "failed":
            body["error"] = {"ref_id": run.ref_id, "message": run.outcome.error, "detail": None}
        return body

    def _run_event(
        self,
        run: _Run,
        now: float,
        event_id: str | None,
        *,
        include_input: bool = False,
        include_output: bool = False,
    ) -> Json:
        completed = run.status(now) == "completed"
        return {
            "type": "task_run.state",
            "event_id": event_id,
            "run": self._task_run(run, now),
            "input": run.spec.echo if include_input else None,
            "output": run.outcome.output if include_output and completed else None,
        }

    def _group_json(self, group: _Group, now: float) -> Json:
        return {
            "taskgroup_id": group.id,
            "status": self._group_status(group, now),
            "created_at": self._stamp(group.created_at),
            "metadata": group.metadata,
        }

    def _group_status(self, group: _Group, now: float) -> Json:
        counts = Counter(run.status(now) for run in group.runs)
        modified = max((run.modified_at(now) for run in group.runs), default=group.created_at)
        return {
            "num_task_runs": len(group.runs),
            "task_run_status_counts": {status: counts[status] for status in _STATUSES if counts[status]},
            "is_active": any(status in _ACTIVE for status in counts),
            "status_message": None,
            "modified_at": self._stamp(modified),
        }

    def _stamp(self, moment: float) -> str:
        return _rfc3339(moment + self._wall_offset)

    def _group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            raise _ApiError(404, "TaskGroup not found")
        return group

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise _ApiError(404, "Run not found")
        return run

    def _batch(self, task_id: str, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.task_id != task_id:
            raise _ApiError(404, "Batch run not found")
        return batch


def _check_knobs(
    latency: float, jitter: float, failure_rate: float, rate_limit: int | None, cut_after: int | None
) -> None:
    if latency < 0 or jitter < 0:
        raise ValueError("latency and jitter are seconds and must be >= 0")
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
    if rate_limit is not None and rate_limit < 1:
        raise ValueError(f"rate_limit_per_minute must be >= 1 or None, got {rate_limit!r}")
    if cut_after is not None and cut_after < 0:
        raise ValueError(f"cut_runs_streams_after must be >= 0 or None, got {cut_after!r}")


def _check_rates(name: str, rates: Mapping[str, float] | None) -> None:
    negative = sorted(key for key, value in (rates or {}).items() if not value >= 0)
    if negative:
        raise ValueError(f"{name} must map names to numbers >= 0; check {negative}")


# -- routing and request parsing -------------------------------------------------------------


def _match(request: httpx.Request) -> tuple[Route, dict[str, str]] | httpx.Response:
    found = find_route(request, _ROUTES)
    if isinstance(found, tuple):
        return found
    if found:
        return _error(405, f"Method {request.method} not allowed", headers={"allow": ", ".join(found)})
    return _error(404, f"Not found: {request.url.path}")


def _json_body(request: httpx.Request, *, allow_empty: bool = False) -> Json:
    if allow_empty and not request.content.strip():
        return {}
    try:
        body = orjson.loads(request.content)
    except orjson.JSONDecodeError as exc:
        raise _Invalid([_issue(("body",), f"JSON decode error: {exc}", "json_invalid")]) from None
    if not isinstance(body, dict):
        raise _Invalid([_issue(("body",), "Input should be a valid dictionary", "dict_type")])
    return body


def _parse_add_runs(body: Json) -> list[_Spec]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise _Invalid([_missing(("body", "inputs")) if inputs is None else _not_list(("body", "inputs"))])
    if len(inputs) > _MAX_RUNS:
        message = f"List should have at most {_MAX_RUNS} items after validation, not {len(inputs)}"
        raise _Invalid([_issue(("body", "inputs"), message, "too_long")])
    issues: list[Json] = []
    default: _TaskSpec | None = None
    if body.get("default_task_spec") is not None:
        try:
            default = _parse_task_spec(body["default_task_spec"], ("body", "default_task_spec"))
        except _Invalid as exc:
            issues += exc.issues
    return _parse_each(
        inputs, ("body", "inputs"), lambda item, loc: _parse_run_input(item, loc, default), issues
    )


def _parse_batch(body: Json, schema: Json) -> list[_Spec]:
    requests = body.get("task_run_requests")
    if not isinstance(requests, list):
        loc: Loc = ("body", "task_run_requests")
        raise _Invalid([_missing(loc) if requests is None else _not_list(loc)])
    runner = body.get("runner")
    if runner is not None and not isinstance(runner, str):
        raise _Invalid([_issue(("body", "runner"), "Input should be a valid string", "string_type")])
    return _parse_each(
        requests,
        ("body", "task_run_requests"),
        lambda item, loc: _parse_batch_run(item, loc, runner, schema),
        [],
    )


def _parse_each(
    items: list[object], loc: Loc, parse: Callable[[object, Loc], _Spec], issues: list[Json]
) -> list[_Spec]:
    """Parse every item, keeping all issues: a 422 lists every bad run, as FastAPI does."""
    specs: list[_Spec] = []
    for i, item in enumerate(items):
        try:
            specs.append(parse(item, (*loc, i)))
        except _Invalid as exc:
            issues = issues + exc.issues
    if issues:
        raise _Invalid(issues)
    return specs


def _parse_run_input(item: object, loc: Loc, default: _TaskSpec | None) -> _Spec:
    """One TaskRunInput: ``input`` and ``processor`` required, metadata and webhook checked."""
    item = _as_object(item, loc)
    value, processor = item.get("input"), item.get("processor")
    issues: list[Json] = []
    if not isinstance(value, str | dict):
        issues.append(_missing((*loc, "input")) if "input" not in item else _not_input((*loc, "input")))
    if not isinstance(processor, str):
        issues.append(
            _missing((*loc, "processor")) if "processor" not in item else _not_str((*loc, "processor"))
        )
    issues += _metadata_issues(item.get("metadata"), (*loc, "metadata"))
    webhook, hook_issues = _parse_webhook(item.get("webhook"), (*loc, "webhook"))
    task_spec = default or _TEXT_SPEC
    if item.get("task_spec") is not None:
        try:
            task_spec = _parse_task_spec(item["task_spec"], (*loc, "task_spec"))
        except _Invalid as exc:
            issues += exc.issues
    if issues or hook_issues:
        raise _Invalid(issues + hook_issues)
    echo = dict(item)
    if echo.get("task_spec") is None and default is not None:
        echo["task_spec"] = default.raw  # the spec the run actually used
    metadata = cast(Json | None, item.get("metadata"))
    return _Spec(echo, cast(TaskInput, value), str(processor), task_spec, metadata, webhook)


def _parse_batch_run(item: object, loc: Loc, runner: str | None, schema: Json) -> _Spec:
    """One v0 task run request: ``arguments`` required; its runner overrides the batch's."""
    item = _as_object(item, loc)
    arguments = item.get("arguments")
    own_runner = item.get("runner")
    issues: list[Json] = []
    if not isinstance(arguments, dict):
        issues.append(_missing((*loc, "arguments")) if arguments is None else _not_dict((*loc, "arguments")))
    if own_runner is not None and not isinstance(own_runner, str):
        issues.append(_not_str((*loc, "runner")))
    chosen = own_runner if isinstance(own_runner, str) else runner
    if chosen is None:
        message = "Field required: set runner on the batch or on this run"
        issues.append(_issue((*loc, "runner"), message, "missing"))
    webhook, hook_issues = _parse_callback(item.get("callback_webhook"), (*loc, "callback_webhook"))
    if issues or hook_issues:
        raise _Invalid(issues + hook_issues)
    args = cast(Json, arguments)
    task_spec = _TaskSpec({"output_schema": schema}, _Schema("json", schema))
    return _Spec({"arguments": args}, args, str(chosen), task_spec, None, webhook)


def _parse_task_spec(value: object, loc: Loc) -> _TaskSpec:
    spec = _as_object(value, loc)
    if "output_schema" not in spec:
        raise _Invalid([_missing((*loc, "output_schema"))])
    return _TaskSpec(spec, _parse_output_schema(spec["output_schema"], (*loc, "output_schema")))


def _parse_output_schema(value: object, loc: Loc) -> _Schema:
    """JSON (``{type: json, json_schema}`` or a bare schema), text (object or string) or auto."""
    if isinstance(value, str):
        return _Schema("text", description=value)
    schema = _as_object(value, loc)
    kind = schema.get("type")
    if kind == "auto":
        return _Schema("auto", _AUTO_SCHEMA)
    if kind == "text":
        description = schema.get("description")
        if description is not None and not isinstance(description, str):
            raise _Invalid([_not_str((*loc, "description"))])
        return _Schema("text", description=description or "")
    json_schema = schema.get("json_schema") if kind == "json" or "json_schema" in schema else schema
    if not isinstance(json_schema, dict) or not isinstance(json_schema.get("properties"), dict):
        message = "Output schema must be a JSON schema whose root is an object with properties"
        raise _Invalid([_issue(loc, message, "value_error")])
    return _Schema("json", json_schema)


def _metadata_issues(metadata: object, loc: Loc) -> list[Json]:
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return [_not_dict(loc)]
    issues: list[Json] = []
    for key, value in metadata.items():
        if len(key) > _MAX_METADATA_KEY:
            message = f"String should have at most {_MAX_METADATA_KEY} characters"
            issues.append(_issue((*loc, key, "[key]"), message, "string_too_long"))
        if not isinstance(value, str | int | float | bool):
            issues.append(_issue((*loc, key), "Input should be a string, number or boolean", "value_error"))
        elif isinstance(value, str) and len(value) > _MAX_METADATA_VALUE:
            message = f"String should have at most {_MAX_METADATA_VALUE} characters"
            issues.append(_issue((*loc, key), message, "string_too_long"))
    return issues


def _parse_webhook(value: object, loc: Loc) -> tuple[str | None, list[Json]]:
    """A v1 ``webhook: {url, event_types?}``; only ``task_run.status`` events exist."""
    if value is None:
        return None, []
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        return None, [_missing((*loc, "url"))]
    types = value.get("event_types")
    if types is not None and (not isinstance(types, list) or "task_run.status" not in types):
        return None, []  # subscribed to nothing we send
    return str(value["url"]), []


def _parse_callback(value: object, loc: Loc) -> tuple[str | None, list[Json]]:
    """A v0 ``callback_webhook``: a URL string or an object with ``url`` (shape unpublished)."""
    if isinstance(value, str):
        return value, []
    return _parse_webhook(value, loc)


def _as_object(value: object, loc: Loc) -> Json:
    if not isinstance(value, dict):
        raise _Invalid([_not_dict(loc)])
    return value


def _flag(query: httpx.QueryParams, name: str) -> bool:
    value: str | None = query.get(name)
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise _Invalid([_issue(("query", name), "Input should be a valid boolean", "bool_parsing")])


def _cursor(query: httpx.QueryParams) -> int:
    """``last_event_id``: resume after that event; missing or empty means from the start."""
    value: str = query.get("last_event_id") or "0"
    if not value.isdigit():
        message = "last_event_id must be an event_id from this stream"
        raise _Invalid([_issue(("query", "last_event_id"), message, "value_error")])
    return int(value)


def _status_param(query: httpx.QueryParams) -> str | None:
    value: str | None = query.get("status")
    if value is not None and value not in _STATUSES:
        message = "Input should be " + ", ".join(repr(s) for s in _STATUSES)
        raise _Invalid([_issue(("query", "status"), message, "enum")])
    return value


def _number_param(query: httpx.QueryParams, name: str) -> None:
    value: str | None = query.get(name)
    try:
        number = None if value is None else float(value)
    except ValueError:
        number = math.nan
    if number is not None and not number >= 0:
        raise _Invalid([_issue(("query", name), "Input should be a valid number", "float_parsing")])


def _check_sizes(specs: Sequence[_Spec], locs: Sequence[Loc]) -> None:
    message = f"Task spec and input together exceed {_MAX_SPEC_AND_INPUT} characters"
    issues = [
        _issue(loc, message, "too_long")
        for spec, loc in zip(specs, locs, strict=True)
        if _spec_size(spec) > _MAX_SPEC_AND_INPUT
    ]
    if issues:
        raise _Invalid(issues)


def _spec_size(spec: _Spec) -> int:
    """Characters of the task spec and input as JSON (a string input counts as itself)."""
    spec_chars = 0 if spec.task_spec.raw is None else len(orjson.dumps(spec.task_spec.raw).decode())
    text = spec.input if isinstance(spec.input, str) else orjson.dumps(spec.input).decode()
    return spec_chars + len(text)


def _issue(loc: Loc, msg: str, kind: str) -> Json:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _missing(loc: Loc) -> Json:
    return _issue(loc, "Field required", "missing")


def _not_str(loc: Loc) -> Json:
    return _issue(loc, "Input should be a valid string", "string_type")


def _not_dict(loc: Loc) -> Json:
    return _issue(loc, "Input should be a valid dictionary", "dict_type")


def _not_list(loc: Loc) -> Json:
    return _issue(loc, "Input should be a valid list", "list_type")


def _not_input(loc: Loc) -> Json:
    return _issue(loc, "Input should be a valid string or a valid dictionary", "union_type")


# -- outputs --------------------------------------------------------------------------------


def _output(schema: _Schema, content: Json | str, key: str) -> Json:
    if isinstance(content, str):
        return {"type": "text", "content": content, "basis": [_basis("output", key)]}
    output: Json = {"type": "json", "content": content, "basis": [_basis(name, key) for name in content]}
    if schema.kind == "auto":
        output["output_schema"] = schema.json_schema  # documented: only for auto schemas
    return output


def _basis(name: str, key: str) -> Json:
    digest = _hash(key, f"basis:{name}")
    return {
        "field": name,
        "reasoning": f"Emulated reasoning for {name}.",
        "citations": [
            {
                "url": f"https://example.com/source/{digest:016x}",
                "title": f"Source for {name}",
                "excerpts": [f"An excerpt supporting {name}."],
            }
        ],
        "confidence": ("low", "medium", "high")[digest % 3],
    }


def _fake_object(schema: Json, key: str, path: str, depth: int) -> Json:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or depth > 5:  # the documented nesting limit
        return {}
    return {
        name: _fake_value(prop, key, f"{path}.{name}" if path else str(name), depth)
        for name, prop in properties.items()
    }


def _fake_value(schema: object, key: str, path: str, depth: int) -> object:
    """A value of the declared type, derived from a hash of the input and the field path."""
    if not isinstance(schema, dict):
        return f"{path} {_hash(key, path):08x}"
    digest = _hash(key, path)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[digest % len(enum)]
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list) and options:
        typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        return _fake_value((typed or options)[0], key, path, depth)
    kind = _type_of(schema)
    if kind == "object":
        return _fake_object(schema, key, path, depth + 1)
    if kind == "array":
        return [_fake_value(schema.get("items"), key, f"{path}.{i}", depth + 1) for i in range(2)]
    return _fake_scalar(kind, schema.get("format"), path, digest)


def _fake_scalar(kind: str, fmt: object, path: str, digest: int) -> object:
    if kind == "integer":
        return digest % 1000
    if kind == "number":
        return (digest % 100_000) / 100
    if kind == "boolean":
        return digest % 2 == 0
    if kind == "null":
        return None
    if fmt == "date":
        return (date(2020, 1, 1) + timedelta(days=digest % 2000)).isoformat()
    if fmt == "date-time":
        moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=digest % (2000 * 86_400))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{path.rsplit('.', 1)[-1]} {digest:08x}"


def _type_of(schema: Json) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def _unwrap_schema(schema: Mapping[str, object]) -> Json:
    """A v0 task's output schema, given bare or as ``{type: json, json_schema}``."""
    inner = schema.get("json_schema")
    return dict(inner) if isinstance(inner, dict) else dict(schema)


# -- responses ------------------------------------------------------------------------------


def _sse(events: list[Json], cut_after: int | None, call: _Call) -> httpx.Response:
    """Stream events as SSE frames, one per chunk; ``cut_after`` events, cut the connection."""

    def frames() -> Iterator[bytes]:
        for i, event in enumerate(events):
            if i == cut_after:
                raise call.cut()
            yield b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        if cut_after is not None:
            raise call.cut()

    return _streamed("text/event-stream", frames(), {"cache-control": "no-cache"})


def _json_export(rows: list[Json]) -> Iterator[bytes]:
    yield b"["
    for i, row in enumerate(rows):
        yield (b"," if i else b"") + orjson.dumps(row)
    yield b"]"


def _csv_export(rows: list[Json]) -> Iterator[bytes]:
    """Header ``task_id, …, runner, input.arguments.<k>…, output.<k>…`` (keys sorted)."""
    arguments = [cast(Json, cast(Json, row["input"])["arguments"]) for row in rows]
    outputs = [cast(Json, row["output"]) if isinstance(row["output"], dict) else {} for row in rows]
    arg_keys = sorted({k for args in arguments for k in args})
    out_keys = sorted({k for out in outputs for k in out})
    fixed = ["task_id", "batch_run_id", "run_id", "status", "runner"]
    yield _csv_line(fixed + [f"input.arguments.{k}" for k in arg_keys] + [f"output.{k}" for k in out_keys])
    for row, args, out in zip(rows, arguments, outputs, strict=True):
        cells = [str(row[name]) for name in fixed]
        cells += [_cell(args, k) for k in arg_keys] + [_cell(out, k) for k in out_keys]
        yield _csv_line(cells)


def _cell(values: Json, key: str) -> str:
    if key not in values:
        return ""
    value = values[key]
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _csv_line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue().encode()


def _streamed(
    content_type: str, chunks: Iterable[bytes], headers: Mapping[str, str] | None = None
) -> httpx.Response:
    headers = {"content-type": content_type, **(headers or {})}
    return httpx.Response(200, headers=headers, stream=_Body(chunks))


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def _error(
    status: int, message: str, *, detail: Json | None = None, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    error: Json = {"ref_id": str(uuid.uuid4()), "message": message}
    if detail is not None:
        error["detail"] = detail
    return _json(status, {"type": "error", "error": error}, headers)


# -- small helpers ----------------------------------------------------------------------------


def _sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` keyed with the secret's raw UTF-8 bytes, padding kept."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _post_webhook(url: str, headers: dict[str, str], body: bytes) -> None:
    """The default sender: one short POST, any failure ignored (like a receiver that is down)."""
    try:
        with httpx.Client(timeout=_WEBHOOK_TIMEOUT) as client:
            client.post(url, content=body, headers=headers)
    except httpx.HTTPError:
        return


def _canonical(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _hash(key: str, salt: str) -> int:
    digest = hashlib.blake2b(f"{salt}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_id(prefix: str) -> str:
    # Random, not seeded, so a restarted emulator never hands out an id a client still holds.
    return prefix + secrets.token_hex(16)
