"""A stateful fake of VectorShift's pipeline API (see ``api-contracts.md`` §3 and §5).

Emulated as the OpenAPI reference (``servers: https://api.vectorshift.ai/v1``) and the
official SDK (``vectorshift`` 0.1.15) describe it. Every route lives under ``/v1``, so a
client's base URL is ``server.url + "/v1"``; auth is ``Authorization: Bearer KEY``:

- ``POST /v1/pipeline/{id}/bulk_run`` and ``/bulk-run`` (the docs' and the SDK's
  spelling): synchronous; ``{runs: [{inputs, conversation_id?}]}`` is answered, once every
  run has finished, with ``{status, run_outputs: [{run_id, outputs}]}`` in input order.
  Every row is charged, whatever its fate.
- ``POST /v1/pipeline/{id}/run``: one run, answered ``{status, run_id, outputs}``; with
  ``background: true`` it answers ``{task_id}`` at once and runs on the clock.
- ``GET /v1/pipeline/{id}/run/status/{task_id}`` -> ``{task_id, status, error?, result?}``.
- ``POST /v1/pipeline/{id}/terminate`` ``{run_id}`` -> ``{status: "success"}``, or
  ``{status: "failed", error}`` when the run is no longer in progress.
- Bodies: JSON, ``application/x-www-form-urlencoded`` (``runs`` / ``inputs`` as JSON
  text, flags as ``"true"``/``"false"``) and ``multipart/form-data`` with both part
  namings: the docs' (``runs.<i>.inputs.<name>`` / ``inputs.<name>`` file parts, plus
  ``runs.<i>.inputs`` JSON and ``runs.<i>.conversation_id`` fields) and the SDK's (a file
  part named just ``<name>``).
- DataType checked both ways: str, int, float, bool, null, lists, ``{type: "map",
  items}`` and ``{type: "file", raw_bytes: <base64>, metadata?: {name, path, mime_type}}``
  and nothing else. A bad input is a 400; a pipeline returning a bad output fails that run.
- Errors: ``{status: "failed", error}`` for 400/403/404/413/422/429/5xx; 401 is
  ``{error}`` with one of the three documented messages.

Inferred, not published: which status codes mean what beyond 400/401/500 (404 for an
unknown pipeline *or* one the key does not own, 403 for a read-only key, 422 for a bulk
call with no runs, 413 over ``max_bulk_rows``, 504 over ``bulk_timeout``); how a failed run
shows up inside ``run_outputs`` (the ``run_failure`` knob picks one of three guesses);
id formats (24 hex digits, like the SDK's ObjectIds); that the status of a terminated
run is ``cancelled`` (the docs' guide says so, the SDK's type does not list it); how the
SDK's colliding bulk file parts map to runs (the n-th part named ``x`` goes to the n-th
run whose JSON inputs lack ``x``); and the form encoding of ``runs`` (JSON text).

Simplified on purpose: no streaming (``stream: true`` is a 400 here), no webhooks, no
``resume``/``pause``, sessions and versions are ignored. Background runs are computed
from the injectable clock; a synchronous call (bulk or single) really sleeps for its
emulated work only over a socket and only when ``latency > 0``, so in-process tests never
wait. A failure depends only on the input's content, so a rerun fails the same way. One
lock guards all state; pipelines (user code) run outside it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

import httpx
import orjson

from frame_batch.testing._books import Books
from frame_batch.testing._faults import Faults, fault_response, in_process
from frame_batch.testing._routing import Route, find_route
from frame_batch.testing._routing import route as _route

__all__ = [
    "PipelineFunction",
    "RunFailure",
    "StatusNames",
    "VectorShiftEmulator",
    "default_pipeline",
    "file_value",
]

Json = dict[str, object]
PipelineFunction = Callable[[dict[str, object]], dict[str, object]]
RunFailure = Literal["per_run", "batch", "error"]
StatusNames = Literal["sdk", "guide"]

_PREFIX = "/v1"
_MAX_DEPTH = 32  # deeper DataType nesting is refused rather than recursed into
_EMULATED_FAILURE = "Pipeline run failed (emulated failure_rate)"
_FILE_KEYS = frozenset({"type", "raw_bytes", "metadata"})
_METADATA_KEYS = ("name", "path", "mime_type")
_INT_RANGE = (-(2**63), 2**64)  # what a JSON decoder keeps as an integer
# Form fields of a single run that are not inputs (the SDK sends them beside the files).
_RUN_FIELDS = frozenset(
    {
        "inputs",
        "background",
        "stream",
        "stream_all_outputs",
        "session_id",
        "node_input_overrides",
        "send_intermediate_results",
        "webhook_url",
        "version",
        "trace_id",
        "conversation_id",
    }
)
# Background run states by vocabulary: the SDK's type vs the docs' guide (§3.3).
_STATUS_NAMES: Mapping[str, Mapping[str, str]] = {
    "sdk": {"running": "in_progress", "done": "completed"},
    "guide": {"running": "running", "done": "succeeded"},
}
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_BULK_FILE = re.compile(r"runs\.(\d+)\.inputs\.(.+)", re.DOTALL)
_BULK_INPUTS = re.compile(r"runs\.(\d+)\.inputs")
_BULK_CONVERSATION = re.compile(r"runs\.(\d+)\.conversation_id")
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r'(?:^|;)\s*(name|filename)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


# -- DataType helpers (public) ---------------------------------------------------------------


def file_value(
    data: bytes, *, name: str | None = None, mime_type: str | None = None, path: str | None = None
) -> dict[str, object]:
    """A file DataType: ``{"type": "file", "raw_bytes": <base64>, "metadata": {...}}``."""
    metadata = {k: v for k, v in (("name", name), ("path", path), ("mime_type", mime_type)) if v}
    value: dict[str, object] = {"type": "file", "raw_bytes": base64.b64encode(data).decode()}
    if metadata:
        value["metadata"] = metadata
    return value


def default_pipeline(inputs: dict[str, object]) -> dict[str, object]:
    """Deterministic outputs derived from the inputs (sorted by name).

    ``output``: a string describing every input; ``inputs``: the inputs echoed as a map;
    ``file`` (only when an input is a file): the first file with ``processed:`` prefixed to
    its bytes. No integer outputs: the OpenAPI ``oneOf`` makes an integer match both
    ``integer`` and ``number``, so schema validators would reject it.
    """
    text = " ".join(_describe(inputs[name]) for name in sorted(inputs))
    outputs: dict[str, object] = {
        "output": f"Processed: {text}",
        "inputs": {"type": "map", "items": dict(inputs)},
    }
    files = [value for _, value in sorted(inputs.items()) if _is_file(value)]
    if files:
        outputs["file"] = _processed_file(files[0])
    return outputs


def _describe(value: object) -> str:
    if isinstance(value, str):
        return value
    if _is_file(value):
        return f"<file {_file_name(value) or 'unnamed'}>"
    return orjson.dumps(value).decode()


def _processed_file(value: object) -> dict[str, object]:
    data = b"processed:" + _file_bytes(value)
    name = _file_name(value)
    mime_type = _metadata(value).get("mime_type")
    return file_value(
        data,
        name=f"processed-{name}" if name else "processed",
        mime_type=mime_type if isinstance(mime_type, str) else "application/octet-stream",
    )


def _is_file(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "file"


def _metadata(value: object) -> dict[str, object]:
    metadata = value.get("metadata") if isinstance(value, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _file_name(value: object) -> str:
    name = _metadata(value).get("name")
    return name if isinstance(name, str) else ""


def _file_bytes(value: object) -> bytes:
    raw = value.get("raw_bytes") if isinstance(value, dict) else None
    return base64.b64decode(raw) if isinstance(raw, str) else b""


# -- errors, routes, records -----------------------------------------------------------------


class _ApiError(Exception):
    """An error answer, raised from deep inside a route."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _Invalid(Exception):
    """A value that is not a DataType: a 400 for an input, a failed run for an output."""


_ROUTES = (
    _route("run", "POST", f"{_PREFIX}/pipeline/{{pipeline}}/run", "create"),
    _route("bulk_run", "POST", f"{_PREFIX}/pipeline/{{pipeline}}/bulk_run", "create"),
    _route("bulk-run", "POST", f"{_PREFIX}/pipeline/{{pipeline}}/bulk-run", "create", "bulk_run"),
    _route("run_status", "GET", f"{_PREFIX}/pipeline/{{pipeline}}/run/status/{{task}}", "read"),
    _route("terminate", "POST", f"{_PREFIX}/pipeline/{{pipeline}}/terminate", "cancel"),
)


@dataclass(frozen=True)
class _Call:
    request: httpx.Request
    params: dict[str, str]
    in_process: bool
    pipeline: PipelineFunction


@dataclass(frozen=True)
class _Part:
    """One form field or multipart part; ``multipart`` parts may carry files."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None
    multipart: bool = False

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise _ApiError(400, f"Form field {self.name!r} is not valid UTF-8") from None

    def as_file(self) -> dict[str, object]:
        if not self.multipart:
            raise _ApiError(400, f"File input {self.name!r} needs a multipart/form-data body")
        return file_value(self.data, name=self.filename, mime_type=self.content_type)


@dataclass(frozen=True)
class _RunInput:
    inputs: Json  # validated DataType values, files included
    key: str  # the charge key: canonical JSON, files replaced by a digest of their bytes


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    outputs: Json
    error: str = ""


@dataclass
class _Task:
    id: str
    pipeline_id: str
    finishes_at: float
    outcome: _Outcome
    cancelled: bool = False

    def state(self, now: float) -> Literal["running", "done", "failed", "cancelled"]:
        if self.cancelled:
            return "cancelled"
        if now < self.finishes_at:
            return "running"
        return "done" if self.outcome.ok else "failed"


@dataclass
class _RawRun:
    inputs: Json = field(default_factory=dict)
    files: list[tuple[str, dict[str, object]]] = field(default_factory=list)


# -- the emulator ----------------------------------------------------------------------------


class VectorShiftEmulator(Books):
    """A fake VectorShift pipeline API: in-process via :meth:`transport`, over a socket via
    :meth:`serve` (routes under ``/v1``: point a client at ``server.url + "/v1"``).

    Knobs: ``latency`` seconds per run plus up to ``jitter`` (a bulk call's work is the sum
    over its rows); ``failure_rate`` fails inputs by content; ``pipelines`` maps pipeline
    ids to functions from input map to output map (raising fails the run; None accepts any
    id and runs :func:`default_pipeline`); ``run_failure`` picks how a failed run shows:
    ``"per_run"`` (200, batch ``status: "failed"``, the entry has ``status``/``error``),
    ``"batch"`` (200, batch ``status: "failed"``, the failed entry just has empty outputs)
    or ``"error"`` (the whole call is a 500; every row stays charged); ``status_names``
    ``"sdk"`` (``in_progress``/``completed``) or ``"guide"`` (``running``/``succeeded``);
    ``result_lag`` seconds after completion during which the status has no ``result``
    (``lagging_result="missing"``) or ``result: {}`` (``"empty"``); ``max_bulk_rows``
    (413); ``bulk_timeout`` seconds of emulated work above which a bulk call is a 504 and
    runs nothing; ``out_of_order`` shuffles ``run_outputs``; ``rate_limit_per_minute``
    run-starting POSTs per key (429); ``api_keys`` (None = any), ``pipeline_access`` (key
    -> the pipeline ids it owns; others are a 404) and ``read_only_keys`` (403 on runs).

    Accounting (:meth:`charges`, :meth:`duplicates`, :meth:`requests`,
    :attr:`create_requests`): each run's input map is charged once when it runs, keyed by
    its canonical JSON with every file replaced by ``{"type": "file", "sha256": ...}``.
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
        pipelines: Mapping[str, PipelineFunction] | None = None,
        pipeline_access: Mapping[str, Collection[str]] | None = None,
        read_only_keys: Collection[str] = (),
        run_failure: RunFailure = "per_run",
        status_names: StatusNames = "sdk",
        result_lag: float = 0.0,
        lagging_result: Literal["missing", "empty"] = "missing",
        max_bulk_rows: int | None = None,
        bulk_timeout: float | None = None,
        rate_limit_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        _check_seconds(latency=latency, jitter=jitter, result_lag=result_lag, bulk_timeout=bulk_timeout)
        _check_choices(run_failure=run_failure, status_names=status_names, lagging_result=lagging_result)
        _check_limits(max_bulk_rows=max_bulk_rows, rate_limit_per_minute=rate_limit_per_minute)
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        self.latency = latency
        self.jitter = jitter
        self.failure_rate = failure_rate
        self.out_of_order = out_of_order
        self.run_failure: RunFailure = run_failure
        self.status_names: StatusNames = status_names
        self.result_lag = result_lag
        self.lagging_result = lagging_result
        self.max_bulk_rows = max_bulk_rows
        self.bulk_timeout = bulk_timeout
        self.rate_limit_per_minute = rate_limit_per_minute
        self.seed = seed
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._pipelines = None if pipelines is None else dict(pipelines)
        self._access = (
            None if pipeline_access is None else {k: frozenset(v) for k, v in pipeline_access.items()}
        )
        self._read_only = frozenset(read_only_keys)
        self._clock = clock
        self._rng = random.Random(seed)
        self._init_books(faults)
        self._tasks: dict[str, _Task] = {}
        self._actions: dict[str, Callable[[_Call], httpx.Response]] = {
            "run": self._run,
            "bulk_run": self._bulk_run,
            "run_status": self._run_status,
            "terminate": self._terminate,
        }

    def __repr__(self) -> str:
        keys = "any" if self._api_keys is None else f"<{len(self._api_keys)} keys>"
        return (
            f"VectorShiftEmulator(latency={self.latency}, jitter={self.jitter}, "
            f"failure_rate={self.failure_rate}, run_failure={self.run_failure!r}, "
            f"faults={self._faults.faults}, api_keys={keys})"
        )

    # -- public surface ------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client`` and ``httpx.AsyncClient`` alike."""
        return httpx.MockTransport(in_process(self._handle_in_process))

    # -- request handling ----------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer one request; raises :class:`DropConnection` for an injected drop."""
        return self._handle(request, in_process=False)

    def _handle_in_process(self, request: httpx.Request) -> httpx.Response:
        return self._handle(request, in_process=True)

    def _handle(self, request: httpx.Request, *, in_process: bool) -> httpx.Response:
        found = _match(request)
        if isinstance(found, httpx.Response):
            return found
        route, params = found
        return self._with_faults(
            route.name, route.op, lambda: self._process(route, request, params, in_process)
        )

    def _process(
        self, route: Route, request: httpx.Request, params: dict[str, str], in_process: bool
    ) -> httpx.Response:
        try:
            key = self._authenticate(request)
            if route.op != "read" and key in self._read_only:
                raise _ApiError(403, "This API key is not allowed to run pipelines")
            pipeline = self._pipeline(key, params["pipeline"])
            if route.op == "create":
                self._admit(key)
            return self._actions[route.action](_Call(request, params, in_process, pipeline))
        except _ApiError as exc:
            return _error(exc.status, exc.message, exc.headers)

    def _fault_response(self, kind: Literal["429", "500", "503"]) -> httpx.Response:
        # The shared helper formats Retry-After; the body is VectorShift's error shape.
        shared = fault_response(kind, self._faults.faults.retry_after)
        messages = {
            "429": "Rate limit exceeded",
            "500": "Internal server error",
            "503": "Service unavailable",
        }
        retry_after = shared.headers.get("retry-after")
        return _error(
            shared.status_code, messages[kind], {} if retry_after is None else {"retry-after": retry_after}
        )

    def _authenticate(self, request: httpx.Request) -> str:
        header: str | None = request.headers.get("authorization")
        if header is None or not header.strip():
            raise _ApiError(401, "Missing authorization header")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _ApiError(401, "Invalid authorization header format")
        key = key.strip()
        if self._api_keys is not None and key not in self._api_keys:
            raise _ApiError(401, "Invalid API key")  # never echo the key
        return key

    def _pipeline(self, key: str, pipeline_id: str) -> PipelineFunction:
        owned = self._access is None or pipeline_id in self._access.get(key, frozenset())
        pipeline = default_pipeline if self._pipelines is None else self._pipelines.get(pipeline_id)
        if pipeline is None or not owned:  # "exists but not yours" is a 404 too
            raise _ApiError(404, f"Pipeline not found: {pipeline_id}")
        return pipeline

    def _admit(self, key: str) -> None:
        """The per-key sliding-window rate limit of run-starting POSTs."""
        wait = self._over_rate(key, self.rate_limit_per_minute)
        if wait is not None:
            raise _ApiError(429, "Rate limit exceeded", {"retry-after": str(wait)})

    # -- routes ----------------------------------------------------------------------------

    def _bulk_run(self, call: _Call) -> httpx.Response:
        runs = _parse_bulk(call.request)
        if self.max_bulk_rows is not None and len(runs) > self.max_bulk_rows:
            raise _ApiError(413, f"Too many runs: {len(runs)} > {self.max_bulk_rows} per bulk request")
        work = sum(self._durations(len(runs)))
        if self.bulk_timeout is not None and work > self.bulk_timeout:
            self._wait(call, self.bulk_timeout)  # the gateway gives up; nothing ran
            raise _ApiError(504, f"Gateway timeout: the bulk run did not finish in {self.bulk_timeout:g} s")
        outcomes = [self._execute(call.pipeline, run) for run in runs]  # user code: no lock held
        with self._lock:
            self._charge(runs)
        self._wait(call, work)  # charged already: a client that gives up now still pays
        return self._bulk_answer(outcomes)

    def _bulk_answer(self, outcomes: list[_Outcome]) -> httpx.Response:
        failed = [o for o in outcomes if not o.ok]
        if failed and self.run_failure == "error":
            raise _ApiError(500, f"{len(failed)} of {len(outcomes)} runs failed: {failed[0].error}")
        entries = [self._entry(outcome) for outcome in outcomes]
        if self.out_of_order:
            with self._lock:
                _shuffle(entries, self._rng)
        return _json(200, {"status": "failed" if failed else "success", "run_outputs": entries})

    def _entry(self, outcome: _Outcome) -> Json:
        entry: Json = {"run_id": _new_id(), "outputs": outcome.outputs if outcome.ok else {}}
        if self.run_failure == "per_run":
            entry["status"] = "success" if outcome.ok else "failed"
            if not outcome.ok:
                entry["error"] = outcome.error
        return entry

    def _run(self, call: _Call) -> httpx.Response:
        run, flags = _parse_run(call.request)
        if flags.get("stream"):
            raise _ApiError(400, "stream: true is not supported by this emulator")
        if flags.get("background"):
            return self._start(call, run, flags)
        duration = self._durations(1)[0]
        outcome = self._execute(call.pipeline, run)
        with self._lock:
            self._charge([run])
        self._wait(call, duration)
        if not outcome.ok and self.run_failure == "error":
            raise _ApiError(500, outcome.error)
        body: Json = {"status": "success" if outcome.ok else "failed", "run_id": _new_id()}
        body["outputs"] = outcome.outputs if outcome.ok else {}
        if not outcome.ok:
            body["error"] = outcome.error
        return _json(200, _with_trace(body, flags))

    def _start(self, call: _Call, run: _RunInput, flags: Mapping[str, object]) -> httpx.Response:
        outcome = self._execute(call.pipeline, run)  # decided now, revealed by the clock
        duration = self._durations(1)[0]
        task = _Task(_new_id(), call.params["pipeline"], 0.0, outcome)
        with self._lock:
            task.finishes_at = self._clock() + duration
            self._tasks[task.id] = task
            self._charge([run])
        return _json(200, _with_trace({"task_id": task.id}, flags))

    def _run_status(self, call: _Call) -> httpx.Response:
        with self._lock:
            task = self._task(call.params["pipeline"], call.params["task"])
            now = self._clock()
            state = task.state(now)
            body: Json = {"task_id": task.id, "status": _STATUS_NAMES[self.status_names].get(state, state)}
            if state == "failed":
                body["error"] = task.outcome.error
            elif state == "done" and now >= task.finishes_at + self.result_lag:
                body["result"] = task.outcome.outputs
            elif state == "done" and self.lagging_result == "empty":
                body["result"] = {}  # completed, outputs not indexed yet (§3.3)
        return _json(200, body)

    def _terminate(self, call: _Call) -> httpx.Response:
        run_id = _parse_terminate(call.request)
        with self._lock:
            task = self._task(call.params["pipeline"], run_id)
            if task.state(self._clock()) != "running":
                return _json(200, {"status": "failed", "error": f"Run {run_id} is not in progress"})
            task.cancelled = True  # the charge stays: the work was started
        return _json(200, {"status": "success"})

    # -- helpers (callers hold the lock where state is touched) ---------------------------

    def _execute(self, pipeline: PipelineFunction, run: _RunInput) -> _Outcome:
        if self._fails(run.key):
            return _Outcome(False, {}, _EMULATED_FAILURE)
        try:
            outputs: object = pipeline(dict(run.inputs))  # user code: trust nothing about the type
        except Exception as exc:  # a pipeline's exception is that run's failure, not ours
            return _Outcome(False, {}, str(exc) or type(exc).__name__)
        try:
            return _Outcome(True, _check_map(outputs, "outputs"))
        except _Invalid as exc:
            return _Outcome(False, {}, f"Pipeline returned an invalid output: {exc}")

    def _fails(self, key: str) -> bool:
        """Decided by content alone, so the same input fails on every rerun."""
        if self.failure_rate <= 0:
            return False
        digest = hashlib.blake2b(f"{self.seed}\n{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.failure_rate

    def _durations(self, count: int) -> list[float]:
        with self._lock:
            return [
                self.latency + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)
                for _ in range(count)
            ]

    def _wait(self, call: _Call, seconds: float) -> None:
        # Only a socket client can feel time; in-process tests must never wait.
        if not call.in_process and self.latency > 0 and seconds > 0:
            time.sleep(seconds)

    def _charge(self, runs: Sequence[_RunInput]) -> None:
        self._charges.update(run.key for run in runs)
        self._create_requests += 1

    def _task(self, pipeline_id: str, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None or task.pipeline_id != pipeline_id:
            raise _ApiError(404, f"Run not found: {task_id}")
        return task


# -- request parsing -------------------------------------------------------------------------


def _match(request: httpx.Request) -> tuple[Route, dict[str, str]] | httpx.Response:
    found = find_route(request, _ROUTES)
    if isinstance(found, tuple):
        return found
    if found:
        return _error(405, f"Method {request.method} not allowed", {"allow": ", ".join(found)})
    return _error(404, f"Not found: {request.url.path}")


def _read_body(request: httpx.Request) -> Json | list[_Part]:
    """A JSON object, or the parts of a form (urlencoded or multipart)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return _parse_multipart(request.content, content_type)
    if media_type == "application/x-www-form-urlencoded":
        text = _Part("body", request.content).text()
        return [_Part(k, v.encode()) for k, v in parse_qsl(text, keep_blank_values=True)]
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        return _json_object(request.content, "Request body")
    raise _ApiError(400, f"Unsupported Content-Type {media_type!r}: use JSON, multipart or urlencoded")


def _json_object(content: bytes | str, what: str) -> Json:
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _ApiError(400, f"{what} must be a JSON object")
    return value


def _parse_bulk(request: httpx.Request) -> list[_RunInput]:
    body = _read_body(request)
    raw = _bulk_from_json(body) if isinstance(body, dict) else _bulk_from_form(body)
    if not raw:
        raise _ApiError(422, "runs must contain at least one run")
    return [_run_input(run, f"runs[{i}]") for i, run in enumerate(raw)]


def _bulk_from_json(body: Json) -> list[_RawRun]:
    runs = body.get("runs")
    if not isinstance(runs, list):
        raise _ApiError(400, "runs is required and must be a list of {inputs} objects")
    return [_raw_run(item, f"runs[{i}]") for i, item in enumerate(runs)]


def _raw_run(item: object, loc: str) -> _RawRun:
    if not isinstance(item, dict):
        raise _ApiError(400, f"{loc} must be an object")
    inputs = item.get("inputs", {})
    if not isinstance(inputs, dict):
        raise _ApiError(400, f"{loc}.inputs must be an object of input name -> value")
    conversation = item.get("conversation_id")
    if conversation is not None and not isinstance(conversation, str):
        raise _ApiError(400, f"{loc}.conversation_id must be a string")
    return _RawRun(dict(inputs))


def _bulk_from_form(parts: list[_Part]) -> list[_RawRun]:
    listed = next((p for p in parts if p.name == "runs"), None)
    runs = [] if listed is None else _bulk_from_json({"runs": _json_value(listed)})
    indexed: dict[int, _RawRun] = {}
    loose: list[_Part] = []  # the SDK's file parts, named after the input alone
    for part in parts:
        if not _bulk_part(part, indexed):
            loose.append(part)
    if listed is None and not indexed:
        raise _ApiError(400, "runs is required: a JSON list of {inputs} objects, or runs.<i>.* fields")
    runs = _merge_indexed(runs, indexed, explicit=listed is not None)
    _assign_loose_files(runs, [p for p in loose if p.multipart and p.filename is not None])
    return runs


def _bulk_part(part: _Part, indexed: dict[int, _RawRun]) -> bool:
    """File ``part`` under its ``runs.<i>`` entry; False when it is not a dotted part."""
    if part.name == "runs":
        return True
    if matched := _BULK_FILE.fullmatch(part.name):
        run = indexed.setdefault(int(matched[1]), _RawRun())
        run.files.append((matched[2], part.as_file()))
    elif matched := _BULK_INPUTS.fullmatch(part.name):
        inputs = _json_value(part)
        if not isinstance(inputs, dict):
            raise _ApiError(400, f"{part.name} must be a JSON object")
        indexed.setdefault(int(matched[1]), _RawRun()).inputs.update(inputs)
    elif matched := _BULK_CONVERSATION.fullmatch(part.name):
        part.text()  # accepted and ignored, like the real server's conversation memory here
        indexed.setdefault(int(matched[1]), _RawRun())
    else:
        return False
    return True


def _merge_indexed(runs: list[_RawRun], indexed: dict[int, _RawRun], *, explicit: bool) -> list[_RawRun]:
    count = len(runs) if explicit else len(indexed)
    stray = sorted(i for i in indexed if i >= count)
    if stray:
        raise _ApiError(400, f"runs.{stray[0]}.* does not match any run ({count} runs given)")
    runs = runs if explicit else [_RawRun() for _ in range(count)]
    for i, extra in indexed.items():
        runs[i].inputs.update(extra.inputs)
        runs[i].files.extend(extra.files)
    return runs


def _assign_loose_files(runs: list[_RawRun], parts: list[_Part]) -> None:
    """The SDK names every file part after its input only, so parts of different runs
    collide; the n-th part named ``x`` goes to the n-th run whose JSON inputs lack ``x``."""
    for name in dict.fromkeys(p.name for p in parts):
        same = [p for p in parts if p.name == name]
        takers = [run for run in runs if name not in run.inputs]
        if len(same) > len(takers):
            raise _ApiError(400, f"{len(same)} file parts named {name!r} but only {len(takers)} runs lack it")
        for run, part in zip(takers, same, strict=False):
            run.files.append((name, part.as_file()))


def _parse_run(request: httpx.Request) -> tuple[_RunInput, dict[str, object]]:
    body = _read_body(request)
    if isinstance(body, dict):
        raw = _raw_run(body, "body")
        flags = {name: body.get(name) for name in ("background", "stream", "trace_id")}
    else:
        raw, flags = _run_from_form(body)
    parsed: dict[str, object] = {name: _flag(flags.get(name), name) for name in ("background", "stream")}
    trace_id = flags.get("trace_id")
    if trace_id is not None and not isinstance(trace_id, str):
        raise _ApiError(400, "trace_id must be a string")
    parsed["trace_id"] = trace_id
    return _run_input(raw, "body"), parsed


def _run_from_form(parts: list[_Part]) -> tuple[_RawRun, dict[str, object]]:
    inputs: object = {}
    files: list[tuple[str, dict[str, object]]] = []
    flags: dict[str, object] = {}
    for part in parts:
        if part.name == "inputs":
            inputs = _json_value(part)
        elif part.name.startswith("inputs."):
            files.append((part.name.removeprefix("inputs."), part.as_file()))
        elif part.name in ("background", "stream", "trace_id"):
            flags[part.name] = part.text()
        elif part.name not in _RUN_FIELDS and part.multipart and part.filename is not None:
            files.append((part.name, part.as_file()))  # the SDK's naming: just the input
    raw = _raw_run({"inputs": inputs}, "body")
    raw.files.extend(files)
    return raw, flags


def _parse_terminate(request: httpx.Request) -> str:
    body = _read_body(request)
    if isinstance(body, dict):
        run_id = body.get("run_id")
    else:
        run_id = next((p.text() for p in body if p.name == "run_id"), None)
    if not isinstance(run_id, str) or not run_id:
        raise _ApiError(400, "run_id is required and must be a non-empty string")
    return run_id


def _json_value(part: _Part) -> object:
    try:
        return orjson.loads(part.text())
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, f"Form field {part.name!r} is not valid JSON: {exc}") from None


def _flag(value: object, name: str) -> bool:
    # The Go API compares form values as strings, so the SDK sends "true"/"false".
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise _ApiError(400, f"{name} must be true or false")


def _run_input(raw: _RawRun, loc: str) -> _RunInput:
    inputs = dict(raw.inputs)
    for name, value in raw.files:
        if name in inputs:
            raise _ApiError(400, f"{loc}.inputs.{name} is given twice")
        inputs[name] = value
    try:
        checked = _check_map(inputs, f"{loc}.inputs")
    except _Invalid as exc:
        raise _ApiError(400, str(exc)) from None
    return _RunInput(checked, _canonical(_charge_form(checked)))


# -- multipart -------------------------------------------------------------------------------


def _parse_multipart(content: bytes, content_type: str) -> list[_Part]:
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise _ApiError(400, "multipart/form-data without a boundary")
    delimiter = b"\r\n--" + (found[1] or found[2]).encode("latin-1", "replace")
    sections = (b"\r\n" + content).split(delimiter)  # the first delimiter needs no CRLF before it
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise _ApiError(400, "Malformed multipart body: no closing boundary")
    return [_parse_part(section) for section in sections[1:-1]]


def _parse_part(section: bytes) -> _Part:
    _, newline, rest = section.partition(b"\r\n")  # skips transport padding after the boundary
    head, blank, data = rest.partition(b"\r\n\r\n")
    if not newline or not blank:
        raise _ApiError(400, "Malformed multipart part: no header block")
    headers = _part_headers(head.decode("utf-8", "replace"))
    params = dict(_disposition_params(headers.get("content-disposition", "")))
    name = params.get("name")
    if name is None:
        raise _ApiError(400, "Malformed multipart part: Content-Disposition without a name")
    return _Part(name, data, params.get("filename"), headers.get("content-type"), multipart=True)


def _part_headers(head: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip().lower()] = value.strip()
    return headers


def _disposition_params(value: str) -> Iterable[tuple[str, str]]:
    for matched in _DISPOSITION_PARAM.finditer(value):
        quoted, token = matched[2], matched[3]
        yield matched[1], re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token


# -- DataType validation ---------------------------------------------------------------------


def _check_map(value: object, loc: str) -> Json:
    """An input or output map: names to DataType values."""
    if not isinstance(value, dict):
        raise _Invalid(f"{loc} must be an object of name -> value, got {type(value).__name__}")
    for name, item in value.items():
        if not isinstance(name, str):
            raise _Invalid(f"{loc} has a non-string name {name!r}")
        _check_value(item, f"{loc}.{name}", 0)
    return dict(value)


def _check_value(value: object, loc: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _Invalid(f"{loc} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, loc)
    elif isinstance(value, int):
        if not _INT_RANGE[0] <= value < _INT_RANGE[1]:
            raise _Invalid(f"{loc} is an integer out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"{loc} must be a finite number")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{loc}[{i}]", depth + 1)
    elif isinstance(value, dict):
        _check_object(value, loc, depth)
    else:
        raise _Invalid(f"{loc}: {type(value).__name__} is not a DataType")


def _check_text(value: str, loc: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"{loc} is not valid UTF-8 text") from None


def _check_object(value: dict[object, object], loc: str, depth: int) -> None:
    kind = value.get("type")
    if kind == "map":
        if set(value) != {"type", "items"}:
            raise _Invalid(f'{loc}: a map has exactly the keys "type" and "items"')
        items = _check_map_items(value["items"], f"{loc}.items")
        for name, item in items.items():
            _check_value(item, f"{loc}.items.{name}", depth + 1)
    elif kind == "file":
        _check_file(value, loc)
    else:
        raise _Invalid(
            f'{loc}: an object must be {{"type": "map", "items"}} or {{"type": "file", "raw_bytes"}}'
        )


def _check_map_items(items: object, loc: str) -> dict[str, object]:
    if not isinstance(items, dict) or not all(isinstance(k, str) for k in items):
        raise _Invalid(f"{loc} must be an object of name -> value")
    return items


def _check_file(value: dict[object, object], loc: str) -> None:
    extra = set(value) - _FILE_KEYS
    if extra:
        raise _Invalid(f"{loc}: a file has no key {sorted(map(str, extra))[0]!r}")
    raw = value.get("raw_bytes")
    if not isinstance(raw, str):
        raise _Invalid(f"{loc}.raw_bytes is required and must be a base64 string")
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{loc}.raw_bytes is not valid base64") from None
    if "metadata" not in value:
        return
    metadata = value["metadata"]
    if not isinstance(metadata, dict):
        raise _Invalid(f"{loc}.metadata must be an object")
    for key in _METADATA_KEYS:
        if key in metadata and not isinstance(metadata[key], str):
            raise _Invalid(f"{loc}.metadata.{key} must be a string")
        if key in metadata:
            _check_text(str(metadata[key]), f"{loc}.metadata.{key}")


def _charge_form(value: object) -> object:
    """What a run is charged by: files count by their bytes, not their name or encoding."""
    if _is_file(value):
        return {"type": "file", "sha256": hashlib.sha256(_file_bytes(value)).hexdigest()}
    if isinstance(value, list):
        return [_charge_form(item) for item in value]
    if isinstance(value, dict):
        return {key: _charge_form(item) for key, item in value.items()}
    return value


# -- answers ---------------------------------------------------------------------------------


def _with_trace(body: Json, flags: Mapping[str, object]) -> Json:
    if isinstance(flags.get("trace_id"), str):
        body["trace_id"] = flags["trace_id"]
    return body


def _shuffle(entries: list[Json], rng: random.Random) -> None:
    before = list(entries)
    rng.shuffle(entries)
    if len(entries) > 1 and entries == before:
        entries.append(entries.pop(0))  # a shuffle may be the identity; never let it be


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
    # 401 is {error} alone in the OpenAPI; every other error is {status: "failed", error}.
    body: Json = {"error": message} if status == 401 else {"status": "failed", "error": message}
    return _json(status, body, headers)


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(body), headers={"content-type": "application/json", **(headers or {})}
    )


def _canonical(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _new_id() -> str:
    # 24 hex digits like the SDK's ObjectIds; random, not seeded, so a restarted emulator
    # never hands out an id a client still holds from before.
    return secrets.token_hex(12)


def _check_seconds(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and (value < 0 or not math.isfinite(value)):
            raise ValueError(f"{name} is seconds and must be a finite number >= 0, got {value!r}")


def _check_limits(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value!r}")


def _check_choices(**values: str) -> None:
    allowed = {
        "run_failure": ("per_run", "batch", "error"),
        "status_names": ("sdk", "guide"),
        "lagging_result": ("missing", "empty"),
    }
    for name, value in values.items():
        if value not in allowed[name]:
            raise ValueError(f"{name} must be one of {allowed[name]}, got {value!r}")
